import Keyv from 'keyv';
import { AsyncTemplateError, createEngine, KeyvStore, TemplateError, type FragmentEvent } from '../lib';
import { counter, views, writeTemplates } from './support/views';

const keyvStore = () => new KeyvStore(new Keyv(), { shared: false });

describe('digests', () => {
  test('editing a block body invalidates its old entries; digest=false shares like Django', async () => {
    const dir = views({ 'a.njk': '<% cache 60 box %>one<% endcache %>', 'b.njk': '<% cache 60 box %>two<% endcache %>' });
    const engine = createEngine({ views: dir, noCache: true });
    expect(await engine.render('a.njk')).toBe('one');
    expect(await engine.render('b.njk')).toBe('two'); // same name, different body: never each other's output
    writeTemplates(dir, { 'a.njk': '<% cache 60 box %>one, edited<% endcache %>' });
    expect(await engine.render('a.njk')).toBe('one, edited');

    const shared = views({ 'a.njk': '<% cache 60 box digest=false %>one<% endcache %>', 'b.njk': '<% cache 60 box digest=false %>two<% endcache %>' });
    const django = createEngine({ views: shared });
    expect(await django.render('a.njk')).toBe('one');
    expect(await django.render('b.njk')).toBe('one');
  });
});

describe('when= (cache_if)', () => {
  test('caches only when truthy; otherwise the body renders every time', async () => {
    const c = counter();
    const engine = createEngine({ views: views({ 'p.njk': '<% cache 60 box when=anon %>{{ v | count }}<% endcache %>' }) });
    engine.env.addFilter('count', c.filter);
    await engine.render('p.njk', { anon: false, v: 'u1' });
    expect(await engine.render('p.njk', { anon: false, v: 'u2' })).toBe('u2');
    expect(c.runs()).toBe(2);
    await engine.render('p.njk', { anon: true, v: 'a' });
    expect(await engine.render('p.njk', { anon: true, v: 'b' })).toBe('a');
    expect(c.runs()).toBe(3);
  });
});

describe('scope', () => {
  test('a miss renders in the current scope: loop variables, macro arguments, set values', async () => {
    const engine = createEngine({ views: views({}) });
    const src = '<% set greeting = "hi" %><% macro m(who) %><% for i in [1,2] %><% cache 60 s who i %>{{ greeting }} {{ who }} {{ i }} {{ loop.last }};<% endcache %><% endfor %><% endmacro %>{{ m("ann") }}{{ m("bob") }}';
    const expected = 'hi ann 1 false;hi ann 2 true;hi bob 1 false;hi bob 2 true;';
    expect(await engine.renderString(src)).toBe(expected);
    expect(await engine.renderString(src)).toBe(expected);
  });
});

describe('escaping', () => {
  test.each([true, false])('output is identical on miss and hit, never escaped twice (autoescape %s)', async (autoescape) => {
    const engine = createEngine({ views: views({}), nunjucks: { autoescape } });
    const src = '<% cache 60 e %>{{ v }}|{{ v | safe }}|{{ v | escape }}<% endcache %>';
    const miss = await engine.renderString(src, { v: '<a href="x">&</a>' });
    expect(miss).toBe(autoescape ? '&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;|<a href="x">&</a>|&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;' : '<a href="x">&</a>|<a href="x">&</a>|&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;');
    expect(await engine.renderString(src, { v: 'other' })).toBe(miss);
  });
});

describe.each([
  ['memory', () => 'memory' as const],
  ['keyv', keyvStore],
])('single-flight (%s store)', (_label, store) => {
  test('concurrent renders that miss the same fragment render its body once', async () => {
    const c = counter();
    const engine = createEngine({ views: views({ 'p.njk': '<% cache 60 slow %>{{ v | count }}<% endcache %><% cache 60 other v %>{{ v }}<% endcache %>' }), store: store() });
    engine.env.addFilter('count', c.filter);
    const outs = await Promise.all(Array.from({ length: 50 }, () => engine.render('p.njk', { v: 'x' })));
    expect(new Set(outs)).toEqual(new Set(['xx']));
    expect(c.runs()).toBe(1);
    expect(engine.stats().fragments.slow).toMatchObject({ misses: 1, hits: 49, stores: 1 });
    // On a same-tick store this holds by construction: each render is one synchronous pass, so the first one has
    // stored the fragment before the next starts. Should renders there ever take several passes, the count above
    // would depend on the in-process claims instead: this says which case the test is exercising.
    const { passes } = await engine.explain('p.njk', { v: 'y' });
    expect(passes).toBe(_label === 'memory' ? 1 : 2);
  });
});

test('single-flight: the first miss\'s error goes to every waiter, and nothing is stored', async () => {
  let calls = 0;
  const engine = createEngine({ views: views({ 'p.njk': '<% cache 60 boom %>{{ explode() }}<% endcache %>' }), store: keyvStore() });
  const explode = () => {
    calls++;
    throw new Error('body failed');
  };
  const results = await Promise.allSettled(Array.from({ length: 5 }, () => engine.render('p.njk', { explode })));
  expect(results.every((r) => r.status === 'rejected')).toBe(true);
  for (const r of results) expect((r as PromiseRejectedResult).reason.message).toMatch(/body failed/);
  expect(calls).toBe(1);
  expect(engine.stats().stores).toBe(0);
  // Next render tries again (the error was not cached).
  await expect(engine.render('p.njk', { explode })).rejects.toBeInstanceOf(TemplateError);
  expect(calls).toBe(2);
});

