/**
 * Issue 9, "bounded whatever the traffic", on a private redis-server: traffic leaves no key without a TTL,
 * and a cold page is produced once for the whole fleet.
 */
import { once } from 'node:events';
import http from 'node:http';
import { createClient } from '@redis/client';
import express from 'express';
import request from 'supertest';
import { createEngine, type Engine } from '../lib';
import { cachePage } from '../lib/express';
import { describeWith, need, privateRedis, redis as redisAvailability, type TestServer } from './support/servers';

describeWith(need(redisAvailability, true), 'page cache bounds on Redis', () => {
  let redis: TestServer;
  let raw: ReturnType<typeof createClient>;
  const servers: http.Server[] = [];
  const engines: Engine[] = [];

  beforeAll(async () => {
    redis = await privateRedis();
    raw = createClient({ url: redis.url, socket: { reconnectStrategy: false } });
    await raw.connect();
  });
  afterAll(async () => {
    for (const s of servers) await new Promise((r) => s.close(r));
    for (const e of engines) await e.close().catch(() => undefined);
    await raw.quit().catch(() => undefined);
    await redis.stop();
  });

  async function serve(app: express.Express): Promise<http.Server> {
    const s = app.listen(0, '127.0.0.1');
    servers.push(s);
    await once(s, 'listening');
    return s;
  }

  /** Every key under `prefix` whose PTTL is -1 (no expiry), found with SCAN. */
  async function permanentKeys(prefix: string): Promise<{ total: number; permanent: string[] }> {
    let total = 0;
    const permanent: string[] = [];
    for await (const batch of raw.scanIterator({ MATCH: `${prefix}:*`, COUNT: 500 })) {
      for (const k of Array.isArray(batch) ? batch : [batch]) {
        total++;
        if ((await raw.pTTL(k)) === -1) permanent.push(k);
      }
    }
    return { total, permanent };
  }

  it('2,000 requests that 404, 500 renders with distinct vary values and invalidations of names never stored leave 0 keys without a TTL', async () => {
    const prefix = `pb${process.pid}`;
    const engine = createEngine({ store: redis.url, prefix });
    engines.push(engine);
    const app = express();
    engine.express(app);
    app.get('/articles/:id', cachePage(2, { tags: (req) => [`article:${req.params.id}`] }), (req, res) => void res.status(404).send('no such article'));
    const s = await serve(app);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
    for (let i = 0; i < 2000; i += 20) {
      await Promise.all(Array.from({ length: 20 }, (_, j) => request(s).get(`/articles/${Math.random().toString(36).slice(2)}${i + j}`).agent(agent).expect(404)));
    }
    agent.destroy();
    for (let i = 0; i < 500; i += 25) {
      await Promise.all(Array.from({ length: 25 }, (_, j) => engine.renderString('<% cache 2, "v", x %>{{ x }}<% endcache %>', { x: i + j })));
    }
    await engine.settled();
    await engine.invalidate('never-stored');
    await engine.invalidate('never-stored', ['some', 'variant']);
    await engine.invalidateTag('never-stored-tag');
    const { total, permanent } = await permanentKeys(prefix);
    expect(total).toBeGreaterThan(2000); // the tag records are there (2 s fragments may have gone already)…
    expect(permanent).toEqual([]); // …and every one of them expires
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
});
