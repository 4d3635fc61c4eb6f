/**
 * Fencing by the time the data was loaded (issue 10 item 6), in one process: a render whose data predates an
 * invalidation shows its output but does not store it; without a known `since`, its entry lives at most the
 * window. The fleet version (separate processes on Redis) is in fleet.spec.ts.
 */
import { once } from 'node:events';
import http from 'node:http';
import express from 'express';
import request from 'supertest';
import { createEngine, MemoryStore, OptionError, type Entry, type Store, type StoreWrite } from '../lib';
import { createdVersion, fence, invalidationVersion, StoreClock, versionTime } from '../lib/fencing';
import { describeWith, need, privateRedis, redis, type TestServer } from './support/servers';
import { views } from './support/views';
import { createClient } from '@redis/client';

const BOX = '<% cache 300, "box", tags=["d"] %>{{ v }}<% endcache %>';
const PAGE = '<% cache 300, "page" %>[' + BOX + ']<% endcache %>';

/** A shared-looking store (no same-tick access, so renders take the multi-pass path) whose clock is skewed. */
class SkewedStore implements Store {
  readonly kind = 'skewed';
  readonly shared = true;
  constructor(
    private readonly inner: MemoryStore,
    /** How far the store's clock is from this (simulated) host's. */
    private readonly skew: number,
  ) {}
  async getMany(keys: readonly string[]) {
    return keys.map((k) => this.inner.sync.get(k));
  }
  async setMany(writes: readonly StoreWrite[]) {
    for (const w of writes) this.inner.sync.set(w.key, w.entry, w.ttlMs);
  }
  async add(key: string, entry: Entry, ttlMs: number | null) {
    return this.inner.sync.add(key, entry, ttlMs);
  }
  async deleteMany(keys: readonly string[]) {
    for (const k of keys) this.inner.sync.delete(k);
  }
  async clear() {
    return undefined;
  }
  async time() {
    return Date.now() + this.skew;
  }
  async close() {}
}

describe('fencing: tag versions carry their invalidation time', () => {
  it('reads back the time and kind of a version, and 0 for versions of the old format', () => {
    expect(versionTime(invalidationVersion(1_700_000_000_123))).toEqual({ at: 1_700_000_000_123, created: false });
    expect(versionTime(createdVersion(42))).toEqual({ at: 42, created: true });
    expect(createdVersion(0)).toMatch(/^[\w-]{12}$/); // no invalidation known: a plain version, as before
    expect(versionTime('abcDEF_-123456789012')).toEqual({ at: 0, created: false });
    expect(invalidationVersion(1)).not.toBe(invalidationVersion(1));
  });

  it('decides: refused when since is older than an invalidation, capped when since is unknown or the record was recreated', () => {
    const clock = new StoreClock(undefined);
    const t = 1_000_000;
    const inv = ['k', invalidationVersion(t)];
    expect(fence(inv, t - 1, t + 5, clock, 1000)).toEqual({ store: false });
    expect(fence(inv, t, t + 5, clock, 1000)).toEqual({ store: false }); // same ms: may have come after the load
    expect(fence(inv, t + 1, t + 5, clock, 1000)).toEqual({ store: true });
    // Unknown since: the render's start stands in, and a recent invalidation caps the expiry.
    expect(fence(inv, undefined, t + 5, clock, 1000)).toEqual({ store: true, expiresBy: t + 1000 });
    expect(fence(inv, undefined, t + 1001, clock, 1000)).toEqual({ store: true });
    expect(fence(inv, undefined, t + 1000, clock, 1000)).toEqual({ store: true, expiresBy: t + 1000 });
    // A record recreated after an invalidation it may hide: capped, not refused.
    expect(fence(['k', createdVersion(t)], t - 1, t + 5, clock, 1000)).toEqual({ store: true, expiresBy: t + 1000 });
    expect(fence(['k', createdVersion(0)], undefined, t, clock, 1000)).toEqual({ store: true });
  });
});

