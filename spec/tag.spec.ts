import nunjucks from 'nunjucks';
import { CacheExtension, createEngine, FragmentArgumentError, TemplateError, type FragcacheWarning } from '../lib';
import { counter, views } from './support/views';

function engineWith(files: Record<string, string> = {}, syntax: 'angle' | 'curly' = 'angle') {
  const c = counter();
  const engine = createEngine({ views: views(files), syntax });
  engine.env.addFilter('count', c.filter);
  return { engine, runs: c.runs };
}

async function errorOf(p: Promise<unknown>): Promise<TemplateError> {
  try {
    await p;
  } catch (err) {
    return err as TemplateError;
  }
  throw new Error('expected the render to fail');
}

describe('the cache tag: syntax', () => {
  test('angle syntax by default, curly on request, and inside anyone\'s Environment', async () => {
    const angle = engineWith();
    expect(await angle.engine.renderString('<% cache 60 a %>A{{ 1 + 1 }}<% endcache %>')).toBe('A2');
    const curly = engineWith({}, 'curly');
    expect(await curly.engine.renderString('{% cache 60 a %}C{{ 1 + 1 }}{% endcache %}')).toBe('C2');
    // Added to a plain Environment: the tag uses that environment's delimiters.
    const env = new nunjucks.Environment();
    const engine = createEngine();
    env.addExtension('FragmentCache', new CacheExtension(() => engine.cache));
    expect(env.renderString('{% cache 60 plain %}P{% endcache %}', {})).toBe('P');
    expect(env.renderString('{% cache 60 plain %}other{% endcache %}', {})).toBe('other'); // different body → different digest
  });

  test('fixed: in your own Environment, fragments are stored again after an invalidation (the reused session restarts its clock)', async () => {
    const engine = createEngine();
    const env = new nunjucks.Environment(null, { autoescape: true });
    env.addExtension('FragmentCache', new CacheExtension(engine));
    const tpl = '{% cache 60 box tags=["d"] %}{{ v }}{% endcache %}';
    expect(env.renderString(tpl, { v: 1 })).toBe('1');
    const now = Date.now();
    const clock = jest.spyOn(Date, 'now').mockReturnValue(now + 10);
    try {
      await engine.invalidateTag('d');
      clock.mockReturnValue(now + 5000); // well past the unknown-since window after the invalidation
      expect(env.renderString(tpl, { v: 2 })).toBe('2');
      expect(env.renderString(tpl, { v: 3 })).toBe('2'); // stored, not fenced against the first render's start
      expect(engine.stats().fenced).toBe(0);
    } finally {
      clock.mockRestore();
    }
  });

  test('CacheExtension in your own Environment takes an engine, a FragmentCache, a resolver, or nothing', async () => {
    const engine = createEngine({ views: [], stores: { side: 'memory' } });
    const runs: string[] = [];
    const make = (ext: CacheExtension) => {
      const env = new nunjucks.Environment(null, { autoescape: true });
      env.addExtension('FragmentCache', ext);
      env.addGlobal('run', (what: string) => (runs.push(what), ''));
      return env;
    };
    const tpl = '{% cache 60 box v %}{{ run("box") }}<b>{{ v }}</b>{% endcache %}{% cache 60 other using="side" %}{{ run("other") }}o{% endcache %}';
    const viaEngine = make(new CacheExtension(engine));
    expect(viaEngine.renderString(tpl, { v: '<1>' })).toBe('<b>&lt;1&gt;</b>o');
    expect(viaEngine.renderString(tpl, { v: '<1>' })).toBe('<b>&lt;1&gt;</b>o');
    expect(runs).toEqual(['box', 'other']);
    // The engine's stores are the ones used: engine.render() hits what the own Environment stored, and invalidation works.
    expect(await engine.renderString('<% cache 60 box v %>never<% endcache %>', { v: '<1>' })).toBe('never'); // other body, other digest
    await engine.invalidate('box');
    expect(viaEngine.renderString(tpl, { v: '<1>' })).toBe('<b>&lt;1&gt;</b>o');
    expect(runs).toEqual(['box', 'other', 'box']);
    // No target: a private memory store. A FragmentCache: that cache.
    const alone = make(new CacheExtension());
    expect(alone.renderString('{% cache 60 a %}{{ run("a") }}A{% endcache %}', {}) + alone.renderString('{% cache 60 a %}{{ run("a") }}A{% endcache %}', {})).toBe('AA');
    expect(runs.filter((r) => r === 'a')).toHaveLength(1);
    const cached = make(new CacheExtension(engine.cache));
    expect(cached.renderString('{% cache 60 c %}C{% endcache %}', {})).toBe('C');
    expect(engine.cache.stats().fragments.c).toMatchObject({ misses: 1, stores: 1 });
    expect(() => new CacheExtension(42 as never)).toThrow(/option "CacheExtension"/);
  });

  test('arguments may be separated by spaces or commas', async () => {
    const { engine, runs } = engineWith();
    const t = (sep: string) => `<% cache 60${sep} box${sep} x${sep} y %>{{ x | count }}-{{ y }}<% endcache %>`;
    expect(await engine.renderString(t(' '), { x: 1, y: 2 })).toBe('1-2');
    expect(await engine.renderString(t(','), { x: 1, y: 2 })).toBe('1-2');
    expect(runs()).toBe(1); // same name, vary, body: the comma form hits the space form's entry
  });

  test('the name is taken literally, never looked up; identifiers may contain _ - . :', async () => {
    const { engine, runs } = engineWith();
    const ctx = { sidebar: 'not-used', v: 'x' };
    for (const name of ['sidebar', 'side-bar', 'side.bar', 'side:bar', 'side_bar2', '"side bar"']) {
      expect(await engine.renderString(`<% cache 60 ${name} %>{{ v | count }}<% endcache %>`, ctx)).toBe('x');
    }
    expect(runs()).toBe(6);
    expect(Object.keys(engine.stats().fragments).sort()).toEqual(['side bar', 'side-bar', 'side.bar', 'side:bar', 'side_bar2', 'sidebar']);
  });

  test('ttl: seconds, fractions, durations, none; 0 renders every time; the ttl is not part of the key', async () => {
    const { engine, runs } = engineWith();
    for (const ttl of ['60', '0.5', '"90s"', '"15m"', '"1h"', '"2d"', 'none', 'secs']) {
      expect(await engine.renderString(`<% cache ${ttl} same %>{{ 1 | count }}<% endcache %>`, { secs: 30 })).toBe('1');
    }
    expect(runs()).toBe(1);
    for (let i = 0; i < 3; i++) await engine.renderString('<% cache 0 zero %>{{ 1 | count }}<% endcache %>');
    expect(runs()).toBe(4);
  });
});

