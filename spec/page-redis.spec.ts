/**
 * Whole-page caching over a shared, asynchronous store: two instances of the example blog on one private
 * redis-server (fragcache's Redis store), and the same apps once that server is gone.
 */
import { once } from 'node:events';
import http from 'node:http';
import { createClient } from '@redis/client';
import express from 'express';
import request from 'supertest';
import { createApp } from '../examples/express/server';
import { createStore, FragmentCache } from '../lib';
import { cacheMiddleware, cachePage } from '../lib/express';
import { serve } from './support/http';
import { describeWith, need, privateRedis, redis as redisAvailability, until, type TestServer } from './support/servers';

describeWith(need(redisAvailability, true), 'page cache on Redis (two app instances)', () => {
  let redis: TestServer;
  const apps: { blog: ReturnType<typeof createApp>; server: http.Server }[] = [];

  beforeAll(async () => {
    redis = await privateRedis();
    const prefix = `pg${process.pid}`;
    for (let i = 0; i < 2; i++) {
      const blog = createApp({ store: redis.url, prefix });
      blog.engine.on('error', () => undefined); // store errors once Redis is gone
      const server = blog.app.listen(0, '127.0.0.1');
      await once(server, 'listening');
      apps.push({ blog, server });
    }
  });

  afterAll(async () => {
    for (const a of apps) await new Promise((r) => a.server.close(r));
    await Promise.all(apps.map((a) => a.blog.close().catch(() => undefined)));
    await redis.stop();
  });

  // Both instances answer for the same site.
  const get = (i: number, url: string) => request(apps[i]!.server).get(url).set('Host', 'blog.example');

  it('shares pages between instances, and a save in one drops the page in the other', async () => {
    expect((await get(0, '/articles/5')).headers['x-cache']).toBe('MISS');
    await apps[0]!.blog.engine.settled();
    // The store write happens after the response: wait (bounded) until instance 1 sees it.
    await until('instance 1 to hit the page instance 0 stored', async () => (await get(1, '/articles/5')).headers['x-cache'] === 'HIT');
    const h = await get(1, '/articles/5').set('Cookie', 'uid=alice');
    expect(h.headers['x-cache']).toBe('MISS'); // another user's variant
    expect(h.text).toContain('Hello, Alice');

    await request(apps[0]!.server).put('/articles/5').set('Host', 'blog.example').send({ title: 'Saved on 0' }).expect(200);
    const after = await get(0, '/articles/5');
    expect([after.headers['x-cache'], /<h1>([^<]*)/.exec(after.text)?.[1]]).toEqual(['MISS', 'Saved on 0']);
    // A request that starts within the store clock's uncertainty of the invalidation (a millisecond or two, more
    // on a loaded machine) is shown but not stored (fencing): instance 0 stores the fresh page on a later one.
    await until('instance 0 to store the saved article', async () => (await get(0, '/articles/5')).headers['x-cache'] === 'HIT');
    // Instance 1 no longer has the old page: it gets the fresh one instance 0 stored (its own data is still old).
    await until('instance 1 to serve the saved article', async () => (await get(1, '/articles/5')).text.includes('<h1>Saved on 0</h1>'));
  });

  it('serves pages uncached when Redis is gone', async () => {
    await redis.kill();
    for (let i = 0; i < 3; i++) {
      const r = await get(0, '/articles/4').expect(200);
      expect(r.text).toContain('<h1>Article 4</h1>');
      expect(r.headers['x-cache']).toBe('MISS');
    }
  });
});

describeWith(need(redisAvailability, true), 'fixed: page cache keys on Redis (review bugs 1, 3 and 6)', () => {
  let redis: TestServer;
  let raw: ReturnType<typeof createClient>;
  const caches: FragmentCache[] = [];
  const closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    redis = await privateRedis();
    raw = createClient({ url: redis.url, socket: { reconnectStrategy: false } });
    await raw.connect();
  });
  afterAll(async () => {
    for (const c of caches) await c.close().catch(() => undefined);
    for (const close of closers) await close().catch(() => undefined);
    await raw.quit().catch(() => undefined);
    await redis.stop();
  });

  /** Keys under a prefix with their remaining lifetimes (ms; -1: no expiry). Private server: KEYS is fine. */
  async function keysWithTtl(prefix: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const k of await raw.keys(`${prefix}:*`)) out.set(k, await raw.pTTL(k));
    return out;
  }

  it('fixed: 50 URLs never stored leave no key; a stored page leaves 3 keys, all expiring', async () => {
    const prefix = `pk${process.pid}`;
    const cache = new FragmentCache(createStore(redis.url), { prefix });
    caches.push(cache);
    const errors: unknown[] = [];
    cache.on('error', (e) => errors.push(e));
    const app = express();
    app.use(cacheMiddleware({ ttl: 60, store: cache }));
    app.get('/site/ok', (req, res) => void res.send('ok'));
    app.get('/site/huge', (req, res) => void res.set('Cache-Control', 'max-age=99999999999999999999').send('huge'));
    const s = await serve(app);
    for (let i = 0; i < 50; i++) await request(s).get(`/site/no-such-page-${i}`).expect(404);
    expect(await keysWithTtl(prefix)).toEqual(new Map());

    const stored = new Promise((r) => cache.once('store', r));
    await request(s).get('/site/ok').expect(200);
    await stored;
    // The page's single-flight lock goes just after the store.
    await until('the page lock to be released', async () => [...(await keysWithTtl(prefix)).keys()].every((k) => !k.includes(':pl:')));
    const keys = await keysWithTtl(prefix);
    expect([...keys.keys()].filter((k) => k.includes(':tag:p/'))).toHaveLength(1);
    expect(keys.size).toBe(3); // header list, page, URL tag
    for (const [k, ttl] of keys) expect([k, ttl > 0 && ttl <= 120_000]).toEqual([k, true]);
    expect((await request(s).get('/site/ok')).headers['x-cache']).toBe('HIT');

    // A max-age too large for Redis' PX is clamped to a year: stored, no store error.
    const huge = new Promise((r) => cache.once('store', r));
    const r = await request(s).get('/site/huge').expect(200);
    expect(r.headers['cache-control']).toBe('max-age=31536000');
    await huge;
    expect((await request(s).get('/site/huge')).headers['x-cache']).toBe('HIT');
    expect(errors).toEqual([]);
  });

  it('fixed: cachePage({ store: "redis://…", prefix }) keeps its pages and tags under that prefix', async () => {
    const prefix = `mypages${process.pid}`;
    const app = express();
    const mw = cachePage(60, { store: redis.url, prefix, tags: ['news'] });
    closers.push(() => mw.close());
    app.get('/p', mw, (req, res) => void res.send('p'));
    const s = await serve(app);
    await request(s).get('/p').expect(200);
    await until('the page to be stored under its prefix', async () => (await keysWithTtl(prefix)).size === 4); // + the "news" tag
    expect(await raw.keys('fc:*')).toEqual([]);
    const other = new FragmentCache(createStore(redis.url)); // prefix "fc", as `fragcache clear` would use
    caches.push(other);
    await other.invalidateTag('news'); // another prefix's tags are not this one's
    await other.clear();
    expect((await request(s).get('/p')).headers['x-cache']).toBe('HIT');
  });
});
