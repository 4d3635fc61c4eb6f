/**
 * Store integrity (issue 14): a reply is never trusted for its position. Every entry carries its key's digest;
 * a reply under the wrong key is a miss and a reported StoreIntegrityError, and the connection is replaced.
 * Faults come from a TCP proxy between the engine and a PRIVATE redis-server / memcached (spec/support/proxy).
 */
import { once } from 'node:events';
import http from 'node:http';
import { createClient } from '@redis/client';
import { createApp } from '../examples/express/server';
import { createEngine, StoreError, StoreIntegrityError, type Engine, type FragcacheError } from '../lib';
import { decodeEntries, decodeEntry, encodeEntry, keyDigest, WRONG_KEY, type Entry } from '../lib/entry';
import { StoreGuard } from '../lib/guard';
import type { MemcacheStore } from '../lib/stores/memcache';
import type { RedisStore } from '../lib/stores/redis';
import { faultProxy, type FaultProxy } from './support/proxy';
import { describeWith, memcached, need, privateMemcached, privateRedis, redis, uniquePrefix, until, type TestServer } from './support/servers';

const entry = (body: string): Entry => ({ body, created: 1, expires: null });

describe('entry key digest', () => {
  it('an entry read under the key it was written under decodes; under any other key it is WRONG_KEY', () => {
    const raw = encodeEntry(entry('<p>alice</p>'), 'fc:1:f:card:alice');
    expect((decodeEntry(raw, 'fc:1:f:card:alice') as Entry).body).toBe('<p>alice</p>');
    expect(decodeEntry(raw, 'fc:1:f:card:bob')).toBe(WRONG_KEY);
    expect(decodeEntry(raw, 'fc:1:f:card:alicf')).toBe(WRONG_KEY); // one character apart
    expect(decodeEntry(raw, '')).toBe(WRONG_KEY);
  });

  it('a batch with one reply under another key throws StoreIntegrityError naming the key; so does a wrong count', () => {
    const a = encodeEntry(entry('A'), 'k:a');
    const b = encodeEntry(entry('B'), 'k:b');
    expect(decodeEntries([a, null, b], ['k:a', 'k:x', 'k:b'], 'redis').map((e) => e?.body)).toEqual(['A', undefined, 'B']);
    expect(() => decodeEntries([b, a], ['k:a', 'k:b'], 'redis')).toThrow(StoreIntegrityError);
    expect(() => decodeEntries([b, a], ['k:a', 'k:b'], 'redis')).toThrow(/"k:a".*another key/);
    expect(() => decodeEntries([a], ['k:a', 'k:b'], 'redis')).toThrow(/1 replies for 2 keys/);
  });

  it('old-format (fc1, no digest) entries and garbage are plain misses, not faults', () => {
    expect(decodeEntry('fc1{"created":1,"expires":null}\nold', 'k')).toBeUndefined();
    expect(decodeEntry('garbage', 'k')).toBeUndefined();
    expect(decodeEntry(encodeEntry(entry('x'), 'k').replace('"created":1', '"created":"1"'), 'k')).toBeUndefined();
  });

  it('the digest is part of the wire format: pinned values, 16 hex digits, different for near keys', () => {
    expect(keyDigest('fc:1:f:card:alice')).toMatch(/^[0-9a-f]{16}$/);
    expect(keyDigest('')).toBe('488bdcb81aee8d83');
    const seen = new Set<string>();
    for (let i = 0; i < 20_000; i++) seen.add(keyDigest(`fc:1:f:row:n${i};`));
    expect(seen.size).toBe(20_000);
    expect(keyDigest('fc:tag:n/card')).toBe('d2df4bd3ad24de4a');
  });
});

