/**
 * The store commands (keys, inspect, invalidate, stats, clear) and preview on a shared store, run as
 * subprocesses against a real Redis (spec/support/servers.ts: `REDIS_URL` when set, else a private
 * `redis-server` on a free loopback port) and on SQLite files. Every run uses its own key prefix and
 * never touches keys it did not write.
 */
import { once } from 'node:events';
import net from 'node:net';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createClient } from '@redis/client';
import { encodeEntry, type Entry } from '../lib/entry';
import { varyPart } from '../lib/keys';
import { describeWith, freePort, need, redis as redisServer, uniquePrefix, type TestServer } from './support/servers';
import { collect, type Run } from './support/spawn';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'dist', 'cli', 'index.js');
function run(args: string[], options: { cwd: string; tty?: boolean; store?: string }): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, TERM: 'xterm' };
  delete env.FRAGCACHE_STORE;
  if (options.store) env.FRAGCACHE_STORE = options.store;
  delete env.NO_COLOR;
  delete env.FORCE_COLOR;
  const quoted = [process.execPath, BIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return options.tty
    ? collect('script', ['-qec', quoted, '/dev/null'], { cwd: options.cwd, env })
    : collect(process.execPath, [BIN, ...args], { cwd: options.cwd, env });
}

/** Writes the config that points the CLI at `url` (the built-in redis:// store: a broken one must fail here). */
function writeConfig(dir: string, url: string, prefix: string): void {
  writeFileSync(path.join(dir, 'fragcache.config.json'), JSON.stringify({ prefix, views: path.join(ROOT, 'templates'), store: url }));
}

