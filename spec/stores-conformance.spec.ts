/**
 * The Store contract on every real backend: Redis, Memcached (real servers) and SQLite (a temp file).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createClient } from '@redis/client';
import { createEngine, createStore, type Store } from '../lib';
import type { Entry } from '../lib/entry';
import { MemcacheStore, memcacheExpiry } from '../lib/stores/memcache';
import { RedisStore } from '../lib/stores/redis';
import { SqliteStore } from '../lib/stores/sqlite';
import { describeWith, memcached, need, redis, uniquePrefix, until, type TestServer } from './support/servers';

const entry = (body: string, ttlMs: number | null = null): Entry => ({ body, created: Date.now(), expires: ttlMs === null ? null : Date.now() + ttlMs });

interface Backend {
  name: string;
  available: { ok: boolean; reason?: string };
  open(): Promise<{ store: Store; url: string; done(): Promise<void> }>;
}

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fragcache-stores-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const servers = new Map<string, TestServer>();
async function server(kind: 'redis' | 'memcache'): Promise<TestServer> {
  let s = servers.get(kind);
  if (!s) servers.set(kind, (s = await (kind === 'redis' ? redis : memcached).get!()));
  return s;
}
afterAll(async () => {
  for (const s of servers.values()) await s.stop();
});

const backends: Backend[] = [
  {
    name: 'redis',
    available: need(redis),
    async open() {
      const s = await server('redis');
      const store = createStore(s.url);
      await until('redis connection', () => (store as RedisStore).client.isReady === true);
      return { store, url: s.url, done: () => store.close() };
    },
  },
  {
    name: 'memcache',
    available: need(memcached),
    async open() {
      const s = await server('memcache');
      const store = createStore(s.url);
      return { store, url: s.url, done: () => store.close() };
    },
  },
  {
    name: 'sqlite',
    available: { ok: true },
    async open() {
      const url = `sqlite://${path.join(tmp, `c${Math.random().toString(36).slice(2)}.db`)}`;
      const store = createStore(url);
      return { store, url, done: () => store.close() };
    },
  },
];

for (const b of backends) {
  describeWith(b.available, `${b.name} store (contract)`, () => {
    let store: Store;
    let url: string;
    let done: () => Promise<void>;
    let p: string;
    beforeAll(async () => {
      ({ store, url, done } = await b.open());
    });
    afterAll(() => done());
    beforeEach(() => {
      p = uniquePrefix(b.name);
    });

    it('is created from its URL with the right kind, and is shared', () => {
      expect(store.kind).toBe(b.name);
      expect(store.shared).toBe(true);
    });

    it('reads many keys at once, misses as undefined, and keeps bodies byte for byte', async () => {
      const body = 'héllo <b>wörld</b>\n\u2028 ✓ '.repeat(50);
      await store.setMany([
        { key: `${p}:1:a`, entry: entry(body), ttlMs: 60_000 },
        { key: `${p}:1:b`, entry: { ...entry('b'), tags: [`${p}:tag:x`, 'v1'], meta: { name: 'b' } }, ttlMs: null },
      ]);
      const got = await store.getMany([`${p}:1:a`, `${p}:1:nope`, `${p}:1:b`]);
      expect(got[0]!.body).toBe(body);
      expect(got[1]).toBeUndefined();
      expect(got[2]!.tags).toEqual([`${p}:tag:x`, 'v1']);
      expect(got[2]!.meta).toEqual({ name: 'b' });
    });

    it('add writes only when the key is absent', async () => {
      expect(await store.add(`${p}:tag:t`, entry('one'), null)).toBe(true);
      expect(await store.add(`${p}:tag:t`, entry('two'), null)).toBe(false);
      expect((await store.getMany([`${p}:tag:t`]))[0]!.body).toBe('one');
    });

    it('deletes keys', async () => {
      await store.setMany([{ key: `${p}:1:d`, entry: entry('d'), ttlMs: null }]);
      await store.deleteMany([`${p}:1:d`]);
      expect(await store.getMany([`${p}:1:d`])).toEqual([undefined]);
    });

    it('clear(prefix) removes its own entries and nothing else', async () => {
      const other = uniquePrefix(b.name);
      await store.setMany([
        { key: `${p}:1:x`, entry: entry('x'), ttlMs: null },
        { key: `${p}:tag:y`, entry: entry('y'), ttlMs: null },
        { key: `${other}:1:x`, entry: entry('other'), ttlMs: null },
      ]);
      await store.clear(`${p}:`);
      expect(await store.getMany([`${p}:1:x`, `${p}:tag:y`])).toEqual([undefined, undefined]);
      expect((await store.getMany([`${other}:1:x`]))[0]!.body).toBe('other');
      // Writing again after a clear works.
      await store.setMany([{ key: `${p}:1:x`, entry: entry('again'), ttlMs: null }]);
      expect((await store.getMany([`${p}:1:x`]))[0]!.body).toBe('again');
    });

    it('a sub-second TTL expires (it does not become "never")', async () => {
      await store.setMany([{ key: `${p}:1:short`, entry: entry('s', 300), ttlMs: 300 }]);
      expect((await store.getMany([`${p}:1:short`]))[0]?.body).toBe('s');
      // Memcached rounds up to whole seconds; the engine also checks the entry's own `expires`.
      await until('the short entry to expire', async () => (await store.getMany([`${p}:1:short`]))[0] === undefined, 3000, 50);
    });

    it('a garbage value reads as a miss', async () => {
      await store.setMany([{ key: `${p}:1:g`, entry: entry('fine'), ttlMs: null }]);
      if (b.name === 'redis') {
        const c = createClient({ url });
        await c.connect();
        await c.set(`${p}:1:g`, 'not a fragcache entry {');
        await c.quit();
      } else if (b.name === 'sqlite') {
        (store as SqliteStore).db.prepare('UPDATE fragcache SET value = ? WHERE key = ?').run('fc2{"x":1}\nold format', `${p}:1:g`);
      } else {
        // Memcached: overwrite through the client under the same (generation-folded) key.
        const ms = store as MemcacheStore;
        const gen = (await ms.client.get(`${p}:__gen`)).value!.toString();
        await ms.client.set(`${gen}/${p}:1:g`, '\u0000\u0001garbage', { expires: 0 });
      }
      expect(await store.getMany([`${p}:1:g`])).toEqual([undefined]);
    });

    it('fixed: garbage (or another format) under a tag version key is replaced, and fragments cache again', async () => {
      const engine = createEngine({ views: [], store: url, prefix: p });
      let n = 0;
      const render = async () => (await engine.explainString('<% cache 60 box %>{{ f() }}<% endcache %>', { f: () => ++n })).fragments[0].status;
      try {
        expect(await render()).toBe('miss');
        const tagKey = `${p}:tag:n/box`;
        if (b.name === 'redis') {
          const c = createClient({ url });
          await c.connect();
          await c.set(tagKey, 'fc2{"created":1}\nfrom a future version');
          await c.quit();
        } else if (b.name === 'sqlite') {
          (store as SqliteStore).db.prepare('UPDATE fragcache SET value = ? WHERE key = ?').run('garbage', tagKey);
        } else {
          const ms = store as MemcacheStore;
          const gen = (await ms.client.get(`${p}:__gen`)).value!.toString();
          await ms.client.set(`${gen}/${tagKey}`, 'garbage', { expires: 0 });
        }
        expect(await render()).toBe('miss'); // the old entry's tag version is unreadable: never served
        expect(await render()).toBe('hit');
        expect(n).toBe(2);
      } finally {
        await engine.close();
      }
    });

    it('lock: one owner at a time, released only by its token, and it expires by itself', async () => {
      const k = `${p}:lock:frag`;
      const t1 = await store.lock!(k, 1000);
      expect(t1).toEqual(expect.any(String));
      expect(await store.lock!(k, 1000)).toBeUndefined();
      await store.unlock!(k, 'not-the-token');
      expect(await store.lock!(k, 1000)).toBeUndefined();
      await store.unlock!(k, t1!);
      const t2 = await store.lock!(k, 300);
      expect(t2).toEqual(expect.any(String));
      await until('the lock to expire', async () => (await store.lock!(k, 1000)) !== undefined, 3000, 50);
    });

    it('two engines on the store share fragments and see each other’s invalidations', async () => {
      const views = path.join(tmp, `views-${p}`);
      fs.mkdirSync(views);
      fs.writeFileSync(path.join(views, 'p.njk'), '<% cache 60, "card", id %>{{ title }}<% endcache %>');
      const a = createEngine({ views, store: url, prefix: p });
      const c = createEngine({ views, store: url, prefix: p });
      try {
        expect(await a.render('p.njk', { id: 1, title: 'first' })).toBe('first');
        expect(await c.render('p.njk', { id: 1, title: 'second' })).toBe('first'); // served from a's write
        await c.invalidate('card');
        expect(await a.render('p.njk', { id: 1, title: 'third' })).toBe('third');
        await a.cache.clear();
        expect(await c.render('p.njk', { id: 1, title: 'fourth' })).toBe('fourth');
      } finally {
        await a.close();
        await c.close();
      }
    });
  });
}

describe('memcached expiry', () => {
  it('rounds sub-second TTLs up to 1 s, keeps 0 for no expiry, and uses absolute time beyond 30 days', () => {
    expect(memcacheExpiry(null)).toBe(0);
    expect(memcacheExpiry(1)).toBe(1);
    expect(memcacheExpiry(999)).toBe(1);
    expect(memcacheExpiry(1001)).toBe(2);
    const now = 1_700_000_000_000;
    expect(memcacheExpiry(31 * 24 * 3600 * 1000, now)).toBe(1_700_000_000 + 31 * 24 * 3600);
  });
});

describe('sqlite store across connections', () => {
  it('two connections to one file (as two processes) keep each other’s writes', async () => {
    const file = path.join(tmp, 'shared.db');
    const a = new SqliteStore(file);
    const b = new SqliteStore(file);
    try {
      await a.setMany([{ key: 'fc:1:a', entry: entry('from a'), ttlMs: null }]);
      await b.setMany([{ key: 'fc:1:b', entry: entry('from b'), ttlMs: null }]);
      expect((await a.getMany(['fc:1:a', 'fc:1:b'])).map((e) => e?.body)).toEqual(['from a', 'from b']);
      expect(await a.add('fc:tag:t', entry('a'), null)).toBe(true);
      expect(await b.add('fc:tag:t', entry('b'), null)).toBe(false);
    } finally {
      await a.close();
      await b.close();
    }
    // It survives a restart.
    const c = new SqliteStore(file);
    expect((await c.getMany(['fc:1:a']))[0]!.body).toBe('from a');
    await c.close();
  });

  it('prunes expired rows, and "%" or "_" in a prefix are not wildcards', async () => {
    const s = new SqliteStore(path.join(tmp, 'prune.db'));
    await s.setMany([
      { key: 'a_b:1:x', entry: entry('x'), ttlMs: null },
      { key: 'aXb:1:y', entry: entry('y'), ttlMs: null },
      { key: 'fc:1:old', entry: entry('o', 1), ttlMs: 1 },
    ]);
    expect(await s.clear('a_b:')).toBe(1);
    expect((await s.getMany(['aXb:1:y']))[0]!.body).toBe('y');
    await until('the entry to expire', () => s.sync.get('fc:1:old') === undefined, 1000, 5);
    expect(s.prune()).toBe(1);
    await s.close();
  });

  it('fixed: an invalidation the database cannot write (locked by another process) rejects, and the error is reported', async () => {
    const file = path.join(tmp, 'locked.db');
    const engine = createEngine({ views: [], store: `sqlite://${file}` });
    const errors: Error[] = [];
    engine.on('error', (e) => errors.push(e));
    let n = 0;
    const tpl = '<% cache 60 box tags=["t"] %>{{ f() }}<% endcache %>';
    expect(await engine.renderString(tpl, { f: () => ++n })).toBe('1');
    const other = new SqliteStore(file);
    other.db.exec('BEGIN IMMEDIATE');
    try {
      await expect(engine.invalidateTag('t')).rejects.toThrow(/database is locked/);
      await expect(engine.invalidate('box')).rejects.toThrow(/database is locked/);
      // A render still works (uncached writes are reported, not thrown).
      expect(await engine.renderString('<% cache 60 cold %>{{ f() }}<% endcache %>', { f: () => ++n })).toBe('2');
      expect(errors.some((e) => /database is locked/.test(e.message))).toBe(true);
    } finally {
      other.db.exec('COMMIT');
      await other.close();
    }
    await engine.invalidateTag('t');
    expect(await engine.renderString(tpl, { f: () => ++n })).toBe('3');
    await engine.close();
  });

  it('rejects a bad URL or table name with a typed error naming it', () => {
    expect(() => createStore('redis://')).toThrow(/option "store".*expected a host/);
    expect(() => createStore('redis://127.0.0.1:6379/abc')).toThrow(/database number/);
    expect(() => createStore('memcache://127.0.0.1:notaport')).toThrow(/option "store".*bad server/);
    expect(() => createStore('memcache://127.0.0.1:0')).toThrow(/option "store".*bad port/);
    fs.writeFileSync(path.join(tmp, 'a-file'), '');
    expect(() => createStore(`sqlite://${path.join(tmp, 'a-file')}/sub.db`)).toThrow(/option "store".*cannot open the database/);
    expect(() => createStore('sqlite://')).toThrow(/option "store".*sqlite:\/\//);
    expect(() => new SqliteStore(path.join(tmp, 'x.db'), { table: 'x; drop' })).toThrow(/option "table"/);
  });

  it('rejects store URL query parameters it does not know, naming them and the accepted ones, and quotes bad values as written', () => {
    // Thrown before any connection is opened (nothing to close).
    expect(() => createStore('redis://127.0.0.1:1?bogus=1')).toThrow('option "store": unknown query parameter "bogus": redis:// URLs accept "connectTimeout", "maxBackoffMs", "l1", got "redis://127.0.0.1:1?bogus=1"');
    expect(() => createStore('redis://127.0.0.1:1?l1=yes')).toThrow('option "l1": expected 1, true, 0 or false, got "yes"');
    expect(() => createStore('redis://127.0.0.1:1?connectTimeout=soon')).toThrow('option "connectTimeout": expected a positive number of milliseconds, got "soon"');
    expect(() => createStore('memory://?maxBytes=abc')).toThrow('option "maxBytes": expected a positive whole number of bytes, got "abc"');
    expect(() => createStore('memory://?maxbytes=100')).toThrow(/unknown query parameter "maxbytes": memory:\/\/ URLs accept "maxBytes"/);
    expect(() => createStore('memcache://127.0.0.1:1?timeout=1&ttl=5')).toThrow(/unknown query parameter "ttl": memcache:\/\/ URLs accept "timeout"/);
    expect(() => createStore('memcache://127.0.0.1:1?timeout=x')).toThrow('option "timeout": expected a positive number of milliseconds, got "x"');
    expect(() => createStore(`sqlite://${path.join(tmp, 'q.db')}?tabel=x`)).toThrow(/unknown query parameter "tabel": sqlite:\/\/ URLs accept "table"/);
    expect(fs.existsSync(path.join(tmp, 'q.db'))).toBe(false);
  });
});
