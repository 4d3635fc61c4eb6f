/**
 * Late page tags (`res.locals.cacheTags`) on a shared store are judged by versions that carry the store's own
 * time, never by host clocks: an invalidation made by another process whose clock is a minute behind, while
 * the page is being produced, still keeps the page out of the cache. So are the URL records `invalidatePage`
 * writes, when the page's data was loaded before the cache read them (the fleet version: fleet.spec.ts).
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import path from 'node:path';
import express from 'express';
import request from 'supertest';
import { createEngine, createStore, FragmentCache, type Engine } from '../lib';
import { cachePage, invalidatePage, pageCache } from '../lib/express';
import { asyncStore, serve } from './support/http';
import { views } from './support/views';
import { describeWith, need, redis as redisAvailability, uniquePrefix, until, type TestServer } from './support/servers';

const DIST = path.resolve(__dirname, '..', 'dist', 'index.js');

/** Invalidates `tag` from a separate process whose clock reads `skewMs` off (Date.now shifted). */
function invalidateFromSkewedHost(url: string, prefix: string, tag: string, skewMs: number): Promise<void> {
  const script = `
    const realNow = Date.now;
    Date.now = () => realNow() + ${skewMs};
    const { createStore, FragmentCache } = require(${JSON.stringify(DIST)});
    const cache = new FragmentCache(createStore(${JSON.stringify(url)}), { prefix: ${JSON.stringify(prefix)}, guard: { timeout: 2000 } });
    cache.invalidateTag(${JSON.stringify(tag)}).then(() => cache.close()).then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
  `;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', script], { timeout: 20_000 }, (err, _out, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve()));
  });
}

describeWith(need(redisAvailability), 'late page tags across hosts with skewed clocks', () => {
  let redis: TestServer;
  let server: http.Server;
  let close: () => Promise<void>;
  const prefix = uniquePrefix('pf');
  let runs = 0;

  beforeAll(async () => {
    redis = await redisAvailability.get!();
    const app = express();
    const cache = new FragmentCache(createStore(redis.url), { prefix, guard: { timeout: 2000 } });
    const mw = cachePage(60, { store: cache });
    close = () => cache.close();
    app.get('/p', mw, async (req, res) => {
      runs++;
      res.locals.cacheTags = ['article:1'];
      // The edit lands, from another host, while this (now stale) page is being produced.
      if (req.query.edit) await invalidateFromSkewedHost(redis.url, prefix, 'article:1', Number(req.query.edit));
      res.send(`page ${runs}`);
    });
    server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
  }, 30_000);

  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    await close?.();
    await redis?.stop();
  });

  it('without an edit the page is stored and served (the control)', async () => {
    expect((await request(server).get('/p?control=1')).headers['x-cache']).toBe('MISS');
    expect((await request(server).get('/p?control=1')).headers['x-cache']).toBe('HIT');
  });

  it.each([
    ['a minute behind', -60_000],
    ['a minute ahead', 60_000],
  ])('an invalidation from a host whose clock is %s keeps the page in flight out', async (_what, skew) => {
    const path = `/p?edit=${skew}`;
    const first = await request(server).get(path);
    expect(first.status).toBe(200);
    // Late tags are checked after the response: it cannot say `stored` (it was not).
    expect(first.headers['cache-status']).toBe('fragcache; fwd=uri-miss');
    const second = await request(server).get(path);
    expect(second.headers['x-cache']).toBe('MISS'); // not the page built from data older than the edit
  }, 40_000);
});