describeWith(need(redisServer), 'store commands against a real Redis', () => {
  let redis: TestServer;
  let client: ReturnType<typeof createClient>;
  let dir: string;
  const prefix = uniquePrefix('cli');
  const cli = (...args: string[]) => run(args, { cwd: dir });
  const preview = () => cli('preview', 'page.njk', '--data', path.join(ROOT, 'templates', 'data', 'page.yaml'), '--explain');
  const statusOf = (stderr: string, name: string) => stderr.split('\n').filter((l) => l.trim().replace(/^└ /, '').startsWith(`${name} `)).map((l) => / (hit|miss|stale) /.exec(l)?.[1]);

  beforeAll(async () => {
    redis = await redisServer.get!();
    client = createClient({ url: redis.url });
    await client.connect();
    dir = mkdtempSync(path.join(tmpdir(), 'fragcache-cli-store-'));
    writeConfig(dir, redis.url, prefix);
    // A key outside the prefix: no command may touch it.
    await client.set(`${prefix}-other:keep`, 'mine');
  }, 30_000);

  afterAll(async () => {
    if (client) {
      const mine: string[] = [];
      for await (const b of client.scanIterator({ MATCH: `${prefix}*` })) mine.push(...([] as string[]).concat(b));
      if (mine.length) await client.del(mine);
      await client.quit();
    }
    await redis?.stop(); // a private server only: a shared one (REDIS_URL) is left running
  });

  test('preview on the shared store: the first process misses, a second process hits', async () => {
    const first = await preview();
    expect(first.code).toBe(0);
    expect(first.stderr).toMatch(/^run 1\/1 .* 0 hit, 9 miss/);
    expect(first.stderr).toContain(`${prefix}:1:f:front-page/`);
    const second = await preview();
    expect(second.stderr).toMatch(/^run 1\/1 .* 4 hit, 0 miss/);
    expect(second.stdout).toBe(first.stdout);
  });

  test('keys lists what the store holds under the prefix; a pattern matches fragment names or whole keys', async () => {
    const all = await cli('keys', '--json');
    expect(all.code).toBe(0);
    const rows = JSON.parse(all.stdout) as { key: string; kind: string; name?: string; size: number; ttlLeft: number | null }[];
    expect(rows.every((r) => r.key.startsWith(`${prefix}:`))).toBe(true);
    expect(rows.filter((r) => r.kind === 'fragment').map((r) => r.name).sort()).toEqual(['article-card', 'article-card', 'article-card', 'badge', 'badge', 'front-page', 'nav', 'popular', 'sidebar']);
    expect(rows.some((r) => r.kind === 'tag' && r.ttlLeft === null)).toBe(true);
    const front = rows.find((r) => r.name === 'front-page')!;
    expect(front.ttlLeft).toBeGreaterThan(250);
    expect(front.ttlLeft).toBeLessThanOrEqual(300);
    const cards = await cli('keys', 'article-*');
    expect(cards.code).toBe(0);
    const lines = cards.stdout.trim().split('\n');
    expect(lines[0].split(/\s{2,}/)).toEqual(['key', 'kind', 'size', 'ttl left', 'age', 'name / url']);
    expect(lines.slice(1, -1)).toHaveLength(3);
    expect(lines.slice(1, -1).every((l) => l.startsWith(`${prefix}:1:f:article-card/`) && / fragment /.test(l))).toBe(true);
    expect(lines[1]).toMatch(/ article-card \(1, "2026-11-20T10:00:00Z"\)$/);
    expect(lines.at(-1)).toBe('3 keys');
    const tags = await cli('keys', `${prefix}:tag:t/*`, '--json');
    expect((JSON.parse(tags.stdout) as { key: string }[]).map((r) => r.key).sort()).toEqual(['articles', 'article:1', 'article:2', 'article:3'].map((t) => `${prefix}:tag:t/=s${t.length}:${t}`).sort());
    const none = await cli('keys', 'zzz*');
    expect([none.code, none.stdout]).toEqual([0, '']);
    expect(none.stderr).toMatch(/^no keys under ".*" matching zzz\*/);
  });

  test('keys, stats and preview --explain fit COLUMNS (keys cut in the middle) unless --wide; hashed vary values read as values', async () => {
    const saved = process.env.COLUMNS;
    process.env.COLUMNS = '100';
    try {
      const narrow = await cli('keys');
      const lines = narrow.stdout.trimEnd().split('\n');
      expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(100);
      expect(narrow.stdout).toMatch(/^tcli\w*…\S*10:00:00Z +fragment /m); // the start and the end of the key
      // badge varies on titles with spaces, so its key holds a hash of them; the values are shown all the same.
      expect(narrow.stdout).toMatch(/ badge \("Russian dolls, explained", 1200\)$/m);
      const wide = await cli('keys', '--wide');
      expect(Math.max(...wide.stdout.split('\n').map((l) => l.length))).toBeGreaterThan(100);
      expect(wide.stdout).toContain(`${prefix}:1:f:article-card/`);
      const json = JSON.parse((await cli('keys', 'badge', '--json')).stdout) as { varyPreview?: string }[];
      expect(json.map((r) => r.varyPreview).sort()).toEqual(['"Caching fragments <safely>", 950', '"Russian dolls, explained", 1200']);
      const explain = await preview();
      expect(Math.max(...explain.stderr.split('\n').map((l) => l.length))).toBeLessThanOrEqual(100);
      const explainWide = await cli('preview', 'page.njk', '--data', path.join(ROOT, 'templates', 'data', 'page.yaml'), '--explain', '--wide');
      expect(explain.stderr).not.toContain(`${prefix}:1:f:sidebar/`);
      expect(explainWide.stderr).toContain(`${prefix}:1:f:sidebar/`);
      const stats = await cli('stats');
      expect([stats.code, Math.max(...stats.stdout.split('\n').map((l) => l.length)) <= 100]).toEqual([0, true]);
      const inspect = await cli('inspect', 'badge');
      expect(inspect.stdout).toMatch(/^ {2}vary {8}"Russian dolls, explained", 1200 \(hashed in the key\)$/m);
    } finally {
      if (saved === undefined) delete process.env.COLUMNS;
      else process.env.COLUMNS = saved;
    }
  }, 60_000);

  test('without a config file: FRAGCACHE_STORE or --store point the commands at the Redis', async () => {
    const empty = mkdtempSync(path.join(tmpdir(), 'fragcache-cli-noconfig-'));
    const viaEnv = await run(['keys', 'front-page', '--prefix', prefix, '--json'], { cwd: empty, store: redis.url });
    expect([viaEnv.code, viaEnv.stderr]).toEqual([0, '']);
    expect((JSON.parse(viaEnv.stdout) as { name: string }[]).map((r) => r.name)).toEqual(['front-page']);
    const viaFlag = await run(['keys', 'front-page', '--prefix', prefix, '--json', '--store', redis.url], { cwd: empty, store: 'memory' });
    const keysOf = (out: string) => (JSON.parse(out) as { key: string }[]).map((r) => r.key);
    expect(keysOf(viaFlag.stdout)).toEqual(keysOf(viaEnv.stdout));
  });

  test('inspect shows key, validity, age, TTL left, size, tags and nested fragments', async () => {
    const r = await cli('inspect', 'front-page');
    expect(r.code).toBe(0);
    const text = r.stdout;
    expect(text).toMatch(new RegExp(`^${prefix}:1:f:front-page/[0-9a-f]{12}/=\\n`));
    expect(text).toMatch(/^ {2}valid {7}yes$/m);
    expect(text).toMatch(/^ {2}created {5}\d{4}-\d\d-\d\dT[\d:.]+Z \(\d+s ago\)$/m);
    expect(text).toMatch(/^ {2}ttl left {4}[45]m(\d+s)?$/m);
    expect(text).toMatch(/^ {2}size {8}\d+ B \(\d+ characters\)$/m);
    expect(text).toMatch(/^ {2}tags {8}articles, article:1, article:2, article:3$/m);
    expect(text).toMatch(/^ {2}contains {4}article-card$/m);
  });

  test('inspect vary values are strings unless --json; a first vary value selects every variant that starts with it', async () => {
    const asString = await cli('inspect', 'sidebar', '7');
    expect(asString.code).toBe(1);
    expect(asString.stderr).toMatch(/no stored entries for fragment "sidebar" with vary "7" .*vary values are strings unless you add --json/);
    const asNumber = await cli('inspect', 'sidebar', '7', '--json');
    expect(asNumber.code).toBe(0);
    expect(JSON.parse(asNumber.stdout)).toEqual([expect.objectContaining({ name: 'sidebar', vary: [7], valid: true, tags: [], contains: [] })]);
    const firstOnly = await cli('inspect', 'article-card', '2', '--json');
    expect((JSON.parse(firstOnly.stdout) as { vary: unknown[] }[]).map((e) => e.vary)).toEqual([[2, '2026-11-21T09:30:00Z']]);
    const unknown = await cli('inspect', 'no-such-fragment');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^error: no stored entries for fragment "no-such-fragment"/);
    const badJson = await cli('inspect', 'sidebar', '{oops', '--json');
    expect(badJson.code).toBe(1);
    expect(badJson.stderr).toMatch(/option "vary": expected JSON with --json.*got "\{oops"/);
  });

  test('invalidate --tag drops the tagged fragment and the ones containing it, in every process', async () => {
    const r = await cli('invalidate', '--tag', 'article:1');
    expect([r.code, r.stdout]).toEqual([0, 'invalidated everything tagged "article:1"\n']);
    const inspect = await cli('inspect', 'front-page');
    expect(inspect.stdout).toMatch(/^ {2}valid {7}no: invalidated \(tag:article:1 changed\)$/m);
    const again = await preview();
    expect(statusOf(again.stderr, 'front-page')).toEqual(['miss']);
    expect(statusOf(again.stderr, 'article-card')).toEqual(['miss', 'hit', 'hit']);
    expect(statusOf(again.stderr, 'popular')).toEqual(['hit']);
  });

  test('invalidate <name> [vary…] drops one variant or every variant', async () => {
    const one = await cli('invalidate', 'sidebar', '7', '--json');
    expect([one.code, one.stdout]).toEqual([0, 'invalidated fragment "sidebar" with vary 7 (and every fragment containing it)\n']);
    expect(JSON.parse((await cli('inspect', 'sidebar', '--json')).stdout)[0]).toMatchObject({ valid: false, reason: expect.stringMatching(/variant:sidebar\(7\) changed/) });
    const all = await cli('invalidate', 'popular');
    expect(all.stdout).toBe('invalidated fragment "popular", every variant (and every fragment containing one)\n');
    const after = await preview();
    expect(statusOf(after.stderr, 'sidebar')).toEqual(['miss']);
    expect(statusOf(after.stderr, 'popular')).toEqual(['miss']);
    expect(statusOf(after.stderr, 'nav')).toEqual(['hit']);
    // The preview knows when it read its data (after the invalidation resolved): what it stores lives its whole
    // TTL, not just the unknown-since window (1 s) of a render whose data may predate the invalidation.
    const [stored] = JSON.parse((await cli('inspect', 'sidebar', '--json')).stdout) as { valid: boolean; ttlLeft: number }[];
    expect(stored.valid).toBe(true);
    expect(stored.ttlLeft).toBeGreaterThan(60);
  });

  test('invalidate with no matching stored entry says so, lists the stored variants with typed values, exits 1, and writes nothing', async () => {
    const tagKeys = async () => (await client.keys(`${prefix}:tag:*`)).sort();
    const before = await tagKeys();
    const str = await cli('invalidate', 'sidebar', '7'); // the string "7": the stored variant varies on the number 7
    expect([str.code, str.stdout]).toEqual([1, '']);
    expect(str.stderr).toBe(
      `error: no stored entry of fragment "sidebar" with vary "7" (looked under ${prefix}:1:f:sidebar/): nothing was invalidated. Stored variants of "sidebar":\n  7\nVary values are strings unless you add --json (then 7 is the number 7, "7" the string).\n`,
    );
    const typo = await cli('invalidate', 'sidebra');
    expect([typo.code, typo.stdout]).toEqual([1, '']);
    expect(typo.stderr).toMatch(/^error: no stored entry of fragment "sidebra" \(looked under .*\): nothing was invalidated\. Stored fragment names: .*\bsidebar\b/);
    expect(await tagKeys()).toEqual(before); // no version record left behind by either
  });

  test('stats counts entries and bytes per kind and per fragment name', async () => {
    const r = await cli('stats', '--json');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({ prefix, version: '1' });
    expect(s.fragments['article-card'].entries).toBe(3);
    expect(s.fragments.nav).toEqual({ entries: 1, bytes: expect.any(Number), expired: 0 });
    expect(s.kinds.fragment.entries).toBe(Object.values(s.fragments as Record<string, { entries: number }>).reduce((a, f) => a + f.entries, 0));
    expect(s.keys).toBe(s.kinds.fragment.entries + s.kinds.tag.entries);
    const text = await cli('stats');
    expect(text.stdout).toMatch(/^article-card +3 +\d+ B/m);
  });

  test('keys shows progress on a terminal only', async () => {
    // Enough keys that a scan takes a while; written as real entries under the prefix.
    const many = Array.from({ length: 3000 }, (_, i) => [`${prefix}:1:k:=s4:n${String(i).padStart(3, '0')}`, encodeEntry({ body: 'v', created: Date.now(), expires: null }, `${prefix}:1:k:=s4:n${String(i).padStart(3, '0')}`)] as [string, string]);
    await client.mSet(many);
    const tty = await run(['keys', 'nothing-matches-this'], { cwd: dir, tty: true });
    expect(tty.code).toBe(0);
    expect(tty.stdout).toMatch(/\r\x1b\[2Kscanning .*\d+ keys, 0 matching/);
    const piped = await cli('keys', 'nothing-matches-this');
    expect(piped.stderr).not.toMatch(/scanning/);
  }, 30_000);

  test('clear deletes every key under the prefix and nothing else', async () => {
    const before = (JSON.parse((await cli('keys', '--json')).stdout) as unknown[]).length;
    expect(before).toBeGreaterThan(3000);
    const r = await cli('clear');
    expect([r.code, r.stdout]).toEqual([0, `cleared ${before} keys under "${prefix}:" in ${r.stdout.split(' in ')[1]}`]);
    expect((await cli('keys', '--json')).stdout).toBe('[]\n');
    expect(await client.get(`${prefix}-other:keep`)).toBe('mine');
  }, 30_000);
});

