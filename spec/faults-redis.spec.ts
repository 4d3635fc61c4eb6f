/**
 * A Redis that dies, comes back, stalls or holds garbage never takes a page down. Every test here stops,
 * pauses or corrupts a PRIVATE redis-server started for this suite (never a shared one).
 */
import { createClient } from '@redis/client';
import { createEngine, StoreError, type Engine, type FragcacheError } from '../lib';
import { FORMAT } from '../lib/entry';
import type { RedisStore } from '../lib/stores/redis';
import net from 'node:net';
import { once } from 'node:events';
import { faultProxy } from './support/proxy';
import { describeWith, freePort, need, privateRedis, redis, uniquePrefix, until, type TestServer } from './support/servers';

const PAGE = '<% for i in range(5) %><% cache 300, "row", i %>[{{ i }}:{{ v }}]<% endcache %><% endfor %>';
const page = (v: string) => Array.from({ length: 5 }, (_, i) => `[${i}:${v}]`).join('');

describeWith(need(redis, true), 'Redis faults (private server)', () => {
  let server: TestServer;
  let engine: Engine;
  let errors: FragcacheError[];
  let admin: ReturnType<typeof createClient>;

  beforeAll(async () => {
    server = await privateRedis();
  });
  afterAll(async () => {
    await server.stop();
  });
  beforeEach(async () => {
    await server.start(); // no-op when running; restarts it after a kill
    await until('the server', async () => {
      const c = createClient({ url: server.url, socket: { reconnectStrategy: false } });
      c.on('error', () => undefined);
      try {
        await c.connect();
        await c.quit();
        return true;
      } catch {
        return false;
      }
    });
    admin = createClient({ url: server.url, socket: { reconnectStrategy: false } });
    admin.on('error', () => undefined);
    await admin.connect();
    engine = createEngine({ store: server.url, prefix: uniquePrefix('fault'), breaker: { retryAfter: 500 } });
    errors = [];
    engine.on('error', (e) => errors.push(e));
    await until('redis connection', () => (engine.cache.store as RedisStore).client.isReady === true);
  });
  afterEach(async () => {
    await engine.close();
    if (admin.isOpen) await admin.quit().catch(() => undefined);
  });

  /** Renders and returns the time it took. */
  async function timed(v: string): Promise<number> {
    const t0 = performance.now();
    expect(await engine.renderString(PAGE, { v })).toBe(page(v));
    return performance.now() - t0;
  }

  it('Redis killed mid-test: pages keep rendering at once, an error is reported, and caching resumes after a restart', async () => {
    await timed('a');
    expect(await engine.renderString(PAGE, { v: 'cached?' })).toBe(page('a'));
    await admin.quit();
    await server.kill();
    for (let i = 0; i < 20; i++) expect(await timed(`down${i}`)).toBeLessThan(400);
    expect(errors.length).toBeGreaterThanOrEqual(1);
    expect(errors[0]).toBeInstanceOf(StoreError);
    // A failed invalidation rejects: the caller must know the old output may still be served.
    await expect(engine.invalidate('row')).rejects.toBeInstanceOf(StoreError);
    await server.start();
    // Recovers on its own (no restart of the engine), within the documented second of Redis' return (reconnect
    // backoff ≤ 0.55 s, then the breaker probes at once): a render stores, the next one hits.
    const took = await until('caching to resume', async () => {
      const before = engine.stats().hits;
      await engine.renderString(PAGE, { v: 'back' });
      await engine.renderString(PAGE, { v: 'back2' });
      return engine.stats().hits >= before + 5;
    }, 5000, 20);
    expect(took).toBeLessThanOrEqual(1000);
    // The data was lost with the server (no persistence): the page cached after the restart is served.
    expect(await engine.renderString(PAGE, { v: 'later' })).toBe(page('back'));
  }, 20_000);

  it('Redis killed behind a link that stays open (no reset reaches the client): every render is cut short by the budget', async () => {
    // Without the time budget these renders would wait for replies that never come.
    const proxy = await faultProxy(server.port);
    const e = createEngine({ store: `redis://127.0.0.1:${proxy.port}`, prefix: uniquePrefix('silent') });
    e.on('error', () => undefined);
    try {
      await until('redis connection', () => (e.cache.store as RedisStore).client.isReady === true);
      expect(await e.renderString(PAGE, { v: 'a' })).toBe(page('a'));
      proxy.stall(); // nothing passes any more, and no FIN or RST either
      await admin.quit();
      await server.kill();
      for (let i = 0; i < 10; i++) {
        const t0 = performance.now();
        expect(await e.renderString(PAGE, { v: `s${i}` })).toBe(page(`s${i}`));
        expect(performance.now() - t0).toBeLessThan(1000);
      }
    } finally {
      await e.close();
      await proxy.close();
    }
  }, 30_000);

  it('CLIENT PAUSE: renders stay within the budget and are correct', async () => {
    await timed('p');
    await admin.sendCommand(['CLIENT', 'PAUSE', '1500', 'ALL']);
    try {
      for (let i = 0; i < 3; i++) expect(await timed(`paused${i}`)).toBeLessThan(600);
      expect(errors.some((e) => /took more than 100 ms|circuit open|probed/.test(e.message))).toBe(true);
    } finally {
      await admin.sendCommand(['CLIENT', 'UNPAUSE']).catch(() => undefined);
    }
  });

  it('DEBUG SLEEP: renders stay within the budget and are correct', async () => {
    await timed('s');
    const sleeper = admin.sendCommand(['DEBUG', 'SLEEP', '1']).catch(() => undefined);
    for (let i = 0; i < 3; i++) expect(await timed(`asleep${i}`)).toBeLessThan(600);
    await sleeper;
    expect(errors.length).toBeGreaterThanOrEqual(1);
  });

  it('garbage written into a key is a miss: the page renders, and the entry is rewritten', async () => {
    await timed('g');
    const key = (await engine.explainString(PAGE, { v: 'g' })).fragments[0].key;
    // Read by another engine (another process): this one may still reuse what it produced a moment ago.
    const other = createEngine({ store: server.url, prefix: engine.cache.prefix });
    try {
      await until('redis connection', () => (other.cache.store as RedisStore).client.isReady === true);
      await admin.set(key, 'garbage\u0000{not an entry');
      expect(await other.renderString(PAGE, { v: 'h' })).toBe(`[0:h]${page('g').slice(5)}`);
      expect((await admin.get(key))!.startsWith(FORMAT)).toBe(true);
      // An entry of another format version is a miss too (fc1: before entries carried their key's digest).
      await admin.set(key, 'fc1{"created":1,"expires":null}\nold');
      const third = createEngine({ store: server.url, prefix: engine.cache.prefix });
      await until('redis connection', () => (third.cache.store as RedisStore).client.isReady === true);
      expect(await third.renderString(PAGE, { v: 'i' })).toBe(`[0:i]${page('g').slice(5)}`);
      await third.close();
    } finally {
      await other.close();
    }
  });

  it('a failed render stores nothing', async () => {
    engine.env.addGlobal('boom', () => {
      throw new Error('boom');
    });
    await expect(engine.renderString('<% cache 60, "bad" %>x{{ boom() }}<% endcache %>')).rejects.toThrow(/boom/);
    const keys = await admin.keys(`${engine.cache.prefix}:${engine.cache.version}:*`);
    expect(keys).toEqual([]);
  });
});

