/**
 * The leak guard: templates with known leaks and known-safe blocks give exactly the expected findings.
 */
import { createEngine, leakGuardOf, TemplateError, type EngineOptions, type FragcacheWarning } from '../lib';
import { views } from './support/views';

/** Compiles `entry` (and what it pulls in) with the guard on; returns the findings' messages. */
function findings(files: Record<string, string>, entry = 'p.njk', options: EngineOptions = {}): FragcacheWarning[] {
  const e = createEngine({ views: views(files), leakGuard: 'warn', ...options });
  const got: FragcacheWarning[] = [];
  e.on('warning', (w) => got.push(w));
  e.env.addGlobal('year', 2026);
  e.env.addFilter('money', (x: unknown) => `$${String(x)}`);
  e.env.getTemplate(entry, true);
  return got.filter((w) => w.kind === 'leak' || w.kind === 'secret');
}
const messages = (files: Record<string, string>, entry?: string, options?: EngineOptions) => findings(files, entry, options).map((w) => w.message);

describe('leak guard: known-safe blocks give no finding', () => {
  test.each([
    ['vary on the whole object', '<% cache 60 s user %>{{ user.name }}<% endcache %>'],
    ['vary on a field of it', '<% cache 60 s user.id %>{{ user.name }} {{ user["email"] }}<% endcache %>'],
    ['loop variables and loop', '<% cache 60 s list %><% for a, b in list %>{{ a }}{{ b.x }}{{ loop.index }}<% endfor %><% endcache %>'],
    ['a loop around the block, varied on', '<% for a in items %><% cache 60 s a.id %>{{ a.title }}<% endcache %><% endfor %>'],
    ['macro arguments around the block', '<% macro badge(label, n=1) %><% cache 60 s label n %>{{ label }}{{ n }}<% endcache %><% endmacro %>{{ badge("x") }}'],
    ['a macro defined and called in the body', '<% cache 60 s %><% macro m(x) %>{{ x }}{{ caller() }}<% endmacro %><% call m(1) %>c<% endcall %><% endcache %>'],
    ['set inside the body', '<% cache 60 s %><% set t = "a" %><% set u %>b<% endset %>{{ t }}{{ u }}<% endcache %>'],
    ['a constant set at the top', '<% set cls = "x" %><% cache 60 s %>{{ cls }}<% endcache %>'],
    ['a name set at the top from what the block varies on', '<% set who = user.name | upper %><% cache 60 s user.id %>{{ who }}<% endcache %>'],
    ['a tag shared=', '<% cache 60 s shared=["nav", "site.name"] %>{{ nav[0].href }}{{ site.name }}<% endcache %>'],
    ['filters, tests and globals are no variables', '<% cache 60 s v %>{{ v | money | upper }}{% if v is divisibleby(3) %}{% endif %}{{ year }}{{ range(3) | length }}<% endcache %>'],
    ['an imported macro (no context: it sees only its arguments)', '<% import "m.njk" as m %><% cache 60 s %>{{ m.hi("x") }}<% endcache %>'],
    ['a literal-only body', '<% cache 60 s %><p>static</p><% endcache %>'],
    ['keyword arguments and dict keys are names', '<% cache 60 s v %>{{ {a: v} | dump }}<% endcache %>'],
  ])('%s', (_what, page) => {
    expect(messages({ 'p.njk': page, 'm.njk': '<% macro hi(x) %>{{ x }}{{ user.name }}<% endmacro %>' })).toEqual([]);
  });

  test('engine-wide shared variables', () => {
    expect(messages({ 'p.njk': '<% cache 60 s %>{{ site.name }}{{ nav | length }}<% endcache %>' }, 'p.njk', { leakGuard: { mode: 'warn', shared: ['site', 'nav'] } })).toEqual([]);
  });

  test('a filter that reads a global is invisible here (the verify sampling covers it)', () => {
    expect(messages({ 'p.njk': '<% cache 60 s v %>{{ v | money }}<% endcache %>' })).toEqual([]);
  });
});

