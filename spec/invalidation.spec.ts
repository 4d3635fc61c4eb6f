import { EventEmitter } from 'node:events';
import Keyv from 'keyv';
import { createEngine, KeyvStore, MemoryStore, StoreError, type Store } from '../lib';
import { nameTag } from '../lib/keys';
import { counter, views } from './support/views';

const site = {
  'card.njk': '<% cache 60 card a.id tags=["article:" ~ a.id] %><li>{{ a.title | count }}</li><% endcache %>',
  'macros.njk': '<% macro badge(n) %><% cache 60 badge n %><b>{{ n | count }}</b><% endcache %><% endmacro %>',
  'list.njk':
    '<% import "macros.njk" as ui %><% cache 60 list %><ul><% for a in articles %><% include "card.njk" %><% endfor %></ul>{{ ui.badge(count) }}<% endcache %>',
  'page.njk': '<% cache 60 page %><main><% include "list.njk" %></main><% endcache %>|<% cache 60 footer %>F{{ 1 | count }}<% endcache %>',
  'other.njk': '<% cache 60 card a.id %>a different body<% endcache %>',
};

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const k of it) out.push(k);
  return out;
}

function setup(store: () => Store | 'memory' = () => 'memory') {
  const c = counter();
  const engine = createEngine({ views: views(site), store: store() });
  engine.env.addFilter('count', c.filter);
  const data = (titles: string[]) => ({ articles: titles.map((title, i) => ({ id: i + 1, title })), count: titles.length });
  return { engine, runs: c.runs, data };
}

describe.each([
  ['memory', () => 'memory' as const],
  ['keyv', () => new KeyvStore(new Keyv(), { shared: false })],
])('invalidation (%s store)', (_label, store) => {
  test('invalidate(name) drops every variant, in every template and digest', async () => {
    const { engine, runs } = setup(store);
    const ctx = (id: number) => ({ a: { id, title: `t${id}` } });
    await engine.render('card.njk', ctx(1));
    await engine.render('card.njk', ctx(2));
    await engine.render('other.njk', ctx(1));
    expect(runs()).toBe(2);
    await engine.render('card.njk', ctx(1));
    await engine.render('card.njk', ctx(2));
    expect(runs()).toBe(2);
    await engine.invalidate('card');
    await engine.render('card.njk', ctx(1));
    await engine.render('card.njk', ctx(2));
    expect(runs()).toBe(4);
  });

  test('invalidate(name, vary) drops one variant only', async () => {
    const { engine, runs } = setup(store);
    const ctx = (id: number) => ({ a: { id, title: `t${id}` } });
    await engine.render('card.njk', ctx(1));
    await engine.render('card.njk', ctx(2));
    await engine.invalidate('card', [2]);
    await engine.render('card.njk', ctx(1));
    expect(runs()).toBe(2);
    expect(await engine.render('card.njk', { a: { id: 2, title: 'new' } })).toBe('<li>new</li>');
    expect(runs()).toBe(3);
    await engine.invalidate('card', ['2']); // the string "2" is another variant: nothing to drop
    await engine.render('card.njk', ctx(2));
    expect(runs()).toBe(3);
  });

  test('Russian doll: an outer hit runs no inner block; invalidating an inner fragment (through includes and macros) drops every fragment containing it', async () => {
    const { engine, runs, data } = setup(store);
    const first = await engine.render('page.njk', data(['a', 'b']));
    expect(first).toBe('<main><ul><li>a</li><li>b</li></ul><b>2</b></main>|F1');
    const cold = runs();
    // Two cards, one badge, the footer. On a remote store a cold page renders in passes, and a fragment that
    // follows one still unknown in its pass renders again in the next (its first output was provisional).
    if (_label === 'memory') expect(cold).toBe(4);
    else expect(cold).toBeGreaterThanOrEqual(4);
    expect(await engine.render('page.njk', data(['x', 'y']))).toBe(first); // outer hit
    expect(runs()).toBe(cold);

    // A tag on a card, two levels down (page > list > include card), drops list and page, not the footer.
    await engine.invalidateTag('article:2');
    expect(await engine.render('page.njk', data(['a', 'B2']))).toBe('<main><ul><li>a</li><li>B2</li></ul><b>2</b></main>|F1');
    expect(runs()).toBe(cold + 1); // only card 2 re-rendered: card 1, badge and footer were hits

    // One variant of the macro's fragment drops what contains it.
    await engine.invalidate('badge', [2]);
    expect(await engine.render('page.njk', data(['a', 'B2']))).toContain('<b>2</b>');
    expect(runs()).toBe(cold + 2);

    // By name, at depth.
    await engine.invalidate('card');
    expect(await engine.render('page.njk', data(['A1', 'B3']))).toContain('<li>A1</li><li>B3</li>');
    expect(runs()).toBe(cold + 4);
  });

  test('invalidation survives eviction: a lost tag version never makes old entries valid again', async () => {
    const s = store();
    const { engine, runs } = setup(() => s);
    const ctx = { a: { id: 1, title: 'one' } };
    await engine.render('card.njk', ctx);
    // The store loses the tag version record (evicted).
    const tagKey = engine.cache.tagKey(nameTag('card'));
    await engine.cache.store.deleteMany([tagKey]);
    expect(await engine.render('card.njk', { a: { id: 1, title: 'two' } })).toBe('<li>two</li>');
    expect(runs()).toBe(2);
    expect(await engine.render('card.njk', ctx)).toBe('<li>two</li>'); // and the new entry is valid
    expect(runs()).toBe(2);
  });

  test('invalidateOn binds app events to names and tags', async () => {
    const { engine, runs } = setup(store);
    const articles = new EventEmitter();
    const unbind = engine.invalidateOn(articles, 'saved', (a: { id: number }) => ({ tags: [`article:${a.id}`], names: [{ name: 'badge', vary: [1] }] }));
    await engine.render('card.njk', { a: { id: 5, title: 'five' } });
    articles.emit('saved', { id: 5 });
    await engine.settled();
    expect(await engine.render('card.njk', { a: { id: 5, title: 'FIVE' } })).toBe('<li>FIVE</li>');
    expect(runs()).toBe(2);
    unbind();
    articles.emit('saved', { id: 5 });
    await engine.settled();
    await engine.render('card.njk', { a: { id: 5, title: 'x' } });
    expect(runs()).toBe(2);
  });
});