test('batched passes: all fragments of a level are fetched in one getMany', async () => {
  const keyv = new Keyv();
  const store = new KeyvStore(keyv, { shared: false });
  let batches = 0;
  const getMany = store.getMany.bind(store);
  store.getMany = (keys) => {
    batches++;
    return getMany(keys);
  };
  const engine = createEngine({ views: views({ 'p.njk': '<% for i in range(20) %><% cache 60 row i %>{{ i }}<% endcache %><% endfor %>' }), store });
  await engine.render('p.njk');
  batches = 0;
  const { html, passes } = await engine.explain('p.njk');
  expect(html).toBe(Array.from({ length: 20 }, (_, i) => i).join(''));
  expect(passes).toBe(2);
  expect(batches).toBeLessThanOrEqual(2); // entries (+ tag versions) in one batch, dependency versions in at most one more
});

test('an async filter gives a clear AsyncTemplateError, never a silent loss', async () => {
  const engine = createEngine({ views: views({ 'p.njk': '<% cache 60 a %>{{ 1 | later }}<% endcache %>' }) });
  engine.env.addFilter('later', (x: unknown, cb: (e: null, r: unknown) => void) => setImmediate(() => cb(null, x)), true);
  await expect(engine.render('p.njk')).rejects.toBeInstanceOf(AsyncTemplateError);
  await expect(engine.render('p.njk')).rejects.toThrow(/^p\.njk: cache "a" \(line 1\): its body uses an asynchronous filter/);
});

describe('observability', () => {
  test('stats per fragment name and hit/miss/store/invalidate events', async () => {
    const engine = createEngine({ views: views({ 'p.njk': '<% cache 60 a v %>A<% endcache %><% cache 60 b %>B<% endcache %>' }) });
    const events: [string, FragmentEvent | unknown][] = [];
    for (const ev of ['hit', 'miss', 'store', 'invalidate'] as const) engine.on(ev, (e: unknown) => events.push([ev, e]));
    await engine.render('p.njk', { v: 1 });
    await engine.render('p.njk', { v: 1 });
    await engine.render('p.njk', { v: 2 });
    await engine.invalidate('b');
    const s = engine.stats();
    expect(s).toMatchObject({ hits: 3, misses: 3, stores: 3, errors: 0 });
    expect(s.fragments.a).toMatchObject({ hits: 1, misses: 2, stores: 2 });
    expect(s.fragments.b).toMatchObject({ hits: 2, misses: 1, stores: 1 });
    expect(events.filter(([e]) => e === 'miss').map(([, p]) => (p as FragmentEvent).name)).toEqual(['a', 'b', 'a']);
    expect(events.at(-1)).toEqual(['invalidate', { kind: 'name', target: 'b' }]);
  });

  test('explain lists fragments in order of appearance, nested ones with their depth', async () => {
    const engine = createEngine({ views: views({ 'p.njk': '<% cache 60 outer tags=["t"] %><% cache 60 inner 1 %>i<% endcache %><% endcache %><% cache 0 live %>x<% endcache %>' }) });
    const miss = await engine.explain('p.njk');
    expect(miss.fragments.map((f) => [f.name, f.status, f.depth])).toEqual([['outer', 'miss', 0], ['inner', 'miss', 1], ['live', 'uncached', 0]]);
    expect(miss.fragments[0]).toMatchObject({ tags: ['t'], size: 1, ttlLeft: 60 });
    const hit = await engine.explain('p.njk');
    expect(hit.fragments.map((f) => [f.name, f.status])).toEqual([['outer', 'hit'], ['live', 'uncached']]);
  });
});

test('a fragment whose key changes on every pass still renders (uncached) within maxPasses', async () => {
  let n = 0;
  const engine = createEngine({ views: views({}), store: keyvStore(), maxPasses: 4 });
  const html = await engine.renderString('<% cache 60 clock tick() %>t<% endcache %>', { tick: () => ++n });
  expect(html).toBe('t');
  expect(n).toBe(4);
});

test('single-flight never deadlocks: two renders holding fragments nested in opposite orders both finish', async () => {
  const engine = createEngine({
    views: views({
      'p1.njk': '<% cache 60 A digest=false %>[A<% cache 60 B digest=false %>B<% endcache %>]<% endcache %>',
      'p2.njk': '<% cache 60 B digest=false %>[B<% cache 60 A digest=false %>A<% endcache %>]<% endcache %>',
    }),
    store: keyvStore(),
  });
  const [one, two] = await Promise.all([engine.render('p1.njk'), engine.render('p2.njk')]);
  expect(one.startsWith('[A')).toBe(true);
  expect(two.startsWith('[B')).toBe(true);
});
