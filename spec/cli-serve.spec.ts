/**
 * `fragcache serve` in a real headless Chromium (Debian's /usr/bin/chromium through playwright-core, no
 * browser download): the debug outlines (checked in the DOM, in computed styles and in the pixels of a
 * screenshot), live reload on template and data changes, and error pages.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'dist', 'cli', 'index.js');
const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);

if (!haveChromium) {
  if (process.env.CI === 'true') throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); CI must run the browser tests`);
  console.warn(`SKIPPED: the fragcache serve browser tests need ${CHROMIUM} (apt-get install -y chromium)`);
}
const describeBrowser = haveChromium ? describe : describe.skip;

/** Starts `fragcache serve --port 0` on a copy of templates/ and resolves with its URL once it listens. */
function startServer(views: string, extra: string[] = []): Promise<{ url: string; child: ChildProcess; log: () => string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.FRAGCACHE_STORE;
    const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--views', views, ...extra], { cwd: views, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /fragcache serve: (http:\/\/\S+\/)/.exec(out);
      if (m) resolve({ url: m[1], child, log: () => err });
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${err}`)));
  });
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** Counts the pixels of a PNG that have exactly this colour, by decoding it in the browser (a canvas). */
async function countPixels(browser: Browser, png: Buffer, rgb: [number, number, number]): Promise<{ count: number; width: number; height: number }> {
  const page = await browser.newPage(); // a blank page: no live reload can navigate it away
  try {
    return await page.evaluate(
      async ({ b64, rgb }) => {
        // eslint-disable-next-line @typescript-eslint/no-explicit-any -- runs in the browser; the specs compile without the DOM lib
        const { Image, document } = globalThis as any;
        const img = new Image();
        img.src = `data:image/png;base64,${b64}`;
        await img.decode();
        const canvas = document.createElement('canvas');
        canvas.width = img.width;
        canvas.height = img.height;
        const ctx = canvas.getContext('2d')!;
        ctx.drawImage(img, 0, 0);
        const data = ctx.getImageData(0, 0, img.width, img.height).data;
        let count = 0;
        for (let i = 0; i < data.length; i += 4) if (data[i] === rgb[0] && data[i + 1] === rgb[1] && data[i + 2] === rgb[2]) count++;
        return { count, width: img.width, height: img.height };
      },
      { b64: png.toString('base64'), rgb },
    );
  } finally {
    await page.close();
  }
}

const GREEN: [number, number, number] = [0, 200, 83]; // #00c853: hit
const RED: [number, number, number] = [255, 23, 68]; // #ff1744: miss

describeBrowser('fragcache serve in Chromium', () => {
  let browser: Browser;
  let views: string;
  let server: Awaited<ReturnType<typeof startServer>>;

  beforeAll(async () => {
    views = mkdtempSync(path.join(tmpdir(), 'fragcache-serve-'));
    cpSync(path.join(ROOT, 'templates'), views, { recursive: true });
    writeFileSync(path.join(views, 'broken.njk'), 'ok\n<p>{{ nope() }}</p>\n');
    server = await startServer(views);
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    if (server) await stop(server.child);
  });

  const fragments = (page: Page) =>
    page.$$eval('fragcache-fragment', (els) => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- runs in the browser
      const { getComputedStyle } = globalThis as any;
      return els.map((e) => ({
        name: e.getAttribute('data-name'),
        status: e.getAttribute('data-status'),
        age: e.getAttribute('data-age'),
        outline: getComputedStyle(e).outlineColor,
        label: getComputedStyle(e, '::before').content,
      }));
    });

  test('?fragcache=debug outlines each fragment with its name, hit/miss and age; the screenshot shows them', async () => {
    const page = await browser.newPage({ viewport: { width: 1000, height: 1400 } });
    const first = await page.goto(`${server.url}page?fragcache=debug`);
    expect(first!.status()).toBe(200);
    const misses = await fragments(page);
    expect(misses.map((f) => f.name)).toEqual(['nav', 'front-page', 'article-card', 'article-card', 'article-card', 'popular', 'badge', 'badge', 'sidebar']);
    expect(misses.every((f) => f.status === 'miss' && f.age === '0' && f.outline === `rgb(${RED.join(', ')})`)).toBe(true);
    expect(misses[0].label).toBe('"nav · miss · 0s"');
    // Nested fragments sit inside their parent in the DOM.
    expect(await page.$$eval('fragcache-fragment[data-name="front-page"] fragcache-fragment', (els) => els.length)).toBe(3);
    const missShot = await page.screenshot({ fullPage: true });

    await page.goto(`${server.url}page?fragcache=debug`);
    const hits = await fragments(page);
    // The outer fragments are served whole from the cache: what they contain is not rendered again.
    expect(hits.map((f) => [f.name, f.status])).toEqual([
      ['nav', 'hit'],
      ['front-page', 'hit'],
      ['popular', 'hit'],
      ['sidebar', 'hit'],
    ]);
    expect(hits.every((f) => f.outline === `rgb(${GREEN.join(', ')})` && /^\d+$/.test(f.age!))).toBe(true);
    expect(await page.textContent('#fragcache-panel summary')).toBe('fragcache: 4 fragments');
    const hitShot = await page.screenshot({ fullPage: true });
    // Kept for people to look at (outside the views: writing there would reload the page).
    writeFileSync(path.join(mkdtempSync(path.join(tmpdir(), 'fragcache-shot-')), 'debug-hit.png'), hitShot);

    expect(hitShot.subarray(1, 4).toString()).toBe('PNG');
    const hitPixels = await countPixels(browser, hitShot, GREEN);
    const hitRed = await countPixels(browser, hitShot, RED);
    const missPixels = await countPixels(browser, missShot, RED);
    expect(hitPixels.width).toBe(1000);
    // 4 outlined boxes 3 px wide, each at least ~900 px wide: thousands of green pixels, no red ones.
    expect(hitPixels.count).toBeGreaterThan(4 * 2 * 3 * 800);
    expect(hitRed.count).toBe(0);
    expect(missPixels.count).toBeGreaterThan(9 * 2 * 3 * 500);

    // Without the flag, the page has no markers and no outline colour at all.
    await page.goto(`${server.url}page`);
    expect(await page.$$('fragcache-fragment')).toHaveLength(0);
    const plain = await countPixels(browser, await page.screenshot({ fullPage: true }), GREEN);
    expect(plain.count).toBe(0);
    await page.close();
  }, 60_000);

  test('the page reloads itself when a template or a data file changes', async () => {
    const page = await browser.newPage();
    const connected = page.waitForResponse((r) => r.url().endsWith('/__fragcache/events'));
    await page.goto(`${server.url}page`);
    await connected;
    expect(await page.textContent('h1')).toBe('Latest articles');

    const file = path.join(views, 'page.njk');
    const reloaded = page.waitForEvent('load');
    writeFileSync(file, readFileSync(file, 'utf8').replace('<h1>Latest articles</h1>', '<h1>Freshly edited</h1>'));
    await reloaded;
    expect(await page.textContent('h1')).toBe('Freshly edited');

    const data = path.join(views, 'data', 'page.yaml');
    const again = page.waitForEvent('load');
    writeFileSync(data, readFileSync(data, 'utf8').replace('year: 2026', 'year: 2031'));
    await again;
    expect(await page.textContent('footer')).toContain('2031');
    await page.close();
  }, 60_000);

  test('a template error is a 500 page with file:line:column and the line; unknown paths are 404; / lists templates', async () => {
    const page = await browser.newPage();
    const res = await page.goto(`${server.url}broken`);
    expect(res!.status()).toBe(500);
    const text = await page.textContent('pre');
    expect(text).toMatch(/broken\.njk:2:\d+: .*Unable to call `nope`/);
    expect(text).toContain(' 2 | <p>{{ nope() }}</p>');
    expect((await page.goto(`${server.url}no/such/page`))!.status()).toBe(404);
    await page.goto(server.url);
    const links = await page.$$eval('li > a:first-child', (as) => as.map((a) => a.textContent));
    expect(links).toEqual(expect.arrayContaining(['page.njk', 'article.njk', 'partials/nav.njk']));
    expect(links).not.toContain('data/page.yaml');
    await page.close();
    expect(server.log()).toMatch(/GET \/page\?fragcache=debug → page\.njk .*\(4 hit, 0 miss, 0 stale\)/);
  }, 60_000);
});

/** GET over plain HTTP: status and body. */
function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      })
      .on('error', reject);
  });
}

/** The server's live-reload stream: `next(file)` resolves on the next `reload` event for a file with that name. */
async function events(base: string): Promise<{ next(file: string): Promise<{ event: string; file: string }>; close(): void }> {
  const waiting: { file: string; resolve: (e: { event: string; file: string }) => void }[] = [];
  let buffer = '';
  const req = http.get(`${base}__fragcache/events`);
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => req.once('response', resolve).once('error', reject));
  res.setEncoding('utf8');
  res.on('data', (chunk: string) => {
    buffer += chunk;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = /^event: reload\ndata: (.*)$/m.exec(block);
      if (!data) continue;
      const e = JSON.parse(data[1]) as { event: string; file: string };
      const i = waiting.findIndex((w) => path.basename(e.file) === w.file);
      if (i >= 0) waiting.splice(i, 1)[0].resolve(e);
    }
  });
  return {
    next: (file) => new Promise((resolve) => waiting.push({ file, resolve })),
    close: () => req.destroy(),
  };
}

/** Replaces a file in one step (write elsewhere, then rename), so the watcher never sees it half written. */
function replace(file: string, edit: (text: string) => string): void {
  const text = edit(readFileSync(file, 'utf8'));
  const tmp = path.join(mkdtempSync(path.join(tmpdir(), 'fragcache-edit-')), path.basename(file));
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

/** Fragment statuses of a `?fragcache=debug` page, in page order. */
const statuses = (html: string) =>
  [...html.matchAll(/<fragcache-fragment\b([^>]*)>/g)].map((m) => `${/ data-name="([^"]*)"/.exec(m[1])?.[1]} ${/ data-status="([^"]*)"/.exec(m[1])?.[1]}`);

describe('fragcache serve: live reload shows what changed (no browser needed)', () => {
  const servers: ChildProcess[] = [];
  afterAll(async () => {
    for (const c of servers) await stop(c);
  });

  async function start(extra: string[] = []) {
    const views = mkdtempSync(path.join(tmpdir(), 'fragcache-serve-fresh-'));
    cpSync(path.join(ROOT, 'templates'), views, { recursive: true });
    const server = await startServer(views, extra);
    servers.push(server.child);
    const stream = await events(server.url);
    return { views, server, stream };
  }

  test('fixed: after a data file or an included partial changes, the reloaded page shows it (data: cached fragments are emptied before the reload event; a partial: exactly the fragments depending on it miss)', async () => {
    const { views, server, stream } = await start();
    try {
      const page = `${server.url}page?fragcache=debug`;
      expect((await get(page)).body).toContain('You have 3 unread messages.');
      const hit = await get(page);
      expect(statuses(hit.body)).toEqual(['nav hit', 'front-page hit', 'popular hit', 'sidebar hit']);

      // Data inside a cached fragment whose key does not change (the sidebar varies on user.id only).
      const reloadedData = stream.next('page.yaml');
      replace(path.join(views, 'data', 'page.yaml'), (t) => t.replace('unread: 3', 'unread: 42'));
      expect(await reloadedData).toMatchObject({ event: 'change' });
      const afterData = await get(page);
      expect(afterData.body).toContain('You have 42 unread messages.');
      expect(afterData.body).not.toContain('You have 3 unread messages.');
      expect(statuses(afterData.body)).toContain('sidebar miss');

      // A partial included inside a cached fragment (nav), whose own block source does not change.
      const reloadedPartial = stream.next('nav.njk');
      replace(path.join(views, 'partials', 'nav.njk'), (t) => t.replace('<nav>', '<nav class="edited">'));
      await reloadedPartial;
      const afterPartial = await get(page);
      expect(afterPartial.body).toContain('<nav class="edited">');
      expect(statuses(afterPartial.body)).toEqual(['nav miss', 'front-page hit', 'popular hit', 'sidebar hit']);
      // And the page is cached again from then on.
      expect(statuses((await get(page)).body)).toEqual(['nav hit', 'front-page hit', 'popular hit', 'sidebar hit']);
    } finally {
      stream.close();
    }
  }, 30_000);

  test('fixed: on a shared store (SQLite), a change deletes only the entries this server rendered; other keys under the prefix stay', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-serve-sqlite-'));
    const store = `sqlite://${path.join(dir, 'cache.db')}`;
    // Another process's entry under the same prefix.
    writeFileSync(path.join(dir, 'p.njk'), '<% cache 600 elsewhere %>not this server\'s<% endcache %>');
    const other = spawn(process.execPath, [BIN, 'preview', 'p.njk', '--views', dir, '--store', store], { stdio: 'ignore', cwd: dir });
    await new Promise((resolve) => other.once('exit', resolve));
    const { views, server, stream } = await start(['--store', store]);
    try {
      const page = `${server.url}page?fragcache=debug`;
      await get(page);
      expect(statuses((await get(page)).body)).toEqual(['nav hit', 'front-page hit', 'popular hit', 'sidebar hit']);
      const reloaded = stream.next('page.yaml');
      replace(path.join(views, 'data', 'page.yaml'), (t) => t.replace('name: Ada', 'name: Grace'));
      await reloaded;
      const after = await get(page);
      expect(after.body).toContain('Hello, Grace.');
      expect(statuses(after.body).filter((s) => s.endsWith(' hit'))).toEqual([]);
      const keys = await new Promise<string>((resolve) => {
        const c = spawn(process.execPath, [BIN, 'keys', 'elsewhere', '--store', store], { cwd: dir, stdio: ['ignore', 'pipe', 'ignore'] });
        let out = '';
        c.stdout.on('data', (d) => (out += d));
        c.on('close', () => resolve(out));
      });
      expect(keys).toMatch(/^fc:1:f:elsewhere\//m);
    } finally {
      stream.close();
    }
  }, 30_000);
});