describe('an unreachable store', () => {
  test('says which store and exits 1, for preview and the store commands', async () => {
    const port = await freePort(); // nothing listens there
    const url = `redis://127.0.0.1:${port}`;
    const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-cli-down-'));
    writeConfig(dir, url, 'down');
    for (const args of [['keys'], ['stats'], ['invalidate', 'nav'], ['preview', 'page.njk']]) {
      const started = Date.now();
      const r = await run(args, { cwd: dir });
      expect([args, r.code]).toEqual([args, 1]);
      expect(r.stderr).toMatch(new RegExp(`^error: store redis://127\\.0\\.0\\.1:${port}/? is unreachable: `));
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(Date.now() - started).toBeLessThan(8000);
    }
  }, 60_000);
});

describe('a refused connection and a silent server', () => {
  // Refused (nothing listens): fails at once. Accepted but never answered: the probe waits its 3 s budget.
  test('ECONNREFUSED fails at once; a store that accepts and never answers waits the 3 s budget', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-cli-refused-'));
    const silent = net.createServer(() => undefined).listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const silentPort = (silent.address() as net.AddressInfo).port;
    try {
      for (const scheme of ['redis', 'memcache']) {
        const t0 = Date.now();
        const r = await run(['keys', '--store', `${scheme}://127.0.0.1:${await freePort()}`], { cwd: dir });
        const refusedMs = Date.now() - t0;
        expect([scheme, r.code, r.stderr]).toEqual([scheme, 1, expect.stringMatching(/is unreachable: .*ECONNREFUSED/)]);
        const t1 = Date.now();
        const s = await run(['keys', '--store', `${scheme}://127.0.0.1:${silentPort}`], { cwd: dir });
        const silentMs = Date.now() - t1;
        expect([scheme, s.code, s.stderr]).toEqual([scheme, 1, expect.stringContaining('is unreachable')]);
        expect(silentMs).toBeGreaterThanOrEqual(3000);
        // The process itself takes a second or so to start on a loaded machine; before, refusals took 3 s more.
        expect(refusedMs).toBeLessThan(silentMs - 1500);
      }
    } finally {
      silent.close();
    }
  }, 60_000);
});