describe('guard', () => {
  it('a call abandoned over budget whose reply never comes makes the store drop its connection; a late reply does not', async () => {
    const reset = jest.fn();
    const guard = new StoreGuard({ kind: 'fake', reset }, { timeout: 20, failures: 10 });
    let late!: () => void;
    await expect(guard.run('getMany', () => new Promise<void>((r) => (late = r)))).rejects.toThrow(/took more than 20 ms/);
    await expect(guard.run('getMany', () => new Promise(() => undefined))).rejects.toThrow(/took more than 20 ms/);
    late(); // the first one's reply comes, late: that connection was only slow
    expect(reset).not.toHaveBeenCalled();
    await until('the stuck call to reset its connection', () => reset.mock.calls.length > 0, 2000, 10);
    expect(reset).toHaveBeenCalledTimes(1);
    await expect(guard.run('getMany', () => Promise.reject(new Error('refused')))).rejects.toThrow(StoreError);
    await expect(guard.run('getMany', () => Promise.reject(new StoreIntegrityError('wrong key', 'fake', 'getMany')))).rejects.toThrow(StoreIntegrityError);
    expect(reset).toHaveBeenCalledTimes(2); // a plain failure says nothing about the connection; a wrong-key reply does
  });

  it('a store that reports a fresh connection is probed at once, not after retryAfter', async () => {
    let ready!: () => void;
    let now = 0;
    const guard = new StoreGuard({ kind: 'fake', onReady: (fn) => (ready = fn) }, { failures: 1, retryAfter: 10_000 }, () => now);
    await expect(guard.run('getMany', () => Promise.reject(new Error('down')))).rejects.toThrow();
    now = 100;
    await expect(guard.run('getMany', () => Promise.resolve(1))).rejects.toThrow(/circuit open/);
    ready();
    await expect(guard.run('getMany', () => Promise.resolve(2))).resolves.toBe(2);
  });
});

const hello = (html: string) => /class="hello">([^<]*)</.exec(html)?.[1];

/** GET with a user cookie; resolves with status, body and X-Cache (never rejects on an HTTP status). */
function get(port: number, path: string, user: string): Promise<{ status: number; body: string; cache: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers: { cookie: `uid=${user}` }, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, cache: res.headers['x-cache'] as string | undefined }));
    });
    req.on('error', reject);
  });
}

