import Keyv from 'keyv';
import { createEngine, FragmentCache, KeyvStore, MemoryStore, OptionError, type Store } from '../lib';

describe.each([
  ['memory', (): Store => new MemoryStore()],
  ['keyv', (): Store => new KeyvStore(new Keyv(), { shared: false })],
])('low-level cache API (%s store)', (_label, makeStore) => {
  let store: Store;
  let cache: FragmentCache;
  beforeEach(() => {
    store = makeStore();
    cache = new FragmentCache(store, { prefix: 'app' });
  });
  afterEach(() => jest.useRealTimers());

  test('get/set round-trip strings and JSON values; a missing key is undefined', async () => {
    expect(await cache.get('nope')).toBeUndefined();
    await cache.set('s', '<p>hi</p>');
    await cache.set('o', { a: [1, null, 'x'] });
    await cache.set('n', null);
    expect(await cache.get('s')).toBe('<p>hi</p>');
    expect(await cache.get('o')).toEqual({ a: [1, null, 'x'] });
    expect(await cache.get('n')).toBeNull(); // a stored null is returned, not "missing"
    expect(await cache.has('n')).toBe(true);
    expect(await cache.has('nope')).toBe(false);
  });

  test('ttl expires entries (fake clock); ttl 0 stores nothing; none keeps forever', async () => {
    jest.useFakeTimers({ now: new Date('2026-01-01T00:00:00Z'), doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    await cache.set('short', 'v', { ttl: '2s' });
    await cache.set('forever', 'v', { ttl: null });
    expect(await cache.set('zero', 'v', { ttl: 0 })).toBe(false);
    expect(await cache.get('short')).toBe('v');
    jest.setSystemTime(new Date('2026-01-01T00:00:03Z'));
    expect(await cache.get('short')).toBeUndefined();
    expect(await cache.get('zero')).toBeUndefined();
    jest.setSystemTime(new Date('2027-01-01T00:00:00Z'));
    expect(await cache.get('forever')).toBe('v');
  });

  test('delete removes one key; versions isolate entries', async () => {
    await cache.set('k', 'v1');
    await cache.set('k', 'v2', { version: 2 });
    expect(await cache.get('k')).toBe('v1');
    expect(await cache.get('k', { version: 2 })).toBe('v2');
    await cache.delete('k');
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.get('k', { version: 2 })).toBe('v2');
    const v2 = new FragmentCache(store, { prefix: 'app', version: 2 });
    expect(await v2.get('k')).toBe('v2');
  });

  test('prefixes isolate caches; clear() removes only this cache\'s entries', async () => {
    const other = new FragmentCache(store, { prefix: 'other' });
    await cache.set('k', 'mine');
    await other.set('k', 'theirs');
    expect(await cache.get('k')).toBe('mine');
    await cache.clear();
    expect(await cache.get('k')).toBeUndefined();
    expect(await other.get('k')).toBe('theirs');
  });

  test('tags: invalidateTag drops tagged values only', async () => {
    await cache.set('a', 1, { tags: ['t1'] });
    await cache.set('b', 2, { tags: ['t2'] });
    await cache.invalidateTag('t1');
    expect(await cache.get('a')).toBeUndefined();
    expect(await cache.get('b')).toBe(2);
  });

  test('wrap computes once for concurrent callers, shares errors, never stores an error', async () => {
    let calls = 0;
    const slow = async () => {
      calls++;
      await new Promise((r) => setImmediate(r));
      return { n: calls };
    };
    const results = await Promise.all(Array.from({ length: 10 }, () => cache.wrap('w', slow, { ttl: 60 })));
    expect(results.every((r) => r.n === 1)).toBe(true);
    expect(calls).toBe(1);
    expect(await cache.wrap('w', slow)).toEqual({ n: 1 });

    let failures = 0;
    const failing = async () => {
      failures++;
      await new Promise((r) => setImmediate(r));
      throw new Error('nope');
    };
    const settled = await Promise.allSettled(Array.from({ length: 5 }, () => cache.wrap('f', failing)));
    expect(settled.every((s) => s.status === 'rejected')).toBe(true);
    expect(failures).toBe(1);
    await expect(cache.wrap('f', async () => 'ok')).resolves.toBe('ok');
  });

  test('bad options give errors naming the option and the value', async () => {
    await expect(cache.set('k', 'v', { ttl: -1 })).rejects.toThrow(/option "ttl".*got -1/);
    await expect(cache.set('k', 'v', { ttl: 'soon' })).rejects.toThrow(OptionError);
    await expect(cache.set('k', 'v', { tags: 'x' as unknown as string[] })).rejects.toThrow(/option "tags"/);
    await expect(cache.get('')).rejects.toThrow(/option "key"/);
    await expect(cache.set('k', undefined)).rejects.toThrow(/option "value"/);
    expect(() => new FragmentCache(store, { prefix: "has space" })).toThrow(/option "prefix"/);
    expect(() => new FragmentCache(store, { prefix: "a:b" })).toThrow(/option "prefix".*got "a:b"/);
    expect(() => createEngine({ syntax: 'square' as 'angle' })).toThrow(/option "syntax": expected "angle" or "curly", got "square"/);
    expect(() => createEngine({ store: 'ftp://x' })).toThrow(/option "store"/);
  });
});

describe('memory store', () => {
  test('is bounded in bytes with least-recently-used eviction', async () => {
    const store = new MemoryStore({ maxBytes: 10_000 });
    const cache = new FragmentCache(store);
    for (let i = 0; i < 10; i++) await cache.set(`k${i}`, 'x'.repeat(1000)); // ~2.2 kB each
    expect(store.bytes).toBeLessThanOrEqual(10_000);
    expect(await cache.get('k9')).toBe('x'.repeat(1000));
    expect(await cache.get('k0')).toBeUndefined();
    await cache.get('k6'); // touch: k6 becomes most recently used
    await cache.set('k10', 'y'.repeat(1000));
    expect(await cache.get('k6')).toBeDefined();
    expect(await cache.get('k7')).toBeUndefined();
  });

  test('keeps entries as objects (no JSON on the hot path)', async () => {
    const store = new MemoryStore();
    const engine = createEngine({ store, views: [] });
    await engine.renderString('<% cache 60 box %><b>x</b><% endcache %>');
    const [key] = await collect(store.keys('fc:1:f:'));
    const entry = store.sync.get(key)!;
    expect(entry.body).toBe('<b>x</b>');
    expect(typeof entry.tags).toBe('object');
  });

  test('stores tags as flat [key, version] pairs; a variant\'s tag version reads back as the version its entries carry', async () => {
    const store = new MemoryStore();
    const engine = createEngine({ store, views: [] });
    const tpl = '<% cache 60 box 7 tags=["t1"] %>{{ v }}<% endcache %>';
    await engine.renderString(tpl, { v: 1 });
    const [key] = await collect(store.keys('fc:1:f:'));
    const tags = store.sync.get(key)!.tags!;
    expect(tags.length).toBe(6); // name tag, variant tag, user tag
    const variant = tags.findIndex((t, i) => i % 2 === 0 && t.includes(':tag:v/'));
    expect(store.sync.get(tags[variant])!.body).toBe(tags[variant + 1]);
    expect(await engine.renderString(tpl, { v: 2 })).toBe('1');
    await engine.invalidate('box', [7]);
    expect(store.sync.get(tags[variant])!.body).not.toBe(tags[variant + 1]);
    expect(await engine.renderString(tpl, { v: 2 })).toBe('2');
  });

  test('rejects a bad maxBytes', () => {
    expect(() => new MemoryStore({ maxBytes: -1 })).toThrow(/option "maxBytes".*got -1/);
  });
});

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const x of it) out.push(x);
  return out;
}