describe('a store that cannot list its keys (as Memcached)', () => {
  test('keys, inspect and stats say why they cannot work and that invalidate and clear do; those two work', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-cli-nolist-'));
    // The store interface without keys(), named as the Memcached store is (no memcached needed for this).
    writeFileSync(
      path.join(dir, 'fragcache.config.js'),
      `const writes = [];
module.exports = { store: { kind: 'memcache', shared: true,
  async getMany(keys) { return keys.map(() => undefined); }, async setMany(w) { writes.push(...w); }, async add() { return true; },
  async deleteMany() {}, async clear() { return undefined; }, async close() {} } };`,
    );
    for (const args of [['keys'], ['inspect', 'nav'], ['stats']]) {
      const r = await run(args, { cwd: dir });
      expect([args, r.code, r.stderr]).toEqual([args, 1, 'error: the memcache store cannot list its keys (Memcached has no command that lists keys), so keys, inspect and stats cannot work on it; invalidate and clear do\n']);
    }
    const inv = await run(['invalidate', 'nav'], { cwd: dir });
    expect([inv.code, inv.stdout, inv.stderr]).toEqual([0, 'invalidated fragment "nav", every variant (and every fragment containing one)\n', 'note: the memcache store cannot list its keys, so whether any stored entry matched is not known\n']);
    const clear = await run(['clear'], { cwd: dir });
    expect([clear.code, clear.stdout]).toEqual([0, expect.stringMatching(/^cleared every key under "fc:"/)]);
  }, 30_000);
});

