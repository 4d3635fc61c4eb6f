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
import { createStore, FragmentCache } from '../lib';
import { cachePage } from '../lib/express';
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
