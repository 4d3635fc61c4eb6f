/**
 * Dependency digests: editing a template a block depends on (through includes, macro imports, their own
 * includes, declared dependencies) makes exactly that block miss; unrelated edits keep every entry.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createEngine, type Engine, type FragcacheWarning } from '../lib';
import { views } from './support/views';

/** Status of each fragment of one render, by name. */
async function statuses(engine: Engine, name: string, data: object = {}): Promise<Record<string, string>> {
  const r = await engine.explain(name, data);
  return Object.fromEntries(r.fragments.map((f) => [f.name, f.status]));
}

const SITE = {
  'page.njk': [
    '<% import "macros/ui.njk" as ui %>',
    '<% cache 60 viaInclude %>[<% include "partials/a.njk" %>]<% endcache %>',
    '<% cache 60 viaMacro %>[{{ ui.badge("x") }}]<% endcache %>',
    '<% cache 60 plain %>[plain]<% endcache %>',
  ].join('\n'),
  'partials/a.njk': 'A<% include "partials/b.njk" %>',
  'partials/b.njk': 'B1',
  'macros/ui.njk': '<% macro badge(label) %>{{ label }}:<% include "partials/c.njk" %><% endmacro %>',
  'partials/c.njk': 'C1',
  'unrelated.njk': 'U1',
};

describe('dependency digests', () => {
  const engines: Engine[] = [];
  const engine = (dir: string, extra: object = {}) => {
    const e = createEngine({ views: dir, leakGuard: 'off', ...extra });
    engines.push(e);
    return e;
  };
  afterAll(async () => Promise.all(engines.map((e) => e.close())));

  test('editing a partial two levels down through an include misses that block only', async () => {
    const dir = views(SITE);
    const e = engine(dir, { noCache: true });
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'miss', viaMacro: 'miss', plain: 'miss' });
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'hit', viaMacro: 'hit', plain: 'hit' });
    writeFileSync(path.join(dir, 'partials/b.njk'), 'B2');
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'miss', viaMacro: 'hit', plain: 'hit' });
    expect(await e.render('page.njk')).toContain('[AB2]');
  });

  test('editing a partial included by an imported macro misses the block that calls it', async () => {
    const dir = views(SITE);
    const e = engine(dir, { noCache: true });
    await e.render('page.njk');
    writeFileSync(path.join(dir, 'partials/c.njk'), 'C2');
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'hit', viaMacro: 'miss', plain: 'hit' });
    expect(await e.render('page.njk')).toContain('[x:C2]');
    writeFileSync(path.join(dir, 'macros/ui.njk'), '<% macro badge(label) %>{{ label }}!<% include "partials/c.njk" %><% endmacro %>');
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'hit', viaMacro: 'miss', plain: 'hit' });
  });

  test('an unrelated edit keeps every entry', async () => {
    const dir = views(SITE);
    const e = engine(dir, { noCache: true });
    await e.render('page.njk');
    writeFileSync(path.join(dir, 'unrelated.njk'), 'U2');
    // The page itself, outside its blocks: not part of any block's output.
    writeFileSync(path.join(dir, 'page.njk'), `${SITE['page.njk']}\n<p>footer</p>`);
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'hit', viaMacro: 'hit', plain: 'hit' });
  });

  test('a macro of the same template: editing it misses the blocks that call it', async () => {
    const dir = views({
      'm.njk': '<% macro hi(n) %>hi {{ n }}<% endmacro %><% cache 60 calls %>{{ hi(1) }}<% endcache %><% cache 60 other %>-<% endcache %>',
    });
    const e = engine(dir, { noCache: true });
    await e.render('m.njk');
    writeFileSync(path.join(dir, 'm.njk'), '<% macro hi(n) %>hello {{ n }}<% endmacro %><% cache 60 calls %>{{ hi(1) }}<% endcache %><% cache 60 other %>-<% endcache %>');
    expect(await statuses(e, 'm.njk')).toEqual({ calls: 'miss', other: 'hit' });
    expect(await e.render('m.njk')).toBe('hello 1-');
  });

  test('with the loader cache, a watched change recompiles the templates that depend on it', async () => {
    const dir = views(SITE);
    const e = engine(dir); // noCache: false
    await e.render('page.njk');
    writeFileSync(path.join(dir, 'partials/b.njk'), 'B2');
    // The loader has not seen the change: the old templates render, and their entries stay consistent with them.
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'hit', viaMacro: 'hit', plain: 'hit' });
    // What Nunjucks' watcher (chokidar) does on a change: the loader emits `update` for the file.
    const loader = (e.env as unknown as { loaders: (NodeJS.EventEmitter & { cache: Record<string, unknown> })[] }).loaders[0];
    loader.emit('update', 'partials/b.njk', path.join(dir, 'partials/b.njk'));
    expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'miss', viaMacro: 'hit', plain: 'hit' });
    expect(await e.render('page.njk')).toContain('[AB2]');
  });

  test('watch: true: a change seen by the watcher recompiles the dependents (the watcher closes with the engine)', async () => {
    const dir = views(SITE);
    const e = createEngine({ views: dir, leakGuard: 'off', watch: true });
    try {
      await new Promise((r) => (e as unknown as { watcher: NodeJS.EventEmitter }).watcher.once('ready', r));
      await e.render('page.njk');
      const updated = new Promise((r) => (e.env as unknown as NodeJS.EventEmitter).on('update', r));
      writeFileSync(path.join(dir, 'partials/c.njk'), 'C2');
      await updated;
      expect(await statuses(e, 'page.njk')).toEqual({ viaInclude: 'hit', viaMacro: 'miss', plain: 'hit' });
      expect(await e.render('page.njk')).toContain('[x:C2]');
    } finally {
      await e.close();
    }
  });

  test('digests name templates, not folders: the same views in two places give the same keys', async () => {
    const one = engine(views(SITE));
    const two = engine(views(SITE));
    const keys = async (e: Engine) => (await e.explain('page.njk')).fragments.map((f) => f.key);
    expect(await keys(one)).toEqual(await keys(two));
  });

  test('cycles and diamonds are followed once', async () => {
    const dir = views({
      'p.njk': '<% cache 60 box %><% include "x.njk" %><% endcache %>',
      'x.njk': 'x<% if deep %><% include "y.njk" %><% endif %><% include "z.njk" %>',
      'y.njk': 'y<% include "x.njk" %><% include "z.njk" %>',
      'z.njk': 'z1',
    });
    const e = engine(dir, { noCache: true });
    expect(await e.render('p.njk')).toBe('xz1');
    writeFileSync(path.join(dir, 'z.njk'), 'z2');
    expect(await statuses(e, 'p.njk')).toEqual({ box: 'miss' });
  });

  describe('dynamic names', () => {
    const warnings = (e: Engine) => {
      const got: FragcacheWarning[] = [];
      e.on('warning', (w) => got.push(w));
      return got;
    };

    test('are reported once, at compile time, with where they are', async () => {
      const dir = views({ 'd.njk': '<% cache 60 dyn %><% include tpl %><% endcache %>', 'x.njk': 'X' });
      const e = engine(dir);
      const got = warnings(e);
      expect(await e.render('d.njk', { tpl: 'x.njk' })).toBe('X');
      await e.render('d.njk', { tpl: 'x.njk' });
      expect(got).toHaveLength(1);
      expect(got[0]).toMatchObject({ kind: 'dynamic-dependency', fragment: 'dyn', line: 1 });
      expect(got[0].message).toMatch(/dyn \(.*d\.njk:1\) depends on include tpl, whose name is an expression/);
      expect(got[0].message).toMatch(/deps=\["partials\/x\.njk"\]/);
    });

    test('a dynamic include inside a dependency is reported too', async () => {
      const dir = views({ 'd.njk': '<% cache 60 outer %><% include "mid.njk" %><% endcache %>', 'mid.njk': '<% include which %>', 'x.njk': 'X' });
      const e = engine(dir);
      const got = warnings(e);
      await e.render('d.njk', { which: 'x.njk' });
      expect(got.map((w) => w.message)).toEqual([expect.stringMatching(/outer .* depends on include which \(in .*mid\.njk:1\)/)]);
    });

    test('declared with deps=: no warning, and editing the declared template misses', async () => {
      const dir = views({ 'd.njk': '<% cache 60 dyn deps=["x.njk"] %><% include tpl %><% endcache %>', 'x.njk': 'X1' });
      const e = engine(dir, { noCache: true });
      const got = warnings(e);
      await e.render('d.njk', { tpl: 'x.njk' });
      writeFileSync(path.join(dir, 'x.njk'), 'X2');
      expect(await statuses(e, 'd.njk', { tpl: 'x.njk' })).toEqual({ dyn: 'miss' });
      expect(await e.render('d.njk', { tpl: 'x.njk' })).toBe('X2');
      expect(got).toEqual([]);
    });

    test('declared in a Template Dependency comment, as in Rails', async () => {
      const dir = views({ 'd.njk': '{# Template Dependency: x.njk #}\n<% cache 60 dyn %><% include tpl %><% endcache %>', 'x.njk': 'X1' });
      const e = engine(dir, { noCache: true });
      const got = warnings(e);
      await e.render('d.njk', { tpl: 'x.njk' });
      writeFileSync(path.join(dir, 'x.njk'), 'X2');
      expect(await statuses(e, 'd.njk', { tpl: 'x.njk' })).toEqual({ dyn: 'miss' });
      expect(got).toEqual([]);
    });

    test('deps= takes a list of strings', async () => {
      const e = engine(views({ 'bad.njk': '<% cache 60 b deps="x.njk" %>x<% endcache %>' }));
      await expect(e.render('bad.njk')).rejects.toThrow(/deps= takes a list of strings/);
    });
  });
});