describe('store commands on a SQLite file', () => {
  const TEMPLATES = path.join(ROOT, 'templates');
  // The built store factory, as the CLI itself uses it (the specs run the built CLI).
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { createStore } = require(path.join(ROOT, 'dist', 'index.js')) as {
    createStore(s: string): { setMany(w: { key: string; entry: Entry; ttlMs: number | null }[]): Promise<void>; close(): Promise<void> };
  };
  const tmp = () => mkdtempSync(path.join(tmpdir(), 'fragcache-cli-sqlite-'));

  test('fixed: keys, inspect, stats, invalidate and clear never create a missing SQLite file: exit 1 naming it', async () => {
    const dir = tmp();
    const db = path.join(dir, 'nonexistent-dir', 'x.db');
    for (const args of [['keys'], ['inspect', 'nav'], ['stats'], ['invalidate', 'nav'], ['invalidate', '--tag', 'articles'], ['clear']]) {
      const r = await run([...args, '--store', `sqlite://${db}`], { cwd: dir });
      expect([args, r.code, r.stdout]).toEqual([args, 1, '']);
      expect(r.stderr).toBe(
        `error: SQLite database not found: ${db} (store sqlite://${db}, from --store). keys, inspect, invalidate, stats and clear read an existing database and never create one: check the path.\n`,
      );
    }
    // A relative path is the working directory's; the message names the file and where the store came from.
    const rel = await run(['keys'], { cwd: dir, store: 'sqlite://cache.db' });
    expect([rel.code, rel.stderr]).toEqual([1, expect.stringContaining(`SQLite database not found: ${path.join(dir, 'cache.db')} (store sqlite://cache.db, from FRAGCACHE_STORE)`)]);
    const inMemory = await run(['stats', '--store', 'sqlite://:memory:'], { cwd: dir });
    expect([inMemory.code, inMemory.stderr]).toEqual([1, expect.stringMatching(/^error: the configured store sqlite:\/\/:memory: \(from --store\) is an in-process SQLite database/)]);
    expect(readdirSync(dir)).toEqual([]); // no folder, no database, no journal
  });

  test('fixed: options after the values of --tag parse as options; --tag=-x names a tag that starts with "-"', async () => {
    const dir = tmp();
    const store = `sqlite://${path.join(dir, 'cache.db')}`;
    const mine = uniquePrefix('tag');
    const made = await run(['preview', 'page.njk', '--views', TEMPLATES, '--data', path.join(TEMPLATES, 'data', 'page.yaml'), '--store', store, '--prefix', mine], { cwd: dir });
    expect(made.code).toBe(0);
    const r = await run(['invalidate', '--tag', 'articles', 'article:2', '--prefix', mine, '--store', store], { cwd: dir });
    expect([r.code, r.stdout, r.stderr]).toEqual([0, 'invalidated everything tagged "articles", "article:2"\n', '']);
    const dash = await run(['invalidate', `--tag=-x`, '--prefix', mine, '--store', store], { cwd: dir });
    expect([dash.code, dash.stdout]).toEqual([0, 'invalidated everything tagged "-x"\n']);
    const keys = JSON.parse((await run(['keys', `${mine}:tag:t/*`, '--prefix', mine, '--store', store, '--json'], { cwd: dir })).stdout) as { key: string; name: string }[];
    expect(keys.map((k) => k.name)).toEqual(expect.arrayContaining(['tag:articles', 'tag:article:2', 'tag:-x']));
    // Nothing went to the default prefix: --prefix was an option, not a tag.
    expect((await run(['keys', '--store', store, '--json'], { cwd: dir })).stdout).toBe('[]\n');
    const front = JSON.parse((await run(['inspect', 'front-page', '--prefix', mine, '--store', store, '--json'], { cwd: dir })).stdout) as { valid: boolean; reason: string }[];
    expect(front[0]).toMatchObject({ valid: false, reason: expect.stringMatching(/^invalidated \(tag:article(s|:2) changed\)$/) });
  });

  test('fixed: keys and stats label whole-page entries as pages with a readable URL, and p/ tags as URL tags', async () => {
    const dir = tmp();
    const file = path.join(dir, 'pages.db');
    const pfx = uniquePrefix('pg');
    const now = Date.now();
    const entry = (body: string, meta: Record<string, unknown>, tags?: string[]): Entry => ({ body, created: now, expires: now + 600_000, meta, tags });
    // The layout of lib/page/cache.ts: `<base>ph:<url part>` lists the varied headers, `<base>pg:<url part>/<vary part>` is the page.
    const bob = varyPart(['', 'http', 'localhost:3000', '/render?user=bob']);
    const longUrl = `/articles/${'x'.repeat(80)}?page=2`;
    const long = varyPart(['', 'https', 'example.com', longUrl]);
    const urlTag = `${pfx}:tag:p/${varyPart(['/render?user=bob'])}`;
    const store = createStore(`sqlite://${file}`);
    await store.setMany([
      { key: `${pfx}:1:ph:${bob}`, entry: entry('', { vary: ['accept-language'] }), ttlMs: 600_000 },
      {
        key: `${pfx}:1:pg:${bob}/${varyPart([[['accept-language', 'en']], undefined])}`,
        entry: entry('<p>bob</p>', { status: 200, headers: {}, vary: ['accept-language'], etag: '"1"', url: '/render?user=bob' }, [urlTag, 'v1']),
        ttlMs: 600_000,
      },
      { key: `${pfx}:1:pg:${long}/${varyPart([[], undefined])}`, entry: entry('<p>long</p>', { status: 200, headers: {}, vary: [], etag: '"2"', url: longUrl }), ttlMs: 600_000 },
      { key: urlTag, entry: { body: 'v1', created: now, expires: null }, ttlMs: null },
    ]);
    await store.close();
    expect(long.startsWith('#')).toBe(true); // a long URL is hashed in the key: the entry gives it back

    const cmd = (...args: string[]) => run([...args, '--store', `sqlite://${file}`, '--prefix', pfx], { cwd: dir });
    const rows = JSON.parse((await cmd('keys', '--json')).stdout) as { key: string; kind: string; name?: string; url?: string | null; vary?: unknown }[];
    const byKind = (kind: string) => rows.filter((r) => r.kind === kind);
    expect(byKind('other')).toEqual([]);
    expect(byKind('page').map((r) => r.url).sort()).toEqual([longUrl, 'http://localhost:3000/render?user=bob']);
    expect(byKind('page').find((r) => r.url!.startsWith('http'))!.vary).toEqual([[['accept-language', 'en']], null]);
    expect(byKind('page-vary').map((r) => r.url)).toEqual(['http://localhost:3000/render?user=bob']);
    expect(byKind('tag').map((r) => r.name)).toEqual(['url:/render?user=bob']);

    const table = (await cmd('keys')).stdout.split('\n');
    expect(table.find((l) => l.includes(':pg:=') && / page /.test(l))).toMatch(/ http:\/\/localhost:3000\/render\?user=bob \(accept-language: en\)$/);
    expect(table.find((l) => l.includes(':ph:'))).toMatch(/ page-vary .* http:\/\/localhost:3000\/render\?user=bob$/);
    expect(table.find((l) => l.includes(':tag:p/'))).toMatch(/ tag .* url:\/render\?user=bob$/);
    // A pattern matches a page's path and query as well as its key.
    const matched = JSON.parse((await cmd('keys', '/render*', '--json')).stdout) as { kind: string }[];
    expect(matched.map((r) => r.kind)).toEqual(['page']);

    const stats = JSON.parse((await cmd('stats', '--json')).stdout);
    expect(stats.kinds).toEqual({ page: expect.objectContaining({ entries: 2 }), 'page-vary': expect.objectContaining({ entries: 1 }), tag: expect.objectContaining({ entries: 1 }) });
    expect(Object.keys(stats.pages).sort()).toEqual([longUrl, 'http://localhost:3000/render?user=bob']);
    const text = (await cmd('stats')).stdout;
    expect(text).toMatch(/^page +2 +\d+ B/m);
    expect(text).toMatch(/^http:\/\/localhost:3000\/render\?user=bob +1 +10 B/m);
    expect(text).not.toMatch(/^other /m);
  });
});