describeWith(need(redis), 'Redis never reachable', () => {
  it('an engine on a port where nothing listens renders every page, fast, and reports once per interval', async () => {
    const port = await freePort();
    const engine = createEngine({ store: `redis://127.0.0.1:${port}`, prefix: uniquePrefix('none') });
    const errors: FragcacheError[] = [];
    engine.on('error', (e) => errors.push(e));
    try {
      const t0 = performance.now();
      for (let i = 0; i < 50; i++) expect(await engine.renderString(PAGE, { v: String(i) })).toBe(page(String(i)));
      expect(performance.now() - t0).toBeLessThan(2000);
      expect(errors.length).toBeGreaterThanOrEqual(1);
      expect(errors.length).toBeLessThanOrEqual(3); // rate-limited: not one per render
    } finally {
      await engine.close();
    }
  });

  it('an engine on a port that accepts connections but never answers renders every page within the budget', async () => {
    // A hung server or a black-holing middlebox: TCP connects, no reply ever comes (without the time budget every
    // render would wait forever).
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((s) => (sockets.add(s), s.on('error', () => undefined)));
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const engine = createEngine({ store: `redis://127.0.0.1:${(silent.address() as net.AddressInfo).port}`, prefix: uniquePrefix('mute') });
    const errors: FragcacheError[] = [];
    engine.on('error', (e) => errors.push(e));
    try {
      const t0 = performance.now();
      for (let i = 0; i < 20; i++) expect(await engine.renderString(PAGE, { v: String(i) })).toBe(page(String(i)));
      expect(performance.now() - t0).toBeLessThan(3000);
      expect(errors.some((e) => /took more than 100 ms/.test(e.message))).toBe(true);
    } finally {
      const t0 = Date.now();
      await engine.close();
      expect(Date.now() - t0).toBeLessThan(1000);
      for (const s of sockets) s.destroy();
      silent.close();
    }
  }, 20_000);

  it('a bad Redis URL is an OptionError naming the option', () => {
    expect(() => createEngine({ store: 'redis://host:notaport' })).toThrow(/option "store"/);
  });
});