describe('leak guard: known leaks give exactly the expected findings', () => {
  test('a body reading user data with no vary: the message says what, where and why', () => {
    const [w, ...rest] = findings({ 'p.njk': 'x\n<% cache 60 sidebar %>Hi {{ user.name }}, {{ user.unread }}<% endcache %>' });
    expect(rest).toEqual([]);
    expect(w).toMatchObject({ kind: 'leak', fragment: 'sidebar', line: 2, column: 4, variable: 'user', path: 'user.name' });
    expect(w.message).toMatch(/^sidebar \(.*p\.njk:2\) reads "user\.name" but does not vary on "user": every user would see the first user's sidebar$/);
  });

  test('varied on something else: only the unvaried variable', () => {
    expect(messages({ 'p.njk': '<% cache 60 s article.id %>{{ article.title }}{{ user.name }}<% endcache %>' })).toEqual([expect.stringContaining('reads "user.name" but does not vary on "user"')]);
  });

  test('an include that reads user data, two levels down', () => {
    expect(messages({ 'p.njk': '<% cache 60 s %><% include "a.njk" %><% endcache %>', 'a.njk': '<% include "b.njk" %>', 'b.njk': '\n{{ user.name }}' })).toEqual([
      expect.stringMatching(/reads "user\.name" but does not vary on "user": .* \(read in .*b\.njk:2\)$/),
    ]);
  });

  test('a macro of the template reading the context, and one imported with context', () => {
    expect(messages({ 'p.njk': '<% macro greet() %>{{ user.name }}<% endmacro %><% cache 60 s %>{{ greet() }}<% endcache %>' })).toEqual([expect.stringContaining('"user.name"')]);
    expect(messages({ 'p.njk': '<% import "m.njk" as m with context %><% cache 60 s %>{{ m.hi(1) }}<% endcache %>', 'm.njk': '<% macro hi(x) %>{{ x }}{{ cart.total }}<% endmacro %>' })).toEqual([
      expect.stringContaining('reads "cart.total" but does not vary on "cart"'),
    ]);
    expect(messages({ 'p.njk': '<% from "m.njk" import hi with context %><% cache 60 s %>{{ hi(1) }}<% endcache %>', 'm.njk': '<% macro hi(x) %>{{ cart.total }}<% endmacro %>' })).toEqual([expect.stringContaining('"cart.total"')]);
  });

  test('a name set at the top from data the block does not vary on', () => {
    expect(messages({ 'p.njk': '<% set who = user.name %><% cache 60 s article.id %>{{ who }}<% endcache %>' })).toEqual([expect.stringContaining('reads "who" but does not vary on "who"')]);
  });

  test('a loop variable around the block that the block does not vary on', () => {
    expect(messages({ 'p.njk': '<% for a in items %><% cache 60 card %>{{ a.title }}<% endcache %><% endfor %>' })).toEqual([expect.stringContaining('reads "a.title" but does not vary on "a"')]);
  });

  test('a context function, a dynamic key, a set from user data', () => {
    expect(messages({ 'p.njk': '<% cache 60 s %>{{ greeting() }}{{ prefs[key] }}<% set n = user.name %>{{ n }}<% endcache %>' })).toEqual([
      expect.stringContaining('reads "greeting"'),
      expect.stringContaining('reads "key"'),
      expect.stringContaining('reads "prefs"'),
      expect.stringContaining('reads "user.name"'),
    ]);
  });

  test('nested blocks: the outer one stores the inner output, so it must vary too', () => {
    const got = findings({ 'p.njk': '<% cache 60 outer %><% cache 60 inner user.id %>{{ user.name }}<% endcache %><% endcache %>' });
    expect(got.map((w) => [w.fragment, w.variable])).toEqual([['outer', 'user']]);
  });

  test('per-request secrets: a CSRF field, a nonce attribute, a token variable', () => {
    const got = findings({
      'p.njk': '<% cache 60 form %><form><input type="hidden" name="_csrf" value="{{ csrfToken }}"></form><% endcache %><% cache 60 js %><script nonce="{{ nonce }}">x()</script><% endcache %>',
    });
    expect(got.map((w) => `${w.fragment}: ${w.kind}`)).toEqual(['form: secret', 'form: secret', 'js: secret', 'js: secret']);
    expect(got[0].message).toMatch(/^form \(.*p\.njk:1\) emits a CSRF token field: cached, every user would get the first user's/);
    expect(got[1].message).toContain('emits a per-request secret ("csrfToken")');
    expect(got[2].message).toContain('emits a nonce attribute');
  });

  test('each finding is given once per engine, however often the template compiles', () => {
    const e = createEngine({ views: views({ 'p.njk': '<% cache 60 s %>{{ user.name }}<% endcache %>' }), leakGuard: 'warn', noCache: true });
    const got: FragcacheWarning[] = [];
    e.on('warning', (w) => got.push(w));
    e.env.getTemplate('p.njk', true);
    e.env.getTemplate('p.njk', true);
    expect(got).toHaveLength(1);
  });
});

describe('leak guard modes', () => {
  const leaky = { 'p.njk': 'a\n<% cache 60 sidebar %>{{ user.name }}<% endcache %>' };

  test('error: the render fails, naming the template, line and finding', async () => {
    const e = createEngine({ views: views(leaky), leakGuard: 'error' });
    const err = await e.render('p.njk', { user: { name: 'x' } }).catch((x) => x);
    expect(err).toBeInstanceOf(TemplateError);
    expect(err.message).toMatch(/p\.njk:2:\d+: leak guard: sidebar .* reads "user\.name" but does not vary on "user"/);
  });

  test('off: no analysis, no finding', async () => {
    const e = createEngine({ views: views(leaky), leakGuard: 'off' });
    const got: FragcacheWarning[] = [];
    e.on('warning', (w) => got.push(w));
    expect(await e.render('p.njk', { user: { name: 'x' } })).toBe('a\nx');
    expect(got).toEqual([]);
  });

  test('defaults: warn, except off in production; bad values are option errors', () => {
    expect(leakGuardOf(undefined, 'development', '')).toEqual({ mode: 'warn', shared: [] });
    expect(leakGuardOf(undefined, 'production', '')).toEqual({ mode: 'off', shared: [] });
    expect(leakGuardOf({ shared: ['site'] }, 'production', '')).toEqual({ mode: 'off', shared: ['site'] });
    expect(leakGuardOf('error', 'production', '').mode).toBe('error');
    // FRAGCACHE_LEAK_GUARD sets the default for a process; an explicit mode wins; a bad value names the variable.
    expect(leakGuardOf(undefined, 'production', 'error').mode).toBe('error');
    expect(leakGuardOf(undefined, 'development', 'off').mode).toBe('off');
    expect(leakGuardOf('warn', 'development', 'off').mode).toBe('warn');
    expect(() => leakGuardOf(undefined, 'development', 'loud')).toThrow(/FRAGCACHE_LEAK_GUARD/);
    expect(() => createEngine({ leakGuard: 'loud' as never })).toThrow(/leakGuard\.mode/);
    expect(() => createEngine({ leakGuard: { shared: 'site' as never } })).toThrow(/leakGuard\.shared/);
  });

  test('shared= takes a list of strings', async () => {
    const e = createEngine({ views: views({ 'p.njk': '<% cache 60 s shared=site %>x<% endcache %>' }) });
    await expect(e.render('p.njk')).rejects.toThrow(/shared= takes a list of strings/);
  });
});