describe('invalidation survives eviction on the memory store (evicted by filling it to its bound)', () => {
  test('an entry stamped before an invalidation stays invalid after the new tag version is evicted', async () => {
    const s = new MemoryStore({ maxBytes: 40_000 });
    const { engine, runs } = setup(() => s);
    const ctx = (title: string) => ({ a: { id: 1, title } });
    expect(await engine.render('other.njk', ctx('x'))).toBe('a different body'); // name "card", another digest
    await engine.render('card.njk', ctx('one'));
    await engine.invalidate('card');
    const tagKey = engine.cache.tagKey(nameTag('card'));
    const otherKey = (await collect(s.keys(`${engine.cache.prefix}:`))).find((k) => k.includes(':f:card/') && s.sync.get(k)?.body === 'a different body')!;
    expect(otherKey).toBeDefined();
    // Fill the store with unrelated values, keeping the old entry recently used, until the tag version is evicted.
    const present = async (k: string) => (await collect(s.keys(k))).includes(k); // (a get would make it recently used)
    for (let i = 0; (await present(tagKey)) || i < 3; i++) {
      s.sync.get(otherKey);
      await engine.cache.set(`junk${i}`, 'j'.repeat(2000));
      if (i > 1000) throw new Error('the tag version was never evicted');
    }
    expect(await present(otherKey)).toBe(true); // the old entry survived; its tag version did not
    const hits = engine.cache.stats().fragments.card.hits;
    await engine.render('other.njk', ctx('x'));
    expect(engine.cache.stats().fragments.card.hits).toBe(hits); // a miss: the entry stamped before the invalidation is not served
    expect(await engine.render('card.njk', ctx('two'))).toBe('<li>two</li>');
    expect(runs()).toBe(2);
  });
});

describe('invalidation with a failing store', () => {
  test('a failed invalidation rejects; renders still work uncached', async () => {
    const inner = new MemoryStore();
    let down = false;
    const failing: Store = {
      kind: 'flaky',
      shared: true,
      getMany: (keys) => (down ? Promise.reject(new Error('connection refused')) : inner.getMany(keys)),
      setMany: (w) => (down ? Promise.reject(new Error('connection refused')) : inner.setMany(w)),
      add: (k, e, t) => (down ? Promise.reject(new Error('connection refused')) : inner.add(k, e, t)),
      deleteMany: (k) => (down ? Promise.reject(new Error('connection refused')) : inner.deleteMany(k)),
      clear: (p) => inner.clear(p),
      close: async () => undefined,
    };
    const c = counter();
    const engine = createEngine({ views: views(site), store: failing, breaker: { failures: 100 } });
    engine.env.addFilter('count', c.filter);
    const errors: Error[] = [];
    engine.on('error', (e) => errors.push(e));
    const ctx = { a: { id: 1, title: 'one' } };
    await engine.render('card.njk', ctx);
    down = true;
    await expect(engine.invalidate('card')).rejects.toBeInstanceOf(StoreError);
    await expect(engine.invalidateTag('article:1')).rejects.toThrow(/connection refused/);
    expect(await engine.render('card.njk', ctx)).toBe('<li>one</li>');
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0]).toBeInstanceOf(StoreError);
  });
});
