/**
 * `fragcache lint` and `lintTemplates`: the leak guard over folders, for CI. The sample templates and the
 * example app lint clean; a folder with leaks exits 1 and lists each once.
 */
import path from 'node:path';
import { lintTemplates } from '../lib/lint';
import { collect, type Run } from './support/spawn';
import { views } from './support/views';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'dist', 'cli', 'index.js');

function cli(args: string[]): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['FRAGCACHE_STORE', 'FRAGCACHE_LEAK_GUARD', 'NO_COLOR', 'FORCE_COLOR']) delete env[k];
  return collect(process.execPath, [BIN, ...args], { cwd: ROOT, env });
}

const LEAKY = {
  'layout.njk': '<html>\n<% cache 60 sidebar %><% include "partials/sidebar.njk" %><% endcache %>\n<% cache 60 nav %>{{ site.name }}<% endcache %>',
  'partials/sidebar.njk': 'Hello {{ user.name }}',
  'form.njk': '<% cache 60 form %><input type="hidden" name="csrfmiddlewaretoken" value="x"><% endcache %>',
  'dyn.njk': '<% cache 60 d shared=["tpl"] %><% include tpl %><% endcache %>',
  'safe.njk': '<% cache 60 s user.id %>{{ user.name }}<% endcache %>',
};

describe('lintTemplates', () => {
  test.each([['templates'], ['examples/express/views']])('%s lints clean', async (dir) => {
    const r = await lintTemplates({ views: path.join(ROOT, dir) });
    expect(r.templates.length).toBeGreaterThan(3);
    expect(r.problems).toEqual([]);
  });

  test('a folder with leaks: every problem once, dynamic names as notes, shared names declared', async () => {
    const r = await lintTemplates({ views: views(LEAKY) });
    expect(r.templates).toEqual(['dyn.njk', 'form.njk', 'layout.njk', 'partials/sidebar.njk', 'safe.njk']);
    expect(r.problems.map((p) => `${p.kind} ${'fragment' in p ? p.fragment : ''}`)).toEqual(['secret form', 'leak sidebar', 'leak nav']);
    expect(r.notes.map((n) => n.kind)).toEqual(['dynamic-dependency']);
    const shared = await lintTemplates({ views: views(LEAKY), shared: ['site'], templates: ['layout.njk'] });
    expect(shared.problems.map((p) => ('variable' in p ? p.variable : ''))).toEqual(['user']);
  });

  test('a template that does not compile is a problem', async () => {
    const r = await lintTemplates({ views: views({ 'bad.njk': 'x\n<% cache %><% endcache %>' }) });
    expect(r.problems).toEqual([{ kind: 'error', template: 'bad.njk', message: expect.stringMatching(/bad\.njk:2:\d+: cache tag needs a ttl and a name/) }]);
  });
});

describe('fragcache lint', () => {
  test('clean: exit 0 with a summary', async () => {
    const r = await cli(['lint', '--views', 'examples/express/views']);
    expect(r).toMatchObject({ code: 0, stdout: '' });
    expect(r.stderr).toMatch(/^6 templates: 0 problems, 0 notes\n$/);
  });

  test('leaks: exit 1, one line each; --shared declares; --json for tools', async () => {
    const dir = views(LEAKY);
    const r = await cli(['lint', '--views', dir]);
    expect(r.code).toBe(1);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[1]).toMatch(/^leak {2}sidebar \(.*layout\.njk:2\) reads "user\.name" but does not vary on "user": every user would see the first user's sidebar \(read in .*sidebar\.njk:1\)$/);
    expect(lines[3]).toMatch(/^note {2}d \(.*dyn\.njk:1\) depends on include tpl/);
    expect(r.stderr).toMatch(/5 templates: 3 problems, 1 note/);
    const some = await cli(['lint', 'layout.njk', '--views', dir, '--shared', 'site,nav', '--json']);
    expect(some.code).toBe(1);
    const json = JSON.parse(some.stdout);
    expect(json.templates).toEqual(['layout.njk']);
    expect(json.problems).toEqual([expect.objectContaining({ kind: 'leak', fragment: 'sidebar', variable: 'user', path: 'user.name', line: 2, column: 4 })]);
  });
});

describe('fragcache preview and serve', () => {
  test('print the leak guard findings on stderr as warnings (stdout stays the HTML)', async () => {
    const dir = views({ 'p.njk': '<% cache 60 box %>{{ user.name }}<% endcache %>' });
    const r = await cli(['preview', 'p.njk', '--views', dir]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(''); // the body renders nothing (no user)
    expect(r.stderr).toMatch(/^warning: box \(.*p\.njk:1\) reads "user\.name" but does not vary on "user": every user would see the first user's box\n$/);
  });
});
