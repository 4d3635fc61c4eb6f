/**
 * Issue 9, "bounded whatever the traffic", on a private redis-server: traffic leaves no key without a TTL,
 * and a cold page is produced once for the whole fleet.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { createClient } from '@redis/client';
import express from 'express';
import request from 'supertest';
import { createEngine, type Engine } from '../lib';
import { cachePage } from '../lib/express';
import { startWorkers } from './support/leak-load';
import { serve } from './support/http';
import { describeWith, need, privateRedis, redis as redisAvailability, until, type TestServer } from './support/servers';

describeWith(need(redisAvailability, true), 'page cache bounds on Redis', () => {
  let redis: TestServer;
  let raw: ReturnType<typeof createClient>;
  const engines: Engine[] = [];

  beforeAll(async () => {
    redis = await privateRedis();
    raw = createClient({ url: redis.url, socket: { reconnectStrategy: false } });
    await raw.connect();
  });
  afterAll(async () => {
    for (const e of engines) await e.close().catch(() => undefined);
    await raw.quit().catch(() => undefined);
    await redis.stop();
  });

  /** Every key under `prefix` whose PTTL is -1 (no expiry), found with SCAN. */
  async function permanentKeys(prefix: string): Promise<{ total: number; permanent: string[] }> {
    let total = 0;
    const permanent: string[] = [];
    for await (const batch of raw.scanIterator({ MATCH: `${prefix}:*`, COUNT: 500 })) {
      const keys = Array.isArray(batch) ? batch : [batch];
      const ttls = await Promise.all(keys.map((k) => raw.pTTL(k))); // one pipeline per batch
      total += keys.length;
      keys.forEach((k, i) => ttls[i] === -1 && permanent.push(k));
    }
    return { total, permanent };
  }

  it('2,000 requests that 404, 500 renders with distinct vary values and invalidations of names never stored leave 0 keys without a TTL', async () => {
    const prefix = `pb${process.pid}`;
    // A generous time budget: on a loaded machine a blown budget serves uncached and creates no record.
    const engine = createEngine({ store: redis.url, prefix, timeout: 5000 });
    engines.push(engine);
    const app = express();
    engine.express(app);
    app.get('/articles/:id', cachePage(60, { tags: (req) => [`article:${req.params.id}`] }), (req, res) => void res.status(404).send('no such article'));
    const s = await serve(app);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 40 });
    for (let i = 0; i < 2000; i += 40) {
      await Promise.all(Array.from({ length: 40 }, (_, j) => request(s).get(`/articles/${Math.random().toString(36).slice(2)}${i + j}`).agent(agent).expect(404)));
    }
    agent.destroy();
    for (let i = 0; i < 500; i += 25) {
      // With an uncached fragment inside (ttl 0): its own tags are read for the outer one, one variant per value.
      await Promise.all(Array.from({ length: 25 }, (_, j) => engine.renderString('<% cache 2, "v", x %>{{ x }}<% cache 0, "u", x %>.<% endcache %><% endcache %>', { x: i + j })));
    }
    await engine.settled();
    await engine.invalidate('never-stored');
    await engine.invalidate('never-stored', ['some', 'variant']);
    await engine.invalidateTag('never-stored-tag');
    const { total, permanent: found } = await permanentKeys(prefix);
    // One fixed record per prefix may be permanent (the time of the latest invalidation, if the cache keeps
    // one): it does not grow with traffic.
    const permanent = found.filter((k) => k !== `${prefix}:tag:last`);
    expect(total).toBeGreaterThanOrEqual(2000); // the pages' tag records (120 s) are there (2 s fragments may be gone)…
    expect(permanent).toEqual([]); // …and every one of them expires
  }, 120_000);

  it('`fragcache invalidate` of a name (or tag) never stored leaves no permanent key', async () => {
    const bin = path.join(__dirname, '..', 'dist', 'cli', 'index.js');
    if (!existsSync(bin)) throw new Error(`${bin} is missing: run "npm run build" first (npm test does)`);
    const prefix = `pc${process.pid}`;
    const run = (args: string[]) => spawnSync(process.execPath, [bin, ...args, '--store', redis.url, '--prefix', prefix], { encoding: 'utf8', timeout: 30_000 });
    // A name that matches no stored entry is refused (exit 1) and writes nothing; a tag is always invalidated.
    for (const args of [['invalidate', 'never-stored'], ['invalidate', 'never-stored', '7']]) {
      const r = run(args);
      expect([r.status, r.stderr]).toEqual([1, expect.stringMatching(/no stored entry of fragment "never-stored"/)]);
    }
    expect(run(['invalidate', '--tag', 'never-tag']).status).toBe(0);
    const { total, permanent } = await permanentKeys(prefix);
    expect(total).toBeGreaterThanOrEqual(1); // the tag's record (plus, maybe, the prefix's fixed one)
    expect(permanent.filter((k) => k !== `${prefix}:tag:last`)).toEqual([]);
  }, 60_000);

  it('a tag record created for a short-lived page is extended when a longer-lived fragment carrying it is stored', async () => {
    const prefix = `px${process.pid}`;
    const engine = createEngine({ store: redis.url, prefix });
    engines.push(engine);
    const app = express();
    engine.express(app);
    app.get('/short', cachePage(2, { tags: ['news'] }), (req, res) => void res.send('short'));
    const s = await serve(app);
    await request(s).get('/short').expect(200);
    const [key] = await raw.keys(`${prefix}:tag:t/*`);
    expect(await raw.pTTL(key!)).toBeLessThanOrEqual(4000); // created for the page: twice its TTL
    await engine.renderString('<% cache 600, "long", tags=["news"] %>news<% endcache %>', {});
    await engine.settled();
    expect(await raw.pTTL(key!)).toBeGreaterThan(590_000);
    // Never shortened by a shorter entry, never given a TTL when it has none.
    await engine.renderString('<% cache 5, "brief", tags=["news"] %>news<% endcache %>', {});
    await engine.settled();
    expect(await raw.pTTL(key!)).toBeGreaterThan(580_000);
  });

  it('50 concurrent cold requests on two app instances sharing Redis run the route once', async () => {
    const prefix = `ps${process.pid}`;
    let runs = 0;
    const instances: http.Server[] = [];
    for (let i = 0; i < 2; i++) {
      const engine = createEngine({ store: redis.url, prefix });
      engines.push(engine);
      const app = express();
      engine.express(app);
      app.get('/cold', cachePage(60), async (req, res) => {
        runs++;
        await new Promise((r) => setTimeout(r, 200));
        res.send('cold page');
      });
      instances.push(await serve(app));
    }
    const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
    // Both instances answer for one site (behind one load balancer).
    const all = await Promise.all(Array.from({ length: 50 }, (_, i) => request(instances[i % 2]!).get('/cold').set('Host', 'site.example').agent(agent)));
    agent.destroy();
    expect(all.map((r) => r.text)).toEqual(Array(50).fill('cold page'));
    expect(runs).toBe(1);
  });

  it('a request waiting for another instance’s lock renders as soon as that instance lets go without storing (was: the whole waitMs)', async () => {
    const prefix = `pw${process.pid}`;
    let runs = 0;
    const instances: http.Server[] = [];
    let stored!: Promise<unknown>;
    for (let i = 0; i < 2; i++) {
      const engine = createEngine({ store: redis.url, prefix });
      engines.push(engine);
      if (i === 1) stored = new Promise((resolve) => engine.once('store', resolve));
      const app = express();
      engine.express(app);
      app.get('/p', cachePage(60), async (req, res) => {
        const run = ++runs;
        await new Promise((r) => setTimeout(r, 200));
        // The first response is not stored (as a page fenced by an invalidation, or refused): the lock goes, no page.
        if (run === 1) res.set('Cache-Control', 'no-store');
        res.send(`run ${run}`);
      });
      instances.push(await serve(app));
    }
    const get = (i: number) => request(instances[i]!).get('/p').set('Host', 'site.example');
    const owner = get(0).then((r) => r.text);
    await until('the first instance to hold the page lock', () => runs === 1);
    const t0 = Date.now();
    const waiter = await get(1);
    const waited = Date.now() - t0;
    expect(await owner).toBe('run 1');
    // It renders the page itself once the lock is gone (~200 ms), instead of polling for 5 s (waitMs).
    expect({ text: waiter.text, cache: waiter.headers['x-cache'], fast: waited < 2500, waited }).toEqual({ text: 'run 2', cache: 'MISS', fast: true, waited });
    // Its page is stored (after the response) and served to both instances.
    await stored;
    expect([(await get(0)).text, (await get(1)).text]).toEqual(['run 2', 'run 2']);
  });

  it('4 separate processes, 25 concurrent cold requests each, started together: the route runs once in all', async () => {
    const fleet = await startWorkers(redis.url, `pf${process.pid}`, 0, 4, 'page-fleet-worker.ts');
    try {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 100 });
      const all = await Promise.all(fleet.ports.flatMap((port) => Array.from({ length: 25 }, () => request(`http://127.0.0.1:${port}`).get('/cold').set('Host', 'site.example').agent(agent))));
      expect(all.map((r) => r.text)).toEqual(Array(100).fill('cold page'));
      const runs = await Promise.all(fleet.ports.map(async (port) => (await request(`http://127.0.0.1:${port}`).get('/runs').agent(agent)).body.runs as number));
      agent.destroy();
      expect(runs.reduce((a, b) => a + b, 0)).toBe(1);
    } finally {
      await fleet.stop();
    }
  }, 90_000);
});
