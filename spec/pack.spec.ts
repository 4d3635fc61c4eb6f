/**
 * Packaging: `npm pack` gives a tarball that, installed into an empty folder, provides a working
 * `fragcache` command, `require('fragcache')`, `import … from 'fragcache'` and TypeScript types.
 * `npm pack` builds `dist/` itself (prepack). Installing resolves dependencies through npm's cache, so it is
 * slow (about a minute here): one install serves every check. Express is installed next to it for the README's
 * quick start; better-sqlite3 is not (an optional peer dependency: the package works without it).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describeWith, freePort, need, redis, until, type TestServer } from './support/servers';
import { collect, type Run } from './support/spawn';

const ROOT = path.resolve(__dirname, '..');
const VERSION = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

function sh(cmd: string, args: string[], cwd: string): Promise<Run> {
  const env = { ...process.env };
  delete env.FRAGCACHE_STORE;
  delete env.FRAGCACHE_LEAK_GUARD; // a consumer's defaults (the suite turns the guard off for its own specs)
  // npm run (npm test) exports settings for *this* package; the install below is for another one.
  for (const k of Object.keys(env)) if (/^npm_(config_|package_|lifecycle_)/i.test(k) && !/^npm_config_(cache|registry|userconfig)$/i.test(k)) delete env[k];
  return collect(cmd, args, { cwd, env });
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
    const express = (JSON.parse(readFileSync(path.join(ROOT, 'node_modules', 'express', 'package.json'), 'utf8')) as { version: string }).version;
    const installed = await sh('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball, `express@${express}`], app);
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
  }, 180_000); // two full type-checks (skipLibCheck off): about a minute on a loaded machine

  test('the tarball ships dist, LICENSE and CHANGELOG, and no better-sqlite3 is installed with it', () => {
    const pkg = path.join(app, 'node_modules', 'fragcache');
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli/index.js', 'LICENSE', 'CHANGELOG.md', 'README.md']) expect([f, existsSync(path.join(pkg, f))]).toEqual([f, true]);
    expect(existsSync(path.join(app, 'node_modules', 'better-sqlite3'))).toBe(false);
  });

  test("the README's quick start runs as written (render, then Express with graceful shutdown)", async () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const section = /^## Use it in your app\n([\s\S]*?)^## /m.exec(readme)?.[1];
    if (!section) throw new Error('README.md has no "## Use it in your app" section');
    expect(section.split('\n').length).toBeLessThan(40);
    // Each code block names its file on its first line: `{# views/home.njk #}`, `// render.mjs: …`.
    const files: string[] = [];
    for (const [, body] of section.matchAll(/```\w*\n([\s\S]*?)```/g)) {
      const name = /^(?:\{#|\/\/)\s*([\w./-]+\.(?:njk|mjs|cjs|js))\b/.exec(body)?.[1];
      if (!name) continue;
      mkdirSync(path.join(app, path.dirname(name)), { recursive: true });
      writeFileSync(path.join(app, name), body);
      files.push(name);
    }
    expect(files).toEqual(['views/home.njk', 'render.mjs', 'server.mjs']);

    const r = await sh(process.execPath, ['render.mjs'], app);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.stdout.replace(/\s+/g, '')).toBe('<h1>Home</h1><ul><li>One</li><li>Two</li></ul>');

    const port = await freePort();
    const child = spawn(process.execPath, ['server.mjs'], { cwd: app, env: { ...process.env, PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      await until('the quick-start server to answer', async () => {
        try {
          return (await fetch(`http://127.0.0.1:${port}/`)).ok;
        } catch {
          return false;
        }
      }, 10_000, 50);
      const page = await (await fetch(`http://127.0.0.1:${port}/`, { headers: { connection: 'close' } })).text();
      expect(page.replace(/\s+/g, '')).toBe('<h1>Home</h1><ul><li>One</li><li>Two</li></ul>');
      child.kill('SIGTERM');
      expect([await exited, err]).toEqual([0, '']);
    } finally {
      child.kill('SIGKILL');
    }
  }, 60_000);

  // The same Keyv from the app's ES module and from CommonJS: before, an ES module's Keyv was not `instanceof` the
  // CommonJS class fragcache loads, and every render threw inside keyv.
  const consumer = (esm: boolean, store: string) => {
    const imports = esm
      ? "import Keyv from 'keyv';\nimport { createKeyv } from '@keyv/redis';\nimport { createEngine } from 'fragcache';\n"
      : "const { default: Keyv } = require('keyv');\nconst { createKeyv } = require('@keyv/redis');\nconst { createEngine } = require('fragcache');\n";
    const body = `const engine = createEngine({ store: ${store}, prefix: process.argv[2] });
const t = '<% cache 60 x shared=["n"] %>{{ n }}<% endcache %>';
const out = (await engine.renderString(t, { n: 1 })) + (await engine.renderString(t, { n: 2 }));
const { errors, hits } = engine.stats();
await engine.close();
console.log(out, hits, errors);
`;
    return esm ? imports + body : `${imports}(async () => {\n${body}})();\n`;
  };
  const runConsumer = async (file: string, source: string, prefix: string) => {
    writeFileSync(path.join(app, file), source);
    const r = await sh(process.execPath, [file, prefix], app);
    return [r.code, r.stdout.trim(), r.stderr];
  };

  test.each([['mjs'], ['cjs']])("a memory Keyv from a .%s consumer is used as the store", async (ext) => {
    expect(await runConsumer(`keyv-memory.${ext}`, consumer(ext === 'mjs', 'new Keyv()'), 'm')).toEqual([0, '11 1 0', '']);
  });

  describeWith(need(redis), 'with Redis', () => {
    let server: TestServer;
    beforeAll(async () => (server = await redis.get!()));
    afterAll(() => server?.stop());
    test.each([['mjs'], ['cjs']])("@keyv/redis's createKeyv from a .%s consumer is used as the store, and the process exits after close()", async (ext) => {
      const prefix = `pack${ext}${Date.now()}`;
      expect(await runConsumer(`keyv-redis.${ext}`, consumer(ext === 'mjs', `createKeyv(${JSON.stringify(server.url)})`), prefix)).toEqual([0, '11 1 0', '']);
    }, 30_000);
  });
});
