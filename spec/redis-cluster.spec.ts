/**
 * Redis Cluster, as `@keyv/redis` allows it (`createStore('redis://', { connect: { rootNodes } })`), on a real
 * private 3-master cluster: fragments cache, invalidation works across slots, clear() keeps foreign keys.
 */
import { createClient, createCluster } from '@redis/client';
import { createEngine, createStore } from '../lib';
import type { RedisStore } from '../lib/stores/redis';
import { describeWith, need, privateRedisCluster, redis, uniquePrefix, until } from './support/servers';

describeWith(need(redis, true), 'Redis Cluster (private 3-master cluster)', () => {
  let cluster: Awaited<ReturnType<typeof privateRedisCluster>>;
  beforeAll(async () => {
    cluster = await privateRedisCluster();
  }, 30_000);
  afterAll(async () => {
    await cluster?.stop();
  });
  const store = () => createStore('redis://', { connect: { rootNodes: [{ url: cluster.nodes[0] }] } });

  it('fixed: caches (the first connection no longer waits for a "ready" a cluster client never emits), and invalidates across slots', async () => {
    const p = uniquePrefix('cl');
    // A generous budget: this is about correctness across slots; a loaded machine must not add timeouts of its own.
    const a = createEngine({ views: [], store: store(), prefix: p, timeout: 1000 });
    const b = createEngine({ views: [], store: store(), prefix: p, timeout: 1000 });
    const errors: Error[] = [];
    a.on('error', (e) => errors.push(e));
    b.on('error', (e) => errors.push(e));
    const page = '<% for i in range(10) %><% cache 60 card i tags=["c:" ~ i] %>[{{ i }}:{{ v }}]<% endcache %><% endfor %>';
    const hits = async (e: typeof a, v: string) => (await e.explainString(page, { v })).fragments.filter((f) => f.status === 'hit').length;
    try {
      expect(await hits(a, 'x')).toBe(0);
      expect(await hits(a, 'y')).toBe(10);
      expect(await hits(b, 'z')).toBe(10); // another client (process) on the cluster
      await b.invalidateTag('c:3');
      const html = await a.renderString(page, { v: 'w' });
      expect(html).toContain('[3:w]');
      expect(html).toContain('[4:x]');
      // clear() scans every master and removes only this prefix's keys.
      const admin = createCluster({ rootNodes: [{ url: cluster.nodes[0] }] });
      await admin.connect();
      await admin.set(`${p}-foreign`, 'keep');
      await a.cache.clear();
      expect(await hits(b, 'v')).toBe(0);
      expect(await admin.get(`${p}-foreign`)).toBe('keep');
      await admin.del(`${p}-foreign`);
      await admin.close();
      expect(errors).toEqual([]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('keeps rendering, within the budget, while a master is paused (3 s pause; a render that waited it out would take ≥ 3 s)', async () => {
    const p = uniquePrefix('cldown');
    const e = createEngine({ views: [], store: store(), prefix: p });
    e.on('error', () => undefined);
    const page = '<% for i in range(5) %><% cache 60 card i %>[{{ i }}:{{ v }}]<% endcache %><% endfor %>';
    await e.renderString(page, { v: 'x' });
    const node = createClient({ url: cluster.nodes[2] });
    await node.connect();
    await node.sendCommand(['CLIENT', 'PAUSE', '3000', 'ALL']);
    const started = Date.now();
    const html = await e.renderString(page, { v: 'y' });
    expect(html).toMatch(/^(\[\d:[xy]\]){5}$/);
    // The budget (100 ms per store call, a few calls per render) vs the pause (3 s): 1.5 s keeps both margins wide.
    expect(Date.now() - started).toBeLessThan(1500);
    await node.sendCommand(['CLIENT', 'UNPAUSE']).catch(() => undefined);
    await node.quit();
    await e.close();
  }, 20_000);

  it('a reset (a reply that could not be trusted) replaces the cluster client, and caching carries on', async () => {
    const p = uniquePrefix('clreset');
    const e = createEngine({ views: [], store: store(), prefix: p });
    const errors: Error[] = [];
    e.on('error', (err) => errors.push(err));
    const page = '<% for i in range(5) %><% cache 60 card i %>[{{ i }}:{{ v }}]<% endcache %><% endfor %>';
    try {
      await e.renderString(page, { v: 'x' });
      const s = e.cache.store as RedisStore;
      const before = s.client;
      s.reset(new Error('test'));
      expect(s.resets).toBe(1);
      expect(s.client).not.toBe(before);
      await until('caching to resume', async () => (await e.renderString(page, { v: 'y' })) === '[0:x][1:x][2:x][3:x][4:x]', 5000, 20);
    } finally {
      await e.close();
    }
  });
});
