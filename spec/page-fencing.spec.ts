/**
 * Late page tags (`res.locals.cacheTags`) on a shared store are judged by versions that carry the store's own
 * time, never by host clocks: an invalidation made by another process whose clock is a minute behind, while
 * the page is being produced, still keeps the page out of the cache.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import type http from 'node:http';
import path from 'node:path';
import express from 'express';
import request from 'supertest';
import { createEngine, createStore, FragmentCache } from '../lib';
import { cachePage } from '../lib/express';
import { asyncStore, serve } from './support/http';
import { views } from './support/views';
import { describeWith, need, redis as redisAvailability, uniquePrefix, type TestServer } from './support/servers';

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
