/** The example blog (`examples/express`), driven over real HTTP. */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import path from 'node:path';
import request from 'supertest';
import { createApp } from '../examples/express/server';
import { describeWith, freePort, need, redis, until, type TestServer } from './support/servers';

let blog: ReturnType<typeof createApp>;
let server: http.Server;
beforeEach(async () => {
  blog = createApp();
  server = blog.app.listen(0, '127.0.0.1');
  await once(server, 'listening');
});
afterEach(async () => {
  await new Promise((r) => server.close(r));
  await blog.close();
});

const ALICE = 'uid=alice';
const BOB = 'uid=bob';
const hello = (html: string) => /class="hello">([^<]*)</.exec(html)?.[1];
const sidebar = (html: string) => /<nav class="sidebar">[\s\S]*?<\/nav>/.exec(html)?.[0] ?? '';

describe('example blog', () => {
  it('never shows one user’s sidebar to another (fragment and whole page)', async () => {
    for (const url of ['/', '/articles/1', '/fragment/articles/1']) {
      for (let round = 0; round < 2; round++) {
        const a = await request(server).get(url).set('Cookie', ALICE).expect(200);
        const b = await request(server).get(url).set('Cookie', BOB).expect(200);
        const g = await request(server).get(url).expect(200);
        expect([hello(a.text), hello(b.text), hello(g.text)]).toEqual(['Hello, Alice', 'Hello, Bob', 'Hello, guest']);
        expect(sidebar(a.text)).toContain('/articles/3'); // Alice's reading list
        expect(sidebar(b.text)).not.toContain('/articles/3');
        expect(sidebar(b.text)).toContain('/articles/2');
        expect(sidebar(g.text)).not.toContain('reading list');
        if (url === '/articles/1' && round === 1) expect([a.headers['x-cache'], b.headers['x-cache'], g.headers['x-cache']]).toEqual(['HIT', 'HIT', 'HIT']);
      }
    }
    expect(blog.engine.stats().fragments.sidebar.hits).toBeGreaterThan(0);
  });

  it('caches the article page whole and drops it (and its fragments) when the article is saved', async () => {
    expect((await request(server).get('/articles/2')).headers['x-cache']).toBe('MISS');
    const hit = await request(server).get('/articles/2');
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.text).toContain('<h1>Article 2</h1>');
    // per-user page: this cache keys on the user, a shared proxy would not, so it is private downstream
    expect(hit.headers['cache-control']).toBe('max-age=600, private');
    await request(server).get('/fragment/articles/2');
    await request(server).get('/');

    await request(server).put('/articles/2').send({ title: 'Edited <title>' }).expect(200);

    const page = await request(server).get('/articles/2');
    expect(page.headers['x-cache']).toBe('MISS');
    expect(page.text).toContain('<h1>Edited &lt;title&gt;</h1>');
    expect((await request(server).get('/fragment/articles/2')).text).toContain('<h1>Edited &lt;title&gt;</h1>');
    expect((await request(server).get('/')).text).toContain('Edited &lt;title&gt;</a>');
    expect((await request(server).get('/articles/1')).text).toContain('<h1>Article 1</h1>');
  });

  it('saves from a form too, and the next view of the page is fresh', async () => {
    await request(server).get('/articles/3');
    await request(server).post('/articles/3').type('form').send({ title: 'From a form' }).expect(303).expect('Location', '/articles/3');
    expect((await request(server).get('/articles/3')).text).toContain('<h1>From a form</h1>');
    await request(server).put('/articles/99').send({ title: 'x' }).expect(404);
    await request(server).get('/articles/99').expect(404);
  });

  it('the fragment-cached and uncached routes render the same page', async () => {
    const strip = (s: string) => s.replace(/\s+/g, ' ');
    const cached = await request(server).get('/fragment/articles/4');
    const again = await request(server).get('/fragment/articles/4');
    const uncached = await request(server).get('/uncached/articles/4');
    expect(strip(again.text)).toBe(strip(cached.text));
    expect(strip(uncached.text)).toBe(strip(cached.text));
    expect(blog.engine.stats().fragments['article-body'].hits).toBe(1);
  });
});

describeWith(need(redis), 'example blog process on Redis', () => {
  let redisServer: TestServer;
  beforeAll(async () => (redisServer = await redis.get!()));
  afterAll(() => redisServer?.stop());

  // The server process exits by itself on SIGTERM and on SIGINT: the HTTP server and the engine's Redis
  // connection are closed (before, SIGTERM left the Redis socket open and the process running).
  it.each(['SIGTERM', 'SIGINT'] as const)('%s closes the HTTP server and the engine, and the process exits', async (signal) => {
    const port = await freePort();
    const child = spawn(process.execPath, [require.resolve('tsx/cli'), path.join(__dirname, '..', 'examples', 'express', 'server.ts')], {
      env: { ...process.env, PORT: String(port), FRAGCACHE_STORE: redisServer.url },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = once(child, 'exit');
    try {
      await until('the example to listen', () => out.includes('example blog on'), 15_000, 50);
      const page = await fetch(`http://127.0.0.1:${port}/articles/1`);
      expect(page.status).toBe(200);
      await page.text();
      child.kill(signal);
      const t0 = performance.now();
      let timer: NodeJS.Timeout | undefined;
      const [code] = await Promise.race([exited, new Promise<[string]>((r) => (timer = setTimeout(() => r(['still running after 5 s']), 5000)))]);
      clearTimeout(timer);
      expect([code, out]).toEqual([0, expect.stringContaining(`${signal}: shutting down`)]);
      expect(performance.now() - t0).toBeLessThan(5000);
    } finally {
      child.kill('SIGKILL');
    }
  }, 30_000);
});
