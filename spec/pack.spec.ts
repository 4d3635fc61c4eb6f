/**
 * Packaging: `npm pack` gives a tarball that, installed into an empty folder, provides a working
 * `fragcache` command, `require('fragcache')`, `import … from 'fragcache'` and TypeScript types.
 * Uses the built `dist/` (npm test builds it first). Installing resolves dependencies through npm's
 * cache, so it is slow (about 2 minutes here): one install serves every check.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..');
const VERSION = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

function sh(cmd: string, args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.FRAGCACHE_STORE;
    // npm run (npm test) exports settings for *this* package; the install below is for another one.
    for (const k of Object.keys(env)) if (/^npm_(config_|package_|lifecycle_)/i.test(k) && !/^npm_config_(cache|registry|userconfig)$/i.test(k)) delete env[k];
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('npm pack, installed into an empty folder', () => {
  let app: string;

  beforeAll(async () => {
    const work = mkdtempSync(path.join(tmpdir(), 'fragcache-pack-'));
    const packed = await sh('npm', ['pack', '--pack-destination', work, '--silent'], ROOT);
    if (packed.code !== 0) throw new Error(`npm pack failed: ${packed.stderr}`);
    const tarball = path.join(work, readdirSync(work).find((f) => f.endsWith('.tgz'))!);
    app = path.join(work, 'app');
    mkdirSync(app);
    writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'fragcache-pack-smoke', version: '1.0.0', private: true }));
    const installed = await sh('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball], app);
    if (installed.code !== 0) throw new Error(`npm install of the tarball failed:\n${installed.stderr}`);
  }, 300_000);

  test('the fragcache command: --version, and a preview of the packaged example templates', async () => {
    const bin = path.join(app, 'node_modules', '.bin', 'fragcache');
    const v = await sh(bin, ['--version'], app);
    expect([v.code, v.stdout.trim()]).toEqual([0, VERSION]);
    const pkg = path.join(app, 'node_modules', 'fragcache', 'templates');
    const r = await sh(bin, ['preview', 'page.njk', '--views', pkg, '--data', path.join(pkg, 'data', 'page.yaml'), '--explain'], app);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('<h1>Latest articles</h1>');
    expect(r.stderr).toMatch(/^front-page .* miss /m);
  }, 60_000);

  test('require() and import of the library render a cached fragment', async () => {
    // shared=["n"]: the second render is served the first one's output on purpose (else the leak guard warns on stderr).
    const src = "const e = createEngine(); const t = '<% cache 60 x shared=[\\'n\\'] %>{{ n }}<% endcache %>'; const a = await e.renderString(t, { n: 1 }); const b = await e.renderString(t, { n: 2 }); console.log(a + b);";
    const cjs = await sh(process.execPath, ['-e', `const { createEngine } = require('fragcache'); (async () => { ${src} })()`], app);
    expect([cjs.code, cjs.stdout.trim(), cjs.stderr]).toEqual([0, '11', '']);
    const esm = await sh(process.execPath, ['--input-type=module', '-e', `import { createEngine, TemplateError } from 'fragcache'; ${src} console.log(typeof TemplateError);`], app);
    expect([esm.code, esm.stdout.trim(), esm.stderr]).toEqual([0, '11\nfunction', '']);
  }, 60_000);

  test('the types resolve for a TypeScript consumer (and are real types, not any)', async () => {
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const check = async (file: string, source: string) => {
      writeFileSync(path.join(app, file), source);
      // skipLibCheck off: the published .d.ts files must find every type they use among what the package installs
      // (a consumer brings @types/node, taken here from this repository).
      const typeRoots = [path.join(app, 'node_modules', '@types'), path.join(ROOT, 'node_modules', '@types')];
      const options = { strict: true, noEmit: true, skipLibCheck: false, module: 'commonjs', moduleResolution: 'node', types: ['node'], typeRoots, ignoreDeprecations: '6.0' };
      writeFileSync(path.join(app, `tsconfig.${file}.json`), JSON.stringify({ compilerOptions: options, files: [file] }));
      return sh(process.execPath, [tsc, '-p', `tsconfig.${file}.json`], app);
    };
    const good = await check(
      'good.ts',
      "import { createEngine, type Engine, type FragmentTrace, OptionError } from 'fragcache';\nconst e: Engine = createEngine({ views: 'v', syntax: 'angle' });\nconst t: FragmentTrace[] = [];\nexport const n: number = t.length + OptionError.name.length;\nexport { e };\n",
    );
    expect([good.code, good.stdout]).toEqual([0, '']);
    const bad = await check('bad.ts', "import { createEngine } from 'fragcache';\nexport const x: number = createEngine();\n");
    expect(bad.code).not.toBe(0);
    expect(bad.stdout).toMatch(/bad\.ts\(2,14\): error TS2322: Type 'Engine' is not assignable to type 'number'/);
  }, 60_000);
});
