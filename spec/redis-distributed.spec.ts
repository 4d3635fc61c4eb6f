/**
 * Distributed correctness on a real Redis: engines with their own clients (as separate processes would
 * be) and real child processes sharing one server.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { createClient } from '@redis/client';
import { createEngine, createStore, type Engine } from '../lib';
import { decodeEntry, encodeEntry, type Entry } from '../lib/entry';
import type { RedisStore } from '../lib/stores/redis';
import { describeWith, need, privateRedis, redis, uniquePrefix, until, type TestServer } from './support/servers';

/** A page of 20 fragments. */
const PAGE = '<% for i in range(20) %><% cache 300, "item", i %>[{{ i }}:{{ v }}]<% endcache %><% endfor %>';
const expectedPage = (v: string) => Array.from({ length: 20 }, (_, i) => `[${i}:${v}]`).join('');

async function ready(e: Engine): Promise<Engine> {
  await until('redis connection', () => (e.cache.store as RedisStore).client.isReady === true);
  return e;
}

describeWith(need(redis), 'Redis: several engines sharing one server', () => {
  let server: TestServer;
  const engines: Engine[] = [];
  const engine = async (prefix: string, extra: object = {}) => {
    const e = createEngine({ store: server.url, prefix, ...extra });
    engines.push(e);
    return ready(e);
  };
  beforeAll(async () => {
    server = await redis.get!();
  });
  afterAll(async () => {
    await Promise.all(engines.map((e) => e.close()));
    await server.stop();
  });

  it('an invalidation by name, variant or tag in one engine is seen by the other as soon as it resolves', async () => {
    const p = uniquePrefix('inv');
    const a = await engine(p);
    const b = await engine(p);
    const tpl = '<% cache 300, "box", id, tags=["t:" + id] %>{{ v }}<% endcache %>';
    expect(await a.renderString(tpl, { id: 1, v: 'a1' })).toBe('a1');
    expect(await a.renderString(tpl, { id: 2, v: 'a2' })).toBe('a2');
    expect(await b.renderString(tpl, { id: 1, v: 'b1' })).toBe('a1');
    await b.invalidate('box', [1]);
    expect(await a.renderString(tpl, { id: 1, v: 'c1' })).toBe('c1');
    expect(await a.renderString(tpl, { id: 2, v: 'c2' })).toBe('a2');
    await b.invalidateTag('t:2');
    expect(await a.renderString(tpl, { id: 2, v: 'd2' })).toBe('d2');
    await a.invalidate('box');
    expect(await b.renderString(tpl, { id: 1, v: 'e1' })).toBe('e1');
    expect(await b.renderString(tpl, { id: 2, v: 'e2' })).toBe('e2');
  });

  it('named stores: using= picks a Redis alias, and "fragments" is the fragments default', async () => {
    const p = uniquePrefix('alias');
    const e = createEngine({ prefix: p, stores: { fragments: server.url, side: 'memory' } });
    engines.push(e);
    await ready({ cache: e.caches.get('fragments')! } as unknown as Engine);
    await e.renderString('<% cache 60, "r" %>R<% endcache %><% cache 60, "m", using="side" %>M<% endcache %>');
    const c = createClient({ url: server.url });
    await c.connect();
    const keys = await c.keys(`${p}:*`);
    await c.quit();
    expect(keys.some((k) => k.includes('"r"') || k.includes(':r'))).toBe(true);
    expect(keys.some((k) => k.includes('"m"'))).toBe(false);
    expect(await e.caches.get('side')!.store.getMany([])).toEqual([]);
    await expect(e.renderString('<% cache 60, "x", using="nope" %>X<% endcache %>')).rejects.toThrow(/nope/);
  });

  it('two real processes share the cache and see each other’s invalidations', async () => {
    const p = uniquePrefix('proc');
    const worker = path.join(__dirname, 'support', 'redis-worker.ts');
    const run = (...args: string[]) =>
      new Promise<string>((resolve, reject) => {
        const child = spawn(process.execPath, [require.resolve('tsx/cli'), worker, server.url, p, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        child.stdout.on('data', (d) => (out += d));
        child.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`worker exited with ${code}: ${out}`))));
      });
    expect(await run('render', 'one')).toBe('one');
    expect(await run('render', 'two')).toBe('one'); // another process, served from the first one's write
    await run('invalidate');
    expect(await run('render', 'three')).toBe('three');
  }, 30_000);
});