describe('pages whose start is not known in the store\'s clock', () => {
  it.each([
    ['the default 1000 ms', undefined, 'MISS'],
    ['60000 ms', 60_000, 'HIT'],
  ])('follow the engine\'s unknownSinceWindow (%s): a page of a just-invalidated tag lives at most that long', async (_what, window, second) => {
    // A store that never tells its time: the offset stays unknown, so every invalidated tag caps a page's life
    // at the invalidation plus the window (and a page that would live under a second is not stored at all).
    const store = { ...asyncStore(), time: () => new Promise<number>(() => undefined) };
    const engine = createEngine({ views: views({ 'p.njk': 'page {{ v }}' }), store, unknownSinceWindow: window });
    const app = express();
    engine.express(app);
    let v = 0;
    app.get('/p', cachePage(300, { tags: ['news'] }), (req, res) => res.render('p', { v: ++v }));
    const s = await serve(app);
    await engine.invalidateTag('news');
    // Stored or fenced, the page says which once it is done (the store runs after the response).
    const outcome = new Promise((r) => (engine.once('store', () => r('HIT')), engine.once('fenced', () => r('MISS'))));
    expect((await request(s).get('/p')).text).toBe('page 1');
    expect(await outcome).toBe(second);
    const r = await request(s).get('/p');
    expect([r.headers['x-cache'], r.text]).toEqual([second, second === 'HIT' ? 'page 1' : 'page 2']);
    await engine.close();
  });
});

/**
 * Data a page shows may be loaded before the page cache reads the page's URL record: by a session, an auth layer or
 * any middleware mounted before `pages.fetch` (or before `cachePage`). An `invalidatePage` in between leaves the
 * request holding the new version with the old data; the version's time (the store's) keeps that page out.
 */
function earlyLoadingApp(engine: Engine) {
  const data = { v: 1 };
  const app = express();
  engine.express(app);
  const pages = pageCache({ ttl: 60 });
  app.use(pages.update);
  app.use(async (req, res, next) => {
    res.locals.v = data.v; // what the page shows is loaded here, before the cache reads the URL's record…
    if (req.headers['x-edit']) {
      data.v++; // …and the data changes and the page is invalidated right after (another request, another process)
      await invalidatePage('/p', engine);
    }
    next();
  });
  app.use(pages.fetch);
  app.get('/p', (req, res) => void res.send(`v${res.locals.v}`));
  return app;
}

async function checkEarlyLoading(engine: Engine): Promise<void> {
  const server = http.createServer(earlyLoadingApp(engine)).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const get = (edit = false) => {
    const r = request(server).get('/p').set('Host', 'site.example');
    return (edit ? r.set('X-Edit', '1') : r).then((res) => [res.text, res.headers['x-cache']]);
  };
  try {
    const stored = new Promise((resolve) => engine.once('store', resolve));
    expect(await get()).toEqual(['v1', 'MISS']);
    await stored;
    expect(await get()).toEqual(['v1', 'HIT']);
    // What becomes of the next page produced: stored, or fenced.
    const outcome = new Promise((resolve) => {
      const on = (what: string) => (e: unknown) => {
        engine.off('store', onStore).off('fenced', onFenced);
        resolve([what, e]);
      };
      const onStore = on('stored');
      const onFenced = on('fenced');
      engine.on('store', onStore).on('fenced', onFenced);
    });
    expect(await get(true)).toEqual(['v1', 'MISS']); // shown (its data was loaded before the edit)…
    expect(await outcome).toEqual(['fenced', { name: '/p', key: expect.any(String) }]); // …not stored
    expect(engine.stats().fenced).toBe(1);
    // Every later request shows v2 (was: v1, a HIT, until the next invalidation or the TTL), soon from the cache.
    // (A request that starts within the clocks' uncertainty after the invalidation is not stored either.)
    const seen: string[] = [];
    await until('the new page to be stored', async () => {
      const [text, cache] = await get();
      seen.push(text);
      return cache === 'HIT';
    });
    expect([...new Set(seen)]).toEqual(['v2']);
  } finally {
    await new Promise((r) => server.close(r));
  }
}

describe('invalidatePage while middleware before the page cache loads the data (memory store)', () => {
  it('the page whose data predates the invalidation is shown, not stored', async () => {
    const engine = createEngine({});
    try {
      await checkEarlyLoading(engine);
    } finally {
      await engine.close();
    }
  });
});

describeWith(need(redisAvailability), 'invalidatePage while middleware before the page cache loads the data (Redis)', () => {
  let redis: TestServer;
  beforeAll(async () => {
    redis = await redisAvailability.get!();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('the page whose data predates the invalidation is shown, not stored', async () => {
    const engine = createEngine({ store: redis.url, prefix: uniquePrefix('pe'), timeout: 2000 });
    try {
      await checkEarlyLoading(engine);
    } finally {
      await engine.close();
    }
  });
});
