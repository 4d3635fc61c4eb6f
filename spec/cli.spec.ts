/**
 * The built CLI (`dist/cli/index.js`, built by `npm test` before jest) run as a subprocess: preview,
 * deps, help/version, colours, config precedence, and every user and usage error.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { collect, type Run } from './support/spawn';
import { views } from './support/views';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'dist', 'cli', 'index.js');

/** Runs the built CLI; the environment is cleaned of what would change its behaviour. */
function cli(args: string[], options: { cwd?: string; env?: Record<string, string | undefined> } = {}): Promise<Run> {
  const env: Record<string, string | undefined> = { ...process.env, FRAGCACHE_STORE: undefined, NO_COLOR: undefined, FORCE_COLOR: undefined };
  Object.assign(env, options.env);
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
  return collect(process.execPath, [BIN, ...args], { cwd: options.cwd ?? ROOT, env: env as NodeJS.ProcessEnv });
}

/** Runs the CLI inside a pseudo-terminal (util-linux `script`), so stdout and stderr are TTYs. */
function cliOnTty(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const quoted = [process.execPath, BIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const e: NodeJS.ProcessEnv = { ...process.env, TERM: 'xterm', ...env };
  delete e.FRAGCACHE_STORE;
  if (!('NO_COLOR' in env)) delete e.NO_COLOR;
  delete e.FORCE_COLOR;
  // (Under `script` the CLI's stdout and stderr both arrive on the pseudo-terminal: in `stdout`.)
  return collect('script', ['-qec', quoted, '/dev/null'], { cwd: ROOT, env: e });
}

const ESC = '\x1b[';
const hasScript = existsSync('/usr/bin/script');
if (!hasScript && process.env.CI === 'true') throw new Error('/usr/bin/script is missing: CI must run the TTY colour test (apt-get install -y bsdutils)');
if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run "npm run build" first (npm test does)`);

function tmp(): string {
  return mkdtempSync(path.join(tmpdir(), 'fragcache-cli-'));
}

describe('fragcache preview', () => {
  // Exactly the command of `npm run preview` (the README's first command), minus the build step.
  const PREVIEW = ['preview', 'page.njk', '--data', 'templates/data/page.yaml', '--explain'];

  test('npm run preview: stdout is the pure HTML, stderr the explain table of every fragment in page order, nested ones indented', async () => {
    const r = await cli(PREVIEW);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith('<!doctype html>')).toBe(true);
    expect(r.stdout).toContain('<a href="/articles/1">Caching fragments &lt;safely&gt;</a>');
    expect(r.stdout).toContain('Hello, Ada. You have 3 unread messages.');
    expect(r.stdout).not.toMatch(/\bmiss\b|fc:1:|\x1b/); // nothing of the table leaks into the HTML
    const lines = r.stderr.split('\n');
    expect(lines[0]).toMatch(/^run 1\/1 .* 0 hit, 9 miss/);
    expect(lines[1].split(/\s{2,}/)).toEqual(['fragment', 'vary', 'key', 'status', 'time', 'size', 'ttl left', 'tags']);
    const rows = lines.slice(2).filter((l) => l.trim());
    const names = rows.map((l) => l.match(/^(\s*(?:└ )?)(\S+)/)!.slice(1, 3).join(''));
    expect(names).toEqual(['nav', 'front-page', '  └ article-card', '  └ article-card', '  └ article-card', 'popular', '  └ badge', '  └ badge', 'sidebar']);
    const card = rows[2];
    expect(card).toContain('1, "2026-11-20T10:00:00Z"');
    expect(card).toMatch(/fc:1:f:article-card\/[0-9a-f]{12}\/=n1;s20:2026-11-20T10:00:00Z/);
    expect(card).toMatch(/ miss +\d+\.\d+ms +123 B +(59m\d+s|1h) +article:1$/);
    expect(rows[1]).toMatch(/ miss .* (4m\d+s|5m) +articles$/);
    expect(rows[8]).toMatch(/^sidebar +7 +fc:1:f:sidebar\/\w+\/=n7; +miss .* (1m\d+s|2m)\s*$/);
  });

  test('--repeat shows the miss run, then the hits, each with its timing', async () => {
    const r = await cli(['preview', 'page.njk', '-d', 'templates/data/page.yaml', '--repeat', '3', '--explain']);
    expect(r.code).toBe(0);
    expect(r.stdout.match(/<!doctype html>/g)).toHaveLength(1); // the page once
    const heads = r.stderr.split('\n').filter((l) => l.startsWith('run '));
    expect(heads).toHaveLength(3);
    expect(heads[0]).toMatch(/^run 1\/3 +\d+(\.\d+)?ms .*0 hit, 9 miss/);
    // Hits serve the outer fragments whole: their nested ones are not even looked at.
    expect(heads[1]).toMatch(/^run 2\/3 +\d+(\.\d+)?ms .*4 hit, 0 miss/);
    expect(heads[2]).toMatch(/^run 3\/3 .*4 hit, 0 miss/);
    expect(r.stderr.trim().split('\n').at(-1)).toMatch(/^runs 2-3 +median \d+(\.\d+)?ms +p95 .* min .* max /);
    const tables = r.stderr.split(/^run \d\/3.*$/m).slice(1);
    expect(tables[1]).toMatch(/^front-page .* hit /m);
    expect(tables[1]).not.toMatch(/article-card/);
  });

  test('a long --repeat shows the first runs and the last, then a summary of the repeat runs', async () => {
    const r = await cli(['preview', 'page.njk', '-d', 'templates/data/page.yaml', '--repeat', '40']);
    expect(r.code).toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines.map((l) => l.split(/\s/)[1])).toEqual(['1/40', '2/40', '3/40', '4/40', '5/40', '40/40', '2-40']);
    expect(lines[6]).toMatch(/^runs 2-40 +median \S+ms +p95 \S+ms +min \S+ms +max \S+ms$/);
  });

  test('without --explain stderr stays empty; --repeat alone prints one timing line per run', async () => {
    const plain = await cli(['preview', 'page.njk', '-d', 'templates/data/page.yaml']);
    expect(plain.code).toBe(0);
    expect(plain.stderr).toBe('');
    const rep = await cli(['preview', 'page.njk', '-d', 'templates/data/page.yaml', '-r', '2']);
    expect(rep.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^run 1\/2 .*9 miss/), expect.stringMatching(/^run 2\/2 .*4 hit/)]);
  });

  test('JSON data, --views and --syntax curly', async () => {
    const dir = views({ 'hello.html': '{% cache 60 greet name %}Hello {{ name }}{% endcache %}' });
    const data = path.join(dir, 'd.json');
    writeFileSync(data, JSON.stringify({ name: 'Ada' }));
    const r = await cli(['preview', 'hello.html', '--views', dir, '--syntax', 'curly', '--data', data, '--explain']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('Hello Ada\n');
    expect(r.stderr).toMatch(/^greet +"Ada" +fc:1:f:greet\/\w+\/=s3:Ada +miss/m);
  });

  test('a template written with {% %} under the default angle syntax: a warning names it once and suggests --syntax curly', async () => {
    const dir = views({ 'curly.njk': 'Hi\n{% include "part.njk" %}\n', 'part.njk': '  {% cache 60 x %}{{ n }}{% endcache %}' });
    const r = await cli(['preview', 'curly.njk', '--views', dir, '--repeat', '2']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('{% include "part.njk" %}'); // output as text: that is what the warning is about
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning:'));
    expect(warnings).toEqual([
      'warning: curly.njk:2:1: "{% include" is a Nunjucks {% %} tag, but this engine uses the angle syntax (<% %>), where it is output as text. Write <% include … %>, or use syntax: \'curly\' (fragcache --syntax curly) for templates written with {% %}.',
    ]);
    const curly = await cli(['preview', 'curly.njk', '--views', dir, '--syntax', 'curly']);
    expect([curly.code, curly.stderr]).toEqual([0, '']);
  });

  test('a template without fragments says so', async () => {
    const dir = views({ 'plain.njk': 'just text' });
    const r = await cli(['preview', 'plain.njk', '--views', dir, '--explain']);
    expect(r.stdout).toBe('just text\n');
    expect(r.stderr).toContain('(no cache fragments in this render)');
  });
});

describe('errors: file:line:column, the offending line, exit 1, no stack unless --debug', () => {
  const dir = views({
    'syntax.njk': 'line one\n<p>ok</p>\n  <% if %>x<% endif %>\n',
    'outer.njk': 'a\n<% include "inner.njk" %>\n',
    'inner.njk': 'one\ntwo {{ nope() }}\n',
    'neg.njk': 'x\n  <% cache -5 box %>hi<% endcache %>\n',
  });
  const rel = (f: string) => path.relative(ROOT, path.join(dir, f));

  test('a syntax error', async () => {
    const r = await cli(['preview', 'syntax.njk', '--views', dir]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`error: ${rel('syntax.njk')}:3:9: unexpected token: %>\n 3 |   <% if %>x<% endif %>\n   |         ^\n`);
  });

  test('a runtime error in an included template names the included file and its line', async () => {
    const r = await cli(['preview', 'outer.njk', '--views', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error: ${rel('inner.njk')}:2:12: `);
    expect(r.stderr).toContain('Unable to call `nope`');
    expect(r.stderr).toContain(' 2 | two {{ nope() }}');
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  test('a bad cache tag argument', async () => {
    const r = await cli(['preview', 'neg.njk', '--views', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^error: ${rel('neg.njk').replace(/[.]/g, '\\.')}:2:6: .*ttl must be a finite number of seconds >= 0, got -5\n 2 \\|   <% cache -5 box %>`));
  });

  test('--debug adds the stack trace', async () => {
    const r = await cli(['preview', 'syntax.njk', '--views', dir, '--debug']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/TemplateError: syntax\.njk:3:9: unexpected token[\s\S]*\n\s+at /);
  });

  test('a missing template, a missing data file, bad YAML, data that is not an object', async () => {
    const missing = await cli(['preview', 'nope.njk']);
    expect([missing.code, missing.stderr]).toEqual([1, 'error: template not found: nope.njk (views: templates)\n']);
    const noData = await cli(['preview', 'page.njk', '--data', 'nope.yaml']);
    expect([noData.code, noData.stderr]).toEqual([1, 'error: data file not found: nope.yaml\n']);
    const d = tmp();
    writeFileSync(path.join(d, 'bad.yaml'), 'a: 1\nb: [unclosed\n');
    const badYaml = await cli(['preview', 'page.njk', '--data', path.join(d, 'bad.yaml')]);
    expect(badYaml.code).toBe(1);
    expect(badYaml.stderr).toMatch(/^error: data file .*bad\.yaml:\d+:\d+: invalid YAML: /);
    writeFileSync(path.join(d, 'list.json'), '[1,2]');
    const list = await cli(['preview', 'page.njk', '--data', path.join(d, 'list.json')]);
    expect(list.code).toBe(1);
    expect(list.stderr).toMatch(/list\.json: expected an object/);
    writeFileSync(path.join(d, 'bad.json'), '{"a":');
    const badJson = await cli(['preview', 'page.njk', '--data', path.join(d, 'bad.json')]);
    expect(badJson.code).toBe(1);
    expect(badJson.stderr).toMatch(/bad\.json:1:6: invalid JSON: Unexpected end of JSON input\n 1 \| \{"a":\n/);
  });

  test('an unknown store scheme names the option and the value', async () => {
    const r = await cli(['preview', 'page.njk', '--store', 'bogus://x']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: option "store": expected "memory" or a URL with a known scheme .*got "bogus:\/\/x"\n$/);
  });

  test('fixed: --views=dir (the = form) quotes the file and the offending line, as --views dir does', async () => {
    const expected = `error: ${rel('syntax.njk')}:3:9: unexpected token: %>\n 3 |   <% if %>x<% endif %>\n   |         ^\n`;
    const eq = await cli(['preview', 'syntax.njk', `--views=${dir}`]);
    expect([eq.code, eq.stderr]).toEqual([1, expected]);
    const deps = await cli(['deps', 'syntax.njk', `--views=${dir}`]);
    expect(deps.code).toBe(1);
    expect(deps.stderr).toContain(`${rel('syntax.njk')}:3:`);
    expect(deps.stderr).toContain(' 3 |   <% if %>x<% endif %>');
    // Views from a --config file (not the working directory's config) locate the file too.
    const cfgDir = tmp();
    writeFileSync(path.join(cfgDir, 'other.json'), JSON.stringify({ views: dir }));
    const viaConfig = await cli(['preview', 'syntax.njk', `--config=${path.join(cfgDir, 'other.json')}`]);
    expect([viaConfig.code, viaConfig.stderr]).toEqual([1, expected]);
    const debug = await cli(['preview', 'syntax.njk', `--views=${dir}`, '--debug']);
    expect(debug.stderr).toMatch(/\n\s+at /);
  });

  test('fixed: a YAML data file error is a clean file:line:column: message, with the offending line', async () => {
    const d = tmp();
    writeFileSync(path.join(d, 'bad.yaml'), 'a: 1\nb: [unclosed\n');
    const r = await cli(['preview', path.join(ROOT, 'templates', 'page.njk'), '--data', 'bad.yaml'], { cwd: d });
    expect(r.code).toBe(1);
    // An unclosed bracket is reported at the end of the input: just after the last character.
    expect(r.stderr).toBe('error: data file bad.yaml:2:13: invalid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]\n 2 | b: [unclosed\n   |             ^\n');
    writeFileSync(path.join(d, 'nested.yml'), 'a: 1\n  b: 2\n');
    const nested = await cli(['preview', 'page.njk', '--data', 'nested.yml', '--views', path.join(ROOT, 'templates')], { cwd: d });
    expect([nested.code, nested.stderr]).toEqual([1, 'error: data file nested.yml:1:4: invalid YAML: Nested mappings are not allowed in compact mappings\n 1 | a: 1\n   |    ^\n']);
    expect(r.stderr + nested.stderr).not.toMatch(/column \d+:|\n\s+at /);
  });

  test('fixed: a JSON data file error has its line and column too, even where V8 gives no position', async () => {
    const d = tmp();
    writeFileSync(path.join(d, 'bad.json'), '{\n  "a": 1,\n  "b": }\n');
    const r = await cli(['preview', 'page.njk', '--data', 'bad.json', '--views', path.join(ROOT, 'templates')], { cwd: d });
    expect([r.code, r.stderr]).toEqual([1, `error: data file bad.json:3:8: invalid JSON: Unexpected token '}'\n 3 |   "b": }\n   |        ^\n`]);
    writeFileSync(path.join(d, 'cut.json'), '{"a": [1, 2');
    const cut = await cli(['preview', 'page.njk', '--data', 'cut.json', '--views', path.join(ROOT, 'templates')], { cwd: d });
    expect(cut.code).toBe(1);
    expect(cut.stderr).toMatch(/^error: data file cut\.json:1:12: invalid JSON: [^\n]+\n 1 \| \{"a": \[1, 2\n {3}\| {12}\^\n$/);
  });
});

describe('usage: --help, --version, exit code 2', () => {
  test.each(['preview', 'serve', 'deps', 'keys', 'inspect', 'invalidate', 'stats', 'clear'])('fragcache %s --help shows usage and examples, exit 0', async (cmd) => {
    const r = await cli([cmd, '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Usage: fragcache ${cmd} `));
    expect(r.stdout).toMatch(new RegExp(`Examples:\\n\\s+\\$ fragcache ${cmd}`));
  });

  test('fragcache --help lists every command; --version prints the package version', async () => {
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    for (const cmd of ['preview', 'serve', 'deps', 'keys', 'inspect', 'invalidate', 'stats', 'clear']) expect(help.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
    const v = await cli(['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout.trim()).toBe(JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version);
  });

  test.each([
    [['preview'], /missing required argument 'template'/],
    [['preview', 'page.njk', '--bogus'], /unknown option '--bogus'/],
    [['preview', 'page.njk', '--repeat', 'x'], /argument 'x' is invalid/],
    [['preview', 'page.njk', '--repeat', '0'], /from 1 to 100000/],
    [['preview', 'page.njk', '--syntax', 'square'], /Allowed choices are angle, curly/],
    [['serve', '--port', '70000'], /from 0 to 65535/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['invalidate'], /missing fragment name/],
    [['invalidate', 'x', '--tag', 'y'], /a fragment name or --tag, not both/],
    [['invalidate', '--tag'], /--tag <tag\.\.\.>' needs at least one tag name/],
    [[], /Usage: fragcache/],
  ])('%j is a usage error: exit 2', async (args, message) => {
    const r = await cli(args as string[]);
    expect(r.code).toBe(2);
    expect(r.stderr + r.stdout).toMatch(message);
  });
});

describe('invalidate --tag', () => {
  test('fixed: an option right after --tag is a usage error (exit 2), not a tag named "--prefix"', async () => {
    const d = tmp();
    const db = path.join(d, 'cache.db');
    const r = await cli(['invalidate', '--tag', '--prefix', 'mine', '--store', `sqlite://${db}`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error: option '-t, --tag <tag\.\.\.>' needs at least one tag name right after it \(other options go before --tag or after its tags; write a tag that starts with "-" as --tag=-x\)\n/);
    expect(r.stdout).toBe('');
    expect(existsSync(db)).toBe(false); // nothing was opened, let alone invalidated
    const dash = await cli(['invalidate', '--tag', '-x', '--store', `sqlite://${db}`]);
    expect([dash.code, dash.stderr]).toEqual([2, "error: unknown option '-x'\n(add --help for usage)\n"]);
  });
});

describe('serve: errors before it listens', () => {
  test('a port in use, a missing views folder, a missing data folder: exit 1, saying which', async () => {
    const net = await import('node:net');
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', () => resolve()));
    const port = (busy.address() as import('node:net').AddressInfo).port;
    try {
      const inUse = await cli(['serve', '--port', String(port)]);
      expect([inUse.code, inUse.stderr]).toEqual([1, `error: option "--port": expected a free port (this one is in use), got ${port}\n`]);
    } finally {
      busy.close();
    }
    const noViews = await cli(['serve', '--port', '0', '--views', 'no-such-folder']);
    expect([noViews.code, noViews.stderr]).toEqual([1, 'error: views folder not found: no-such-folder\n']);
    const noData = await cli(['serve', '--port', '0', '--data-dir', 'no-such-data']);
    expect([noData.code, noData.stderr]).toEqual([1, 'error: data folder not found: no-such-data\n']);
  });
});

describe('colours: only on a TTY, NO_COLOR honoured', () => {
  test('piped output has no escape codes', async () => {
    const r = await cli(['preview', 'page.njk', '-d', 'templates/data/page.yaml', '--explain']);
    expect(r.stdout + r.stderr).not.toContain(ESC);
  });

  test('FORCE_COLOR forces them on a pipe', async () => {
    const r = await cli(['preview', 'page.njk', '-d', 'templates/data/page.yaml', '--explain'], { env: { FORCE_COLOR: '1' } });
    expect(r.stderr).toContain(`${ESC}31mmiss`); // misses in red
  });

  (hasScript ? test : test.skip)('on a terminal the table is coloured, and NO_COLOR turns colours off', async () => {
    const on = await cliOnTty(['preview', 'page.njk', '-d', 'templates/data/page.yaml', '--explain']);
    expect(on.code).toBe(0);
    expect(on.stdout).toContain(`${ESC}31mmiss`);
    const off = await cliOnTty(['preview', 'page.njk', '-d', 'templates/data/page.yaml', '--explain'], { NO_COLOR: '1' });
    expect(off.code).toBe(0);
    expect(off.stdout).toContain('miss');
    expect(off.stdout).not.toContain(ESC);
  });
  if (!hasScript) console.warn('SKIPPED: the TTY colour test needs util-linux `script` (/usr/bin/script)');
});

describe('configuration', () => {
  const page = { 'p.njk': '<% cache 60 box %>from config views<% endcache %>' };

  test('fragcache.config.json gives views (relative to the file) and prefix', async () => {
    const dir = tmp();
    views(page); // unrelated folder: must not be used
    const v = path.join(dir, 'site');
    mkdirSync(v);
    writeFileSync(path.join(v, 'p.njk'), page['p.njk']);
    writeFileSync(path.join(dir, 'fragcache.config.json'), JSON.stringify({ views: 'site', prefix: 'cfgjson' }));
    const r = await cli(['preview', 'p.njk', '--explain'], { cwd: dir });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('from config views\n');
    expect(r.stderr).toMatch(/ cfgjson:1:f:box\//);
  });

  test('the "fragcache" key of package.json, and flags that override it', async () => {
    const dir = tmp();
    const v = views(page);
    writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'x', fragcache: { views: v, prefix: 'fromPkg', syntax: 'angle' } }));
    const r = await cli(['preview', 'p.njk', '--explain'], { cwd: dir });
    expect(r.stderr).toMatch(/ fromPkg:1:f:box\//);
    const flagged = await cli(['preview', 'p.njk', '--explain', '--prefix', 'fromFlag'], { cwd: dir });
    expect(flagged.stderr).toMatch(/ fromFlag:1:f:box\//);
  });

  test('fragcache.config.js is loaded, and wins over package.json', async () => {
    const dir = tmp();
    const v = views(page);
    writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'x', fragcache: { prefix: 'fromPkg' } }));
    writeFileSync(path.join(dir, 'fragcache.config.js'), `module.exports = { views: ${JSON.stringify(v)}, prefix: 'fromJs' };`);
    const r = await cli(['preview', 'p.njk', '--explain'], { cwd: dir });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/ fromJs:1:f:box\//);
  });

  test('FRAGCACHE_STORE overrides the config store; --store overrides FRAGCACHE_STORE', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 'fragcache.config.json'), JSON.stringify({ store: 'fromconfig://x' }));
    const fromConfig = await cli(['keys'], { cwd: dir });
    expect(fromConfig.stderr).toMatch(/got "fromconfig:\/\/x"/);
    const fromEnv = await cli(['keys'], { cwd: dir, env: { FRAGCACHE_STORE: 'fromenv://y' } });
    expect(fromEnv.stderr).toMatch(/got "fromenv:\/\/y"/);
    const fromFlag = await cli(['keys', '--store', 'memory'], { cwd: dir, env: { FRAGCACHE_STORE: 'fromenv://y' } });
    expect(fromFlag.stderr).toMatch(/configured store is "memory"/);
  });

  test('fixed: the memory-store message names where the store came from: --store, FRAGCACHE_STORE, the config file, or the default', async () => {
    const dir = tmp();
    const said = async (args: string[], env: Record<string, string> = {}, cwd = dir) => /configured store is "memory" \(([^)]*)\)/.exec((await cli(args, { cwd, env })).stderr)?.[1];
    writeFileSync(path.join(dir, 'fragcache.config.json'), JSON.stringify({ store: 'memory' }));
    expect(await said(['keys', '--store', 'memory'], { FRAGCACHE_STORE: 'redis://127.0.0.1:1' })).toBe('from --store');
    expect(await said(['stats'], { FRAGCACHE_STORE: 'memory' })).toBe('from FRAGCACHE_STORE');
    expect(await said(['clear'])).toBe('from fragcache.config.json');
    expect(await said(['keys'], {}, tmp())).toBe('the default: no --store, FRAGCACHE_STORE or "store" in a config file');
    const pkgDir = tmp();
    writeFileSync(path.join(pkgDir, 'package.json'), JSON.stringify({ name: 'x', fragcache: { store: 'memory' } }));
    expect(await said(['inspect', 'nav'], {}, pkgDir)).toBe('from package.json "fragcache"');
  });

  test('bad configuration names the file and the option', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 'fragcache.config.json'), JSON.stringify({ syntax: 'square' }));
    const r = await cli(['preview', 'p.njk'], { cwd: dir });
    expect([r.code, r.stderr]).toEqual([1, 'error: fragcache.config.json:1:2: option "syntax": expected "angle" or "curly", got "square"\n 1 | {"syntax":"square"}\n   |  ^\n']);
    writeFileSync(path.join(dir, 'fragcache.config.json'), JSON.stringify({ colour: 'red' }));
    const unknown = await cli(['preview', 'p.njk'], { cwd: dir });
    expect(unknown.stderr).toMatch(/^error: fragcache\.config\.json:1:2: unknown option "colour" .*\n 1 \| \{"colour":"red"\}\n {3}\| {2}\^\n$/);
    writeFileSync(path.join(dir, 'fragcache.config.json'), '{ nope');
    const broken = await cli(['preview', 'p.njk'], { cwd: dir });
    expect(broken.code).toBe(1);
    expect(broken.stderr).toBe("error: fragcache.config.json:1:3: invalid JSON: Expected property name or '}'\n 1 | { nope\n   |   ^\n");
  });

  test('fixed: every config error is file:line:column: message and the line, without a stack (JS configs and package.json too)', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 'fragcache.config.js'), "module.exports = {\n  views: 'a' 'b',\n};\n");
    const syntax = await cli(['preview', 'p.njk'], { cwd: dir });
    expect([syntax.code, syntax.stderr]).toEqual([1, "error: fragcache.config.js:2:14: cannot load the config: Unexpected string\n 2 |   views: 'a' 'b',\n   |              ^\n"]);
    writeFileSync(path.join(dir, 'fragcache.config.js'), 'const x = 1;\nmodule.exports = { views: nope };\n');
    const thrown = await cli(['preview', 'p.njk'], { cwd: dir });
    expect([thrown.code, thrown.stderr]).toEqual([1, 'error: fragcache.config.js:2:27: cannot load the config: nope is not defined\n 2 | module.exports = { views: nope };\n   |                           ^\n']);
    writeFileSync(path.join(dir, 'fragcache.config.js'), "module.exports = { prefix: 3 };\n");
    const jsValue = await cli(['preview', 'p.njk'], { cwd: dir });
    expect([jsValue.code, jsValue.stderr]).toEqual([1, 'error: fragcache.config.js: option "prefix": expected a string, got 3\n']);
    const pkgDir = tmp();
    writeFileSync(path.join(pkgDir, 'package.json'), '{\n  "name": "x",\n  "prefix": "not this one",\n  "fragcache": { "prefix": 3 }\n}\n');
    const pkg = await cli(['preview', 'p.njk'], { cwd: pkgDir });
    expect([pkg.code, pkg.stderr]).toEqual([1, 'error: package.json:4:18: option "prefix": expected a string, got 3\n 4 |   "fragcache": { "prefix": 3 }\n   |                  ^\n']);
  });
});