describeWith(need(redis, true), 'Redis: round trips and stampedes (private server, counted with INFO commandstats)', () => {
  let server: TestServer;
  let admin: ReturnType<typeof createClient>;
  const engines: Engine[] = [];
  beforeAll(async () => {
    server = await privateRedis();
    admin = createClient({ url: server.url });
    await admin.connect();
  });
  afterAll(async () => {
    await Promise.all(engines.map((e) => e.close()));
    await admin.quit();
    await server.stop();
  });

  /** Calls per command since the last CONFIG RESETSTAT (INFO and CONFIG excluded). */
  async function commandCounts(): Promise<Record<string, number>> {
    const info = await admin.info('commandstats');
    const out: Record<string, number> = {};
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (!/^(info|config)/.test(m[1])) out[m[1]] = Number(m[2]);
    return out;
  }

  it('a page whose 20 fragments all hit costs one round trip (one MGET), not 20', async () => {
    const e = await ready(createEngine({ store: server.url, prefix: uniquePrefix('rt') }));
    engines.push(e);
    expect(await e.renderString(PAGE, { v: 'x' })).toBe(expectedPage('x'));
    await admin.configResetStat();
    expect(await e.renderString(PAGE, { v: 'y' })).toBe(expectedPage('x'));
    const counts = await commandCounts();
    expect(counts).toEqual({ mget: 1 });
    expect(e.stats().hits).toBe(20);
  });

  it('with the L1 (?l1=1), a page of hits costs no round trip, and another process’s invalidation arrives by pub/sub', async () => {
    const p = uniquePrefix('l1');
    const a = await ready(createEngine({ store: `${server.url}?l1=1`, prefix: p }));
    const b = await ready(createEngine({ store: `${server.url}?l1=1`, prefix: p }));
    engines.push(a, b);
    await until('the L1 subscriptions', async () => Number((await admin.pubSubNumSub('fragcache:l1'))['fragcache:l1']) >= 2);
    expect(await a.renderString(PAGE, { v: 'x' })).toBe(expectedPage('x'));
    expect(await a.renderString(PAGE, { v: 'y' })).toBe(expectedPage('x')); // fills a's L1
    await admin.configResetStat();
    expect(await a.renderString(PAGE, { v: 'z' })).toBe(expectedPage('x'));
    expect(await commandCounts()).toEqual({});
    // b invalidates: once its message arrives, a renders fresh output (the documented staleness bound).
    await b.invalidate('item', [3]);
    await until('the invalidation to reach a’s L1', async () => (await a.renderString(PAGE, { v: 'w' })).includes('[3:w]'), 1000, 5);
    const html = await a.renderString(PAGE, { v: 'q' });
    expect(html).toContain('[3:w]');
    expect(html).toContain('[4:x]');
    // a cleared cache is cleared in every L1 too.
    await b.cache.clear();
    await until('the clear to reach a’s L1', async () => (await a.renderString(PAGE, { v: 'c' })) === expectedPage('c'), 1000, 5);
  });

  it('fixed: an invalidation from a process without an L1 (or the CLI) reaches the L1 of the others', async () => {
    const p = uniquePrefix('l1mix');
    const a = await ready(createEngine({ store: `${server.url}?l1=1`, prefix: p }));
    const plain = await ready(createEngine({ store: server.url, prefix: p }));
    engines.push(a, plain);
    await until('the L1 subscription', async () => Number((await admin.pubSubNumSub('fragcache:l1'))['fragcache:l1']) >= 1);
    await a.renderString(PAGE, { v: 'x' });
    expect(await a.renderString(PAGE, { v: 'y' })).toBe(expectedPage('x'));
    await plain.invalidateTag('nothing-tagged'); // unrelated
    await plain.invalidate('item', [5]);
    await until('the invalidation to reach a’s L1', async () => (await a.renderString(PAGE, { v: 'w' })).includes('[5:w]'), 1000, 5);
  });

  it('fixed: the L1 bound (ttlMs) holds in a render loop that never yields to the event loop', async () => {
    const p = uniquePrefix('l1ttl');
    const a = await ready(createEngine({ store: createStore(server.url, { l1: { ttlMs: 300 } }), prefix: p }));
    engines.push(a);
    await until('the L1 subscription', async () => Number((await admin.pubSubNumSub('fragcache:l1'))['fragcache:l1']) >= 1);
    await a.renderString(PAGE, { v: 'x' });
    expect(await a.renderString(PAGE, { v: 'y' })).toBe(expectedPage('x'));
    // A tag version changes without a message (as if the message were lost): written behind the store's back.
    await admin.set(`${p}:tag:v/item/=n7;`, encodeEntry({ body: 'changed', created: 1, expires: null }, `${p}:tag:v/item/=n7;`));
    const start = Date.now();
    let html = '';
    while (!html.includes('[7:z]') && Date.now() - start < 3000) html = await a.renderString(PAGE, { v: 'z' }); // no yield
    expect(html).toContain('[7:z]');
    expect(Date.now() - start).toBeLessThan(1500);
  });

  it('200 concurrent cold renders over 10 engines (as 10 processes) render each fragment once', async () => {
    const p = uniquePrefix('stampede');
    let bodies = 0;
    const fleet: Engine[] = [];
    for (let i = 0; i < 10; i++) {
      // 200 renders in ONE event loop delay each other's replies past the default 100 ms budget (a fleet has
      // one event loop per process): give this test a budget that measures the lock, not the loop.
      const e = await ready(createEngine({ store: server.url, prefix: p, timeout: 2000 }));
      e.env.addGlobal('work', () => {
        bodies++;
        const until = Date.now() + 20; // a body that takes a while, so the others really wait
        while (Date.now() < until);
        return 'done';
      });
      fleet.push(e);
      engines.push(e);
    }
    const tpl = '<% cache 300, "slow" %>{{ work() }}<% endcache %>';
    const errors: Error[] = [];
    for (const e of fleet) e.on('error', (err) => errors.push(err));
    const pages = await Promise.all(Array.from({ length: 200 }, (_, i) => fleet[i % 10].renderString(tpl)));
    expect(new Set(pages)).toEqual(new Set(['done']));
    expect(errors.map(String)).toEqual([]);
    expect(bodies).toBe(1);
  });

  it('with stale=, the others serve the expired copy while one process refreshes it', async () => {
    const p = uniquePrefix('stale');
    const a = await ready(createEngine({ store: server.url, prefix: p }));
    const b = await ready(createEngine({ store: server.url, prefix: p }));
    engines.push(a, b);
    const tpl = '<% cache 1, "news", stale=60 %>{{ v }}<% endcache %>';
    expect(await a.renderString(tpl, { v: 'old' })).toBe('old');
    // Let it expire (1 s TTL), then hold the refresh lock as another process would while it renders.
    const key = (await admin.keys(`${p}:*`)).find((k) => !k.includes(':tag:'))!;
    await until('the entry to expire', async () => {
      const raw = await admin.get(key);
      return raw !== null && (decodeEntry(raw, key) as Entry).expires! < Date.now();
    }, 3000, 50);
    await admin.set(`${key}#lock`, 'someone-else', { PX: 5000 });
    const t0 = Date.now();
    expect(await b.renderString(tpl, { v: 'new' })).toBe('old');
    expect(Date.now() - t0).toBeLessThan(500); // served at once, no waiting
    expect(b.stats().stale).toBe(1);
    // Once the lock is free, the next render refreshes it.
    await admin.del(`${key}#lock`);
    expect(await b.renderString(tpl, { v: 'new' })).toBe('new');
    expect(await a.renderString(tpl, { v: 'newer' })).toBe('new');
  });

  it('earlyRefresh (XFetch): a costly fragment near expiry is refreshed before it expires; off, it is a hit', async () => {
    const p = uniquePrefix('xfetch');
    let bodies = 0;
    const make = async (earlyRefresh: number) => {
      const e = await ready(createEngine({ store: server.url, prefix: p, earlyRefresh }));
      e.env.addGlobal('slow', (v: string) => {
        bodies++;
        const end = Date.now() + 30; // cost ≈ 30 ms, recorded in the entry
        while (Date.now() < end);
        return v;
      });
      engines.push(e);
      return e;
    };
    const off = await make(0);
    const eager = await make(1e5); // β so large that a 30 ms body 1 s from expiry is always refreshed
    const tpl = '<% cache 1, "costly" %>{{ slow(v) }}<% endcache %>';
    expect(await off.renderString(tpl, { v: 'one' })).toBe('one');
    expect(await off.renderString(tpl, { v: 'two' })).toBe('one');
    expect(bodies).toBe(1);
    expect(await eager.renderString(tpl, { v: 'three' })).toBe('three'); // refreshed early, before expiry
    expect(bodies).toBe(2);
    expect(await off.renderString(tpl, { v: 'four' })).toBe('three');
    expect(() => createEngine({ earlyRefresh: -1 })).toThrow(/option "earlyRefresh"/);
  });

  it('a waiter whose lock owner crashed renders by itself after lockWait', async () => {
    const p = uniquePrefix('crash');
    const e = await ready(createEngine({ store: server.url, prefix: p, lockWait: 300 }));
    engines.push(e);
    const tpl = '<% cache 60, "orphan" %>mine<% endcache %>';
    // The key this fragment uses (explain reports it), then its lock left behind by a crashed owner.
    const scout = createEngine({ prefix: p }); // same prefix on the memory store: the same key, nothing in Redis
    const key = (await scout.explainString(tpl)).fragments[0].key;
    await scout.close();
    await admin.unlink(key);
    await admin.set(`${key}#lock`, 'crashed-owner', { PX: 10_000 });
    const t0 = Date.now();
    expect(await e.renderString(tpl)).toBe('mine');
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(1500);
  });
});