describeWith(need(redis, true), 'Redis integrity through a faulty link (private server)', () => {
  let server: TestServer;
  let proxy: FaultProxy;
  beforeAll(async () => {
    server = await privateRedis();
  });
  afterAll(async () => {
    await server.stop();
  });
  beforeEach(async () => {
    proxy = await faultProxy(server.port);
  });
  afterEach(async () => {
    await proxy.close();
  });

  it('one garbled reply: 160 concurrent per-user page views get their own page or a fresh one, never another user’s, no 500; caching is back within retryAfter; close() within 1 s', async () => {
    // A generous budget: healing must not depend on it (the protocol error drops the connection), and a loaded
    // machine must not add timeouts of its own. The breaker retries after its default 500 ms.
    const blog = createApp({ store: `redis://127.0.0.1:${proxy.port}`, prefix: uniquePrefix('integ'), timeout: 1000 });
    const errors: FragcacheError[] = [];
    let lastErrorAt = 0;
    blog.engine.on('error', (e) => (errors.push(e), (lastErrorAt = Date.now())));
    const web = blog.app.listen(0, '127.0.0.1');
    await once(web, 'listening');
    const port = (web.address() as { port: number }).port;
    const store = blog.engine.cache.store as RedisStore;
    const users = { alice: 'Hello, Alice', bob: 'Hello, Bob' } as const;
    let closeMs = Infinity;
    try {
      await until('redis connection', () => store.client.isReady === true);
      for (const u of ['alice', 'bob', 'alice', 'bob'] as const) await get(port, '/articles/1', u);
      expect((await get(port, '/articles/1', 'alice')).cache).toBe('HIT');

      proxy.garbleNext();
      const faultAt = Date.now();
      const results: { user: keyof typeof users; status: number; body: string; cache?: string; start: number }[] = [];
      // 8 concurrent loops of 20 requests each (a request that waits on another's lock delays only its own loop).
      await Promise.all(
        Array.from({ length: 8 }, async (_, loop) => {
          for (let i = 0; i < 20; i++) {
            const user = (loop + i) % 2 ? 'bob' : 'alice';
            const path = `/articles/${1 + ((loop + i) % 3)}`;
            const start = Date.now();
            results.push({ user, start, ...(await get(port, path, user)) });
          }
        }),
      );
      expect(results.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.body.slice(0, 80)}`)).toEqual([]);
      expect(results.filter((r) => hello(r.body) !== users[r.user]).length).toBe(0);
      // The fault was seen and healed: a protocol error or a wrong-key reply replaced the connection.
      expect(store.resets).toBeGreaterThanOrEqual(1);
      expect(errors.some((e) => e instanceof StoreError)).toBe(true);

      // Caching is back: a HIT for a request started after the last reported error, within the breaker's
      // retryAfter (500 ms) of the fault, plus headroom for a loaded machine (2 shared cores).
      await until('a page HIT after the fault', async () => (await get(port, '/articles/1', 'alice')).cache === 'HIT', 3000, 10);
      const firstHit = results.find((r) => r.cache === 'HIT' && r.start > lastErrorAt)?.start ?? Date.now();
      if (process.env.H4_DEBUG) console.log(errors.map((e) => `${e.message}`).join('\n'), '\nlastErrorAt', lastErrorAt - faultAt, results.map((r) => `${r.start - faultAt}:${r.cache}`).join(' '));
      expect(firstHit - faultAt).toBeLessThan(1500);
      const again = await get(port, '/articles/1', 'bob');
      expect(hello(again.body)).toBe('Hello, Bob');
    } finally {
      await new Promise((r) => web.close(r));
      const t0 = Date.now();
      await blog.close();
      closeMs = Date.now() - t0;
    }
    expect(closeMs).toBeLessThan(1000);
  }, 30_000);

  describe('with an engine on the proxy', () => {
    let engine: Engine;
    let errors: FragcacheError[];
    const PAGE = '<% for i in range(5) %><% cache 300, "row", i, user %>[{{ i }}:{{ user }}:{{ v }}]<% endcache %><% endfor %>';
    const page = (user: string, v: string) => Array.from({ length: 5 }, (_, i) => `[${i}:${user}:${v}]`).join('');
    beforeEach(async () => {
      engine = createEngine({ store: `redis://127.0.0.1:${proxy.port}`, prefix: uniquePrefix('integ'), breaker: { retryAfter: 200 } });
      errors = [];
      engine.on('error', (e) => errors.push(e));
      await until('redis connection', () => (engine.cache.store as RedisStore).client.isReady === true);
    });
    afterEach(async () => {
      await engine.close();
    });

    it('an entry stored under another key (a mixed-up reply, as the server sees it) is a miss, reported, never served', async () => {
      expect(await engine.renderString(PAGE, { user: 'alice', v: '1' })).toBe(page('alice', '1'));
      expect(await engine.renderString(PAGE, { user: 'bob', v: '1' })).toBe(page('bob', '1'));
      const [a, b] = await Promise.all(['alice', 'bob'].map(async (user) => (await engine.explainString(PAGE, { user, v: '1' })).fragments[0].key));
      const admin = createClient({ url: server.url });
      await admin.connect();
      try {
        await admin.set(a, (await admin.get(b))!); // Alice's key now holds Bob's entry
        // Read by another engine (another process): this one may still reuse what it produced a moment ago.
        const other = createEngine({ store: `redis://127.0.0.1:${proxy.port}`, prefix: engine.cache.prefix });
        const seen: FragcacheError[] = [];
        other.on('error', (e) => seen.push(e));
        try {
          // The read is suspect (one wrong reply means the connection may be out of step): the connection is replaced,
          // and what is served comes from it, each entry checked against its key: never Bob's.
          const first = await other.renderString(PAGE, { user: 'alice', v: '2' });
          expect(first).not.toContain('bob');
          expect(first.startsWith('[0:alice:2]')).toBe(true); // the fragment whose key held Bob's entry: fresh
          expect(seen.some((e) => e instanceof StoreIntegrityError && /another key/.test(e.message))).toBe(true);
          expect((other.cache.store as RedisStore).resets).toBeGreaterThanOrEqual(1);
          // Healed: the next renders read (and hit) again.
          await until('caching to resume', async () => (await other.renderString(PAGE, { user: 'alice', v: '3' })) === first, 2000, 20);
        } finally {
          await other.close();
        }
      } finally {
        await admin.quit();
      }
    });

    it('a value misplaced in the store itself (the same wrong key again on a fresh connection) is a miss and deleted, not a reset on every read', async () => {
      expect(await engine.renderString(PAGE, { user: 'carol', v: '1' })).toBe(page('carol', '1'));
      expect(await engine.renderString(PAGE, { user: 'dan', v: '1' })).toBe(page('dan', '1'));
      const [c, d] = await Promise.all(['carol', 'dan'].map(async (user) => (await engine.explainString(PAGE, { user, v: '1' })).fragments[0].key));
      const admin = createClient({ url: server.url });
      await admin.connect();
      const other = createEngine({ store: `redis://127.0.0.1:${proxy.port}`, prefix: engine.cache.prefix });
      other.on('error', () => undefined);
      try {
        const misplaced = (await admin.get(d))!;
        const renders: string[] = [];
        for (let i = 0; i < 5; i++) {
          await admin.set(c, misplaced); // an operator's COPY, kept there whatever the app writes
          renders.push(await other.renderString(PAGE, { user: 'carol', v: '2' }));
        }
        expect(renders.every((r) => r.startsWith('[0:carol:2]') && !r.includes('dan'))).toBe(true); // never Dan's
        // One reset (the first time, as for a connection out of step); after that, read as a miss and deleted.
        expect((other.cache.store as RedisStore).resets).toBe(1);
      } finally {
        await other.close();
        await admin.quit();
      }
    });

    it('a reply split at every byte boundary is read correctly, and nothing is reset', async () => {
      // Two fragments: a multi-bulk reply (array header, two bulk strings) of a few hundred bytes.
      const TWO = '<% for i in range(2) %><% cache 300, "row", i, user %>[{{ i }}:{{ user }}:{{ v }}]<% endcache %><% endfor %>';
      const two = (user: string, v: string) => `[0:${user}:${v}][1:${user}:${v}]`;
      // A generous budget: this is about parsing, not timing, and a loaded machine must not trip it.
      await engine.close();
      engine = createEngine({ store: `redis://127.0.0.1:${proxy.port}`, prefix: uniquePrefix('integ'), timeout: 2000 });
      engine.on('error', (e) => errors.push(e));
      await until('redis connection', () => (engine.cache.store as RedisStore).client.isReady === true);
      expect(await engine.renderString(TWO, { user: 'alice', v: '1' })).toBe(two('alice', '1'));
      let longest = 0;
      proxy.tap((dir, c) => dir === 'down' && (longest = Math.max(longest, c.length)));
      expect(await engine.renderString(TWO, { user: 'alice', v: '2' })).toBe(two('alice', '1'));
      proxy.tap(undefined);
      expect(longest).toBeGreaterThan(100);
      for (let at = 1; at < longest; at++) {
        const splitDone = proxy.splitNext(at, 1);
        const html = await engine.renderString(TWO, { user: 'alice', v: String(at) });
        if (html !== two('alice', '1')) throw new Error(`split at ${at}: ${html} ${errors.map((e) => e.message).join('; ')}`);
        await splitDone;
      }
      expect(errors.map((e) => e.message)).toEqual([]);
      expect((engine.cache.store as RedisStore).resets).toBe(0);
    }, 30_000);

    it.each([
      [250, 'kept (late replies match their abandoned calls)'],
      [1000, 'replaced (the replies are stuck)'],
    ])('replies held %d ms (past the 100 ms budget), then delivered: every render is the user’s own or fresh; the connection is %s', async (holdMs) => {
      for (const user of ['alice', 'bob']) expect(await engine.renderString(PAGE, { user, v: '1' })).toBe(page(user, '1'));
      proxy.holdReplies(holdMs);
      const during = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? 'bob' : 'alice')).map(async (user) => ({ user, html: await engine.renderString(PAGE, { user, v: 'fresh' }) })));
      for (const { user, html } of during) expect([page(user, '1'), page(user, 'fresh')]).toContain(html);
      expect(errors.some((e) => /took more than/.test(e.message))).toBe(true);
      await new Promise((r) => setTimeout(r, holdMs + 100)); // the held replies have arrived
      if (holdMs < 400) expect((engine.cache.store as RedisStore).resets).toBe(0);
      else expect((engine.cache.store as RedisStore).resets).toBeGreaterThanOrEqual(1);
      await until('caching to resume', async () => (await engine.explainString(PAGE, { user: 'bob', v: 'x' })).fragments.every((f) => f.status === 'hit'), 3000, 20);
      for (let i = 0; i < 20; i++) {
        const user = i % 2 ? 'bob' : 'alice';
        // The user's own page: cached (1, fresh) or rendered now (later); never another user's.
        expect([page(user, '1'), page(user, 'fresh'), page(user, 'later')]).toContain(await engine.renderString(PAGE, { user, v: 'later' }));
      }
    });

    it('close() resolves within a second with commands stuck on a stalled link', async () => {
      await engine.renderString(PAGE, { user: 'alice', v: '1' });
      proxy.stall();
      const pending = engine.renderString(PAGE, { user: 'alice', v: '2' });
      const t0 = Date.now();
      await engine.close();
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(await pending).toMatch(/^(\[\d:alice:[12]\]){5}$/);
    });
  });
});

