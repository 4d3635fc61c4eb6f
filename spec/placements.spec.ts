import Keyv from 'keyv';
import nunjucks from 'nunjucks';
import { createEngine, KeyvStore } from '../lib';
import { counter, views } from './support/views';

/**
 * Every place a block tag can stand, rendered through the engine (miss, then hit) and compared with plain
 * Nunjucks rendering the same templates with the cache tags removed. Nunjucks' own async extensions lose
 * output in several of these (mozilla/nunjucks #1252, #1363, #617, #792).
 */
const strip = (src: string) => src.replace(/<%-? ?(end)?cache\b[^%]*-?%>/g, '');

const partials: Record<string, string> = {
  'inc.njk': '[<% cache 60 inc i %>I{{ i | count }}<% endcache %>]',
  'lib.njk': '<% macro m(x) %>M(<% cache 60 mac x %>{{ x | count }}<% endcache %>)<% endmacro %>',
  'base.njk': 'B<% block b %>base<% endblock %>E',
  'child.njk': '<% extends "base.njk" %><% block b %>C<% cache 60 blk %>in{{ v | count }}<% endcache %>{{ super() }}<% endblock %>',
  'deep.njk': 'D<% include "inc.njk" %>',
};

const cases: Record<string, string> = {
  'top level': '<% cache 60 a %><b>{{ v | count }}</b><% endcache %>',
  'inside if': '<% if v %><% cache 60 a %>{{ v | count }}<% endcache %><% endif %>',
  'inside for (loop variables)': '<% for i in [1, 2, 3] %><% cache 60 row i loop.index %>{{ i | count }}:{{ loop.index }}<% endcache %><% endfor %>',
  'inside for over an object': '<% for k, x in {a: 1, b: 2} %><% cache 60 kv k %>{{ k | count }}={{ x }}<% endcache %><% endfor %>',
  'inside a macro (arguments)': '<% macro m(x) %>M(<% cache 60 m x %>{{ x | count }}<% endcache %>)<% endmacro %>{{ m(1) }}{{ m(2) }}',
  'inside an imported macro': '<% import "lib.njk" as lib %>{{ lib.m(3) }}<% from "lib.njk" import m %>{{ m(4) }}',
  'inside a set capture': '<% set x %><% cache 60 s %>S{{ v | count }}<% endcache %><% endset %><{{ x }}>',
  'inside a call body': '<% macro w() %>W[{{ caller() }}]<% endmacro %><% call w() %><% cache 60 c %>C{{ v | count }}<% endcache %><% endcall %>',
  'inside a filter block': '<% filter upper %><% cache 60 f %>f{{ v | count }}<% endcache %><% endfilter %>',
  'inside an include': '<% set i = 7 %><% include "inc.njk" %>',
  'include inside a loop': '<% for i in [1, 2] %><% include "inc.njk" %><% endfor %>',
  'include inside if inside a loop': '<% for i in [1, 2] %><% if i %><% include "deep.njk" %><% endif %><% endfor %>',
  'extends / block / super()': '<% include "child.njk" %>',
  'nested cache blocks': '<% cache 60 outer %>O{{ v | count }}<% cache 60 inner %>I{{ v | count }}<% endcache %><% endcache %>',
  'set inside the body (scope)': '<% set y = "Y" %><% cache 60 sc %>{{ y | count }}{{ v }}<% endcache %>',
  'autoescape, SafeString and | safe': '<% cache 60 esc %>{{ v | count }}{{ "<i>" | safe }}{{ raw }}<% endcache %>',
};

const ctx = { v: '<x & "y">', raw: '<b>bold</b>' };

describe.each([
  ['memory store (one pass)', () => 'memory' as const],
  ['Keyv store (batched passes)', () => new KeyvStore(new Keyv(), { shared: false })],
])('placements on the %s', (_label, store) => {
  test.each(Object.entries(cases))('%s: miss and hit give the uncached output; a hit runs no body', async (_name, source) => {
    const dir = views({ ...partials, 'page.njk': source });
    const c = counter();
    const engine = createEngine({ views: dir, store: store() });
    engine.env.addFilter('count', c.filter);

    // The reference: plain Nunjucks, same delimiters, cache tags removed.
    const plainDir = views(Object.fromEntries(Object.entries({ ...partials, 'page.njk': source }).map(([k, v]) => [k, strip(v)])));
    const plain = new nunjucks.Environment(new nunjucks.FileSystemLoader(plainDir), { autoescape: true, tags: { blockStart: '<%', blockEnd: '%>' } });
    plain.addFilter('count', (x: unknown) => x);
    const expected = plain.render('page.njk', ctx);
    expect(expected.length).toBeGreaterThan(0);

    const miss = await engine.render('page.njk', ctx);
    expect(miss).toBe(expected);
    const afterMiss = c.runs();
    expect(afterMiss).toBeGreaterThan(0);

    const hit = await engine.render('page.njk', ctx);
    expect(hit).toBe(expected);
    expect(c.runs()).toBe(afterMiss); // nothing inside a cached body ran again
  });
});

test('plain synchronous env.render() works with the memory store and caches', () => {
  const c = counter();
  const engine = createEngine({ views: views({ ...partials, 'page.njk': cases['include inside a loop'] }) });
  engine.env.addFilter('count', c.filter);
  const first = engine.env.render('page.njk', {});
  expect(first).toBe('[I1][I2]');
  expect(engine.env.render('page.njk', {})).toBe(first);
  expect(c.runs()).toBe(2);
});