describe('fencing on the memory store', () => {
  it('a render whose data was loaded before an invalidation shows it, does not store it, and says so', async () => {
    const engine = createEngine();
    const fenced: string[] = [];
    engine.on('fenced', (e) => fenced.push(e.name));
    expect(await engine.renderString(BOX, { v: 1 })).toBe('1');
    const loaded = Date.now() - 5; // request A loads the data (v=1)…
    await engine.invalidateTag('d'); // …the app writes v=2 and invalidates…
    expect(await engine.renderString(BOX, { v: 1 }, { since: loaded })).toBe('1'); // …A renders what it loaded
    expect(fenced).toEqual(['box']);
    expect(engine.stats().fenced).toBe(1);
    // Every later request (in a later ms: times are whole ms, and the same ms is taken as "maybe before") sees the
    // new data, not A's output.
    const later = Date.now() + 1;
    expect(await engine.renderString(BOX, { v: 2 }, { since: later })).toBe('2');
    expect(await engine.renderString(BOX, { v: 3 }, { since: later + 1 })).toBe('2');
  });

  it('the same with the fencing off stores the old output: what the check prevents', async () => {
    const engine = createEngine();
    engine.unfenced = true;
    await engine.renderString(BOX, { v: 1 });
    const loaded = Date.now() - 5;
    await engine.invalidateTag('d');
    await engine.renderString(BOX, { v: 1 }, { since: new Date(loaded) });
    expect(await engine.renderString(BOX, { v: 2 }, { since: Date.now() + 1 })).toBe('1');
  });

  it('a fragment around a fenced one is not stored either (it inherits the tag)', async () => {
    const engine = createEngine();
    await engine.renderString(PAGE, { v: 1 });
    const loaded = Date.now() - 5;
    await engine.invalidate('box');
    expect(await engine.renderString(PAGE, { v: 1 }, { since: loaded })).toBe('[1]');
    expect(engine.stats().fragments.page.fenced).toBe(1);
    expect(await engine.renderString(PAGE, { v: 2 }, { since: Date.now() + 1 })).toBe('[2]');
    expect(await engine.renderString(PAGE, { v: 3 }, { since: Date.now() + 2 })).toBe('[2]');
  });

  it('without since, output of a tag invalidated just before the render lives at most the window', async () => {
    const engine = createEngine({ unknownSinceWindow: 200 });
    await engine.renderString(BOX, { v: 1 });
    await engine.invalidateTag('d');
    const invalidated = Date.now();
    const x = await engine.explainString(BOX, { v: 1 });
    const entry = engine.cache.store.sync!.get(x.fragments[0].key)!;
    expect(entry.expires).not.toBeNull();
    expect(entry.expires!).toBeLessThanOrEqual(invalidated + 200 + 2);
    expect(await engine.renderString(BOX, { v: 2 })).toBe('1'); // within the window: still served
    const now = jest.spyOn(Date, 'now').mockReturnValue(entry.expires! + 1);
    try {
      expect(await engine.renderString(BOX, { v: 2 })).toBe('2'); // after it: gone
    } finally {
      now.mockRestore();
    }
  });

  it('without since, output of tags not invalidated lately keeps its full TTL', async () => {
    const engine = createEngine();
    const x = await engine.explainString(BOX, { v: 1 });
    expect(x.fragments[0].ttlLeft).toBe(300);
  });

  it('since must be a time', async () => {
    const engine = createEngine();
    await expect(engine.renderString(BOX, { v: 1 }, { since: 'yesterday' as unknown as number })).rejects.toThrow(OptionError);
    await expect(engine.render('x.njk', {}, { since: NaN })).rejects.toThrow(/since/);
  });
});