describe('a template written with {% %} under the angle syntax', () => {
  it('emits one warning per template, naming it with line and column and suggesting syntax: curly', async () => {
    const { engine } = engineWith({ 'a.njk': 'x\n  {%- cache 60 y %}1{% endcache %}', 'b.njk': '<% cache 60 z %>{{ "{%" }} if %}<% endcache %>', 'c.njk': 'a {% b %} c' });
    const warnings: FragcacheWarning[] = [];
    engine.on('warning', (w) => warnings.push(w));
    await engine.render('a.njk');
    await engine.render('a.njk');
    expect(await engine.render('c.njk')).toBe('a {% b %} c'); // not a Nunjucks tag: no warning
    expect(await engine.render('b.njk')).toBe('{% if %}'); // "{%" in an expression: no warning
    expect(warnings.map((w) => [w.template, w.line, w.column, w.message])).toEqual([
      ['a.njk', 2, 3, expect.stringMatching(/^a\.njk:2:3: "\{%- cache" is a Nunjucks \{% %\} tag, but this engine uses the angle syntax .* syntax: 'curly'/)],
    ]);
    expect(warnings[0].kind).toBe('syntax');
  });

  it('says nothing under the curly syntax, and goes to process.emitWarning without a listener', async () => {
    const curly = engineWith({ 'a.njk': '{% cache 60 y %}1{% endcache %}' }, 'curly').engine;
    const emitted = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    try {
      expect(await curly.render('a.njk')).toBe('1');
      expect(emitted).not.toHaveBeenCalled();
      const angle = engineWith({ 'a.njk': '{% if x %}1{% endif %}' }).engine;
      await angle.render('a.njk');
      expect(emitted).toHaveBeenCalledTimes(1);
      expect(emitted.mock.calls[0][0]).toMatch(/^a\.njk:1:1: "\{% if" is a Nunjucks/);
    } finally {
      emitted.mockRestore();
    }
  });
});