describe('fragcache preview shows the effect', () => {
  test('on a persistent store, after an included partial changes, the fragment including it misses and the others hit', () => {
    const root = path.resolve(__dirname, '..');
    const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-digest-preview-'));
    cpSync(path.join(root, 'templates'), dir, { recursive: true });
    const preview = () =>
      spawnSync(process.execPath, [path.join(root, 'dist', 'cli', 'index.js'), 'preview', 'page.njk', '--views', dir, '--data', path.join(dir, 'data', 'page.yaml'), '--store', `sqlite://${path.join(dir, 'c.db')}`, '--explain'], {
        cwd: dir,
        encoding: 'utf8',
      });
    const status = (stderr: string, name: string) => new RegExp(`^${name}\\s.*\\s(hit|miss)\\s`, 'm').exec(stderr)?.[1];
    expect(preview().status).toBe(0);
    // The card partial changes outside its own cache block: the card entries stay, the front page (which includes it) misses.
    writeFileSync(path.join(dir, 'partials', 'article-card.njk'), '<!-- edited -->\n' + readFileSync(path.join(dir, 'partials', 'article-card.njk'), 'utf8'));
    const r = preview();
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('<!-- edited -->');
    expect([status(r.stderr, 'nav'), status(r.stderr, 'front-page'), status(r.stderr, '  └ article-card'), status(r.stderr, 'popular'), status(r.stderr, 'sidebar')]).toEqual(['hit', 'miss', 'hit', 'hit', 'hit']);
  }, 30_000);
});