describe('store commands on the memory store', () => {
  test.each([['keys'], ['inspect', 'nav'], ['invalidate', 'nav'], ['invalidate', '--tag', 'a'], ['stats'], ['clear']])('%j explains that an in-process store cannot be inspected, exit 1', async (...args) => {
    const r = await cli(args);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: the configured store is "memory" \(the default: [^)]*\): an in-process store .* cannot inspect or invalidate it\. Point the CLI at a shared store with --store redis:\/\//);
  });
});

describe('fragcache deps', () => {
  test('the tree of templates/page.njk: extends, includes, imports and the fragments in each, nested', async () => {
    const r = await cli(['deps', 'page.njk']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        'page.njk',
        '├── extends layout.njk :1',
        '│   ├── cache nav ttl "1h" :8',
        '│   │   └── include partials/nav.njk :9',
        '│   └── include partials/sidebar.njk :16',
        '│       └── cache sidebar ttl 120 vary user.id :2',
        '├── import macros/ui.njk :2',
        '│   └── cache badge ttl "1h" vary label, count :2',
        '├── cache front-page ttl 300 :6',
        '│   └── include partials/article-card.njk :9',
        '│       └── cache article-card ttl "1h" vary article.id, article.updatedAt :1',
        '└── cache popular ttl "10m" :13',
        '',
      ].join('\n'),
    );
  });

  test('dynamic, missing, repeated and cyclic includes are reported, not followed; --json', async () => {
    const dir = views({
      'a.njk': '<% include tpl %>\n<% include "gone.njk" %>\n<% include "b.njk" %>\n<% include "b.njk" %>',
      'b.njk': '<% cache 5 inner %><% include "a.njk" %><% endcache %>',
    });
    const r = await cli(['deps', 'a.njk', '--views', dir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('├── include tpl (dynamic: not followed, not in the digest; declare it with deps=[…] or {# Template Dependency: … #}) :1');
    expect(r.stdout).toContain('├── gone.njk (not found) :2');
    expect(r.stdout).toContain('│   └── cache inner ttl 5 :1');
    expect(r.stdout).toContain('│       └── a.njk (cycle) :1');
    expect(r.stdout).toContain('└── b.njk (shown above) :4');
    const json = await cli(['deps', 'a.njk', '--views', dir, '--json']);
    const tree = JSON.parse(json.stdout);
    expect(tree.children.map((c: { kind: string }) => c.kind)).toEqual(['dynamic', 'missing', 'include', 'repeat']);
    expect(tree.children[2].children[0]).toMatchObject({ kind: 'cache', name: 'inner', ttl: '5', line: 1, column: 4 });
  });

  test('a parse error and a missing template exit 1 with the position', async () => {
    const dir = views({ 'bad.njk': 'ok\n<% cache %>x<% endcache %>' });
    const r = await cli(['deps', 'bad.njk', '--views', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: .*bad\.njk:2:4: cache tag needs a ttl and a name.*\n 2 \| <% cache %>x<% endcache %>\n/);
    const missing = await cli(['deps', 'nope.njk', '--views', dir]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error: template not found: nope\.njk/);
  });
});