describe('fencing judged by the store clock', () => {
  it.each([5000, -5000])('hosts whose clocks are %d ms apart agree on which came first, through the store clock', async (ahead) => {
    // One store; the invalidating host's clock agrees with it, the rendering host's runs `ahead` ms ahead (its
    // Date.now() readings are simulated by adding `ahead`; its store's time() is `ahead` behind its own clock).
    const shared = new MemoryStore();
    const writer = createEngine({ store: new SkewedStore(shared, 0) });
    const renderer = createEngine({ store: new SkewedStore(shared, -ahead) });
    const hostNow = () => Date.now() + ahead;
    await renderer.renderString(BOX, { v: 1 });
    const loaded = hostNow() - 5;
    await writer.invalidateTag('d');
    const after = hostNow();
    expect(await renderer.renderString(BOX, { v: 1 }, { since: loaded })).toBe('1');
    expect(renderer.stats().fenced).toBe(1); // compared on each host's own clock, +5000 would have stored it
    expect(await renderer.renderString(BOX, { v: 2 }, { since: after + 5 })).toBe('2');
    expect(renderer.stats().fenced).toBe(1); // compared on each host's own clock, -5000 would have refused it
    expect(await renderer.renderString(BOX, { v: 3 }, { since: after + 6 })).toBe('2');
  });
});

describe('fencing through engine.express(app)', () => {
  it('res.render uses the start of the request: data loaded before an invalidation is shown, not stored', async () => {
    const dir = views({ 'box.njk': BOX });
    const engine = createEngine({ views: dir });
    const app = express();
    engine.express(app);
    const data = { v: 1 };
    app.get('/', async (req, res) => {
      const v = data.v; // the route loads its data…
      if (req.query.write) {
        data.v = 2; // …while another request writes and invalidates
        await engine.invalidateTag('d');
      }
      res.render('box', { v });
    });
    const server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      expect((await request(server).get('/')).text).toBe('1');
      expect((await request(server).get('/?write=1')).text).toBe('1');
      expect(engine.stats().fenced).toBe(1);
      expect((await request(server).get('/')).text).toBe('2');
    } finally {
      await new Promise((r) => server.close(r));
      await engine.close();
    }
  });

  it('a sub-app keeps the time its parent app saw the request', async () => {
    const dir = views({ 'box.njk': BOX });
    const engine = createEngine({ views: dir });
    const outer = express();
    const inner = express();
    engine.express(outer);
    engine.express(inner);
    let seen: unknown;
    outer.use((req, res, next) => {
      seen = (res.locals as Record<symbol, unknown>)[Symbol.for('fragcache.requestStart')];
      next();
    });
    outer.use('/sub', inner);
    let inside: unknown;
    inner.get('/', (req, res) => {
      inside = (res.locals as Record<symbol, unknown>)[Symbol.for('fragcache.requestStart')];
      res.send('ok');
    });
    const server = http.createServer(outer).listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      await request(server).get('/sub/').expect(200);
      expect(typeof seen).toBe('number');
      expect(inside).toBe(seen);
    } finally {
      await new Promise((r) => server.close(r));
      await engine.close();
    }
  });
});

describeWith(need(redis, true), 'fencing on a Redis that refuses TIME (a proxy, an ACL)', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await privateRedis();
    const admin = createClient({ url: server.url });
    await admin.connect();
    await admin.sendCommand(['ACL', 'SETUSER', 'notime', 'on', '>pw', '~*', '&*', '+@all', '-time']);
    await admin.quit();
  });
  afterAll(async () => {
    await server.stop();
  });

  it('invalidations still work and fence, judged by the host clock', async () => {
    const url = server.url.replace('redis://', 'redis://notime:pw@');
    const engine = createEngine({ store: url, prefix: 'notime', timeout: 2000 }); // (a loaded machine: no budget misses)
    const errors: Error[] = [];
    engine.on('error', (e) => errors.push(e));
    try {
      expect(await engine.renderString(BOX, { v: 1 })).toBe('1');
      const loaded = Date.now() - 5;
      await engine.invalidateTag('d');
      expect(await engine.renderString(BOX, { v: 1 }, { since: loaded })).toBe('1');
      expect(engine.stats().fenced).toBe(1);
      expect(errors.map(String)).toEqual([]);
      // A request a little later (beyond the clock's uncertainty: half a round trip + 1 ms each side).
      const later = Date.now() + 10;
      expect(await engine.renderString(BOX, { v: 2 }, { since: later })).toBe('2');
      expect(await engine.renderString(BOX, { v: 3 }, { since: later + 1 })).toBe('2');
    } finally {
      await engine.close();
    }
  });
});