describeWith(need(memcached, true), 'Memcached integrity through a faulty link (private server)', () => {
  let server: TestServer;
  let proxy: FaultProxy;
  beforeAll(async () => {
    server = await privateMemcached();
    proxy = await faultProxy(server.port);
  });
  afterAll(async () => {
    await proxy.close();
    await server.stop();
  });
  const PAGE = '<% for i in range(3) %><% cache 300, "row", i, user %>[{{ i }}:{{ user }}:{{ v }}]<% endcache %><% endfor %>';
  const page = (user: string, v: string) => Array.from({ length: 3 }, (_, i) => `[${i}:${user}:${v}]`).join('');

  it('a garbled reply: renders stay correct and within budget, the sockets are dropped, caching comes back', async () => {
    // memjs drops a connection whose reply it cannot match after its own timeout (500 ms), within this budget.
    const engine = createEngine({ store: `memcache://127.0.0.1:${proxy.port}`, prefix: uniquePrefix('mcinteg'), timeout: 1000, breaker: { retryAfter: 200 } });
    const errors: FragcacheError[] = [];
    engine.on('error', (e) => errors.push(e));
    try {
      for (const user of ['alice', 'bob', 'alice']) await engine.renderString(PAGE, { user, v: '1' });
      expect(engine.stats().hits).toBeGreaterThan(0);
      // The first reply of the next pipeline carries the next request's opaque (memjs matches replies by it).
      proxy.garbleNext((c) => {
        const b = Buffer.from(c);
        if (b.length >= 16) b.writeUInt32BE((b.readUInt32BE(12) + 1) >>> 0, 12);
        return b;
      });
      for (let i = 0; i < 10; i++) {
        const user = i % 2 ? 'bob' : 'alice';
        const t0 = performance.now();
        expect([page(user, '1'), page(user, 'g')]).toContain(await engine.renderString(PAGE, { user, v: 'g' }));
        expect(performance.now() - t0).toBeLessThan(2000);
      }
      expect(errors.length).toBeGreaterThanOrEqual(1); // the fault was seen (memjs timed the reply out)
      await until('caching to resume', async () => {
        const before = engine.stats().hits;
        await engine.renderString(PAGE, { user: 'bob', v: 'y' });
        return engine.stats().hits >= before + 3;
      }, 3000, 20);
    } finally {
      await engine.close();
    }
  });

  it('an entry under another key is a miss, a reported StoreIntegrityError, and the sockets are dropped', async () => {
    const engine = createEngine({ store: `memcache://127.0.0.1:${proxy.port}`, prefix: uniquePrefix('mcinteg') });
    const errors: FragcacheError[] = [];
    engine.on('error', (e) => errors.push(e));
    const store = engine.cache.store as MemcacheStore;
    try {
      await engine.renderString(PAGE, { user: 'alice', v: '1' });
      await engine.renderString(PAGE, { user: 'bob', v: '1' });
      const { fragments: fa } = await engine.explainString(PAGE, { user: 'alice', v: '1' });
      const { fragments: fb } = await engine.explainString(PAGE, { user: 'bob', v: '1' });
      // Copy Bob's stored entry (as memcached holds it) under Alice's key, through the store itself.
      const [bobEntry] = await store.getMany([fb[0].key]);
      const gen = (store as unknown as { generations: Map<string, string> }).generations.get(engine.cache.prefix)!;
      const real = (k: string) => (store as unknown as { realKey(k: string, g: string): string }).realKey(k, gen);
      await store.client.set(real(fa[0].key), encodeEntry(bobEntry!, real(fb[0].key)), {});
      const other = createEngine({ store: `memcache://127.0.0.1:${proxy.port}`, prefix: engine.cache.prefix });
      const seen: FragcacheError[] = [];
      other.on('error', (e) => seen.push(e));
      try {
        expect(await other.renderString(PAGE, { user: 'alice', v: '2' })).toBe(page('alice', '2'));
        expect(seen.some((e) => e instanceof StoreIntegrityError)).toBe(true);
        expect((other.cache.store as MemcacheStore).resets).toBeGreaterThanOrEqual(1);
      } finally {
        await other.close();
      }
    } finally {
      await engine.close();
    }
  });
});