describe('the cache tag: errors', () => {
  const compileCases: [string, string, RegExp, number, number][] = [
    ['no arguments', 'ok\n  <% cache %>x<% endcache %>', /needs a ttl and a name/, 2, 6],
    ['only one argument', 'ok\n<% cache 60 %>x<% endcache %>', /needs a name after the ttl/, 2, 4],
    ['a name that is neither identifier nor string', '<% cache 60 a/b %>x<% endcache %>', /name must be an identifier.*"a\/b"/, 1, 13],
    ['a name that is an object', '<% cache 60 {a: 1} %>x<% endcache %>', /name must be an identifier/, 1, 13],
    ['an unknown option', '<% cache 60 box colour="red" %>x<% endcache %>', /unknown option "colour"/, 1, 17],
    ['a missing endcache', 'a\nb\n<% cache 60 box %>x', /no endcache/, 3, 4],
    ['digest= that is not a boolean', '<% cache 60 box digest=1 %>x<% endcache %>', /digest= takes true or false/, 1, 17],
  ];
  test.each(compileCases)('compile error: %s (template, line, column)', async (_label, source, message, line, column) => {
    const { engine } = engineWith({ 'broken.njk': source });
    const err = await errorOf(engine.render('broken.njk'));
    expect(err).toBeInstanceOf(TemplateError);
    expect(err.message).toMatch(message);
    expect(err.template).toBe('broken.njk');
    expect([err.line, err.column]).toEqual([line, column]);
    expect(err.message).toMatch(new RegExp(`^broken\\.njk:${line}:${column}: `));
  });

  const renderCases: [string, string, object, RegExp][] = [
    ['a negative ttl', '<% cache -5 box %>x<% endcache %>', {}, /ttl must be a finite number of seconds >= 0, got -5/],
    ['a NaN ttl', '<% cache t box %>x<% endcache %>', { t: NaN }, /ttl must be a finite number.*got NaN/],
    ['an unparseable ttl', '<% cache t box %>x<% endcache %>', { t: 'soon' }, /ttl must be seconds or a duration.*got "soon"/],
    ['an undefined ttl', '<% cache nope box %>x<% endcache %>', {}, /got undefined/],
    ['tags that are not a list', '<% cache 60 box tags="a" %>x<% endcache %>', {}, /tags must be a list of non-empty strings, got "a"/],
    ['tags that are not strings', '<% cache 60 box tags=[1] %>x<% endcache %>', {}, /tags must be a list of non-empty strings/],
    ['an unknown store alias', '<% cache 60 box using="nope" %>x<% endcache %>', {}, /unknown store alias "nope"/],
    ['a function as vary value', '<% cache 60 box f %>x<% endcache %>', { f: () => 1 }, /cannot vary on a function/],
  ];
  test.each(renderCases)('render error: %s (template, line, the value)', async (_label, source, ctx, message) => {
    const { engine } = engineWith({ 'bad.njk': `<p>\n  ${source}` });
    const err = await errorOf(engine.render('bad.njk', ctx));
    expect(err).toBeInstanceOf(TemplateError);
    expect(err.message).toMatch(message);
    expect(err.template).toBe('bad.njk');
    expect(err.line).toBe(2);
    expect(err.cause).toBeInstanceOf(FragmentArgumentError);
  });

  test('an error inside the body fails the render with template and line, and stores nothing', async () => {
    const { engine, runs } = engineWith({ 'body.njk': 'a\n<% cache 60 box %>{{ 1 | count }}\n{{ missing() }}<% endcache %>' });
    const err = await errorOf(engine.render('body.njk'));
    expect(err).toBeInstanceOf(TemplateError);
    expect(err.message).toMatch(/Unable to call `missing`/);
    expect(err.template).toBe('body.njk');
    expect(err.line).toBeGreaterThanOrEqual(2);
    expect(engine.stats().stores).toBe(0);
    await errorOf(engine.render('body.njk'));
    expect(runs()).toBe(2); // nothing was stored: the body ran again
  });

  test('errors in an included template name the included file', async () => {
    const { engine } = engineWith({ 'outer.njk': 'x<% include "inner.njk" %>', 'inner.njk': 'one\ntwo <% cache -1 box %>x<% endcache %>' });
    const err = await errorOf(engine.render('outer.njk'));
    expect(err.template).toBe('inner.njk');
    expect(err.line).toBe(2);
  });

  test('a missing template is a TemplateError naming it', async () => {
    const { engine } = engineWith();
    const err = await errorOf(engine.render('nope.njk'));
    expect(err).toBeInstanceOf(TemplateError);
    expect(err.message).toMatch(/template not found: nope\.njk/);
  });

  test('a missing include, import or parent names the template that pulls it in, with line and column', async () => {
    const { engine } = engineWith({
      'page.njk': 'a\n<% cache 60 box %>\n  <% include "part.njk" %>\n<% endcache %>',
      'part.njk': 'x\n\n    <% include "gone.njk" %>',
      'child.njk': '<% extends "no-layout.njk" %>',
      'macros.njk': '<% import "no-macros.njk" as m %>{{ m.x() }}',
    });
    const where = async (name: string) => {
      const err = await errorOf(engine.render(name));
      expect(err).toBeInstanceOf(TemplateError);
      return [err.message, err.template, err.line, err.column];
    };
    expect(await where('page.njk')).toEqual(['part.njk:3:8: template not found: gone.njk', 'part.njk', 3, 8]);
    expect(await where('child.njk')).toEqual(['child.njk:1:4: template not found: no-layout.njk', 'child.njk', 1, 4]);
    expect(await where('macros.njk')).toEqual(['macros.njk:1:4: template not found: no-macros.njk', 'macros.njk', 1, 4]);
  });
});
