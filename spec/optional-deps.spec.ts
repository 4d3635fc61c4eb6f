/**
 * better-sqlite3 is an optional peer dependency: the library and the CLI load without it, and a sqlite:// store
 * says how to install it. A child process on the built `dist/` hides the module with a module-resolution stub
 * (as when the app never installed it).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..');
const DIST = path.join(ROOT, 'dist', 'index.js');

/** A preload script making `require(name)` fail as it does when the package is not installed. */
function hide(name: string): string {
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'fragcache-hide-')), 'hide.js');
  writeFileSync(
    file,
    `const Module = require('module'); const resolve = Module._resolveFilename;
     Module._resolveFilename = function (request, ...rest) {
       if (request === ${JSON.stringify(name)}) { const e = new Error("Cannot find module '" + request + "'"); e.code = 'MODULE_NOT_FOUND'; throw e; }
       return resolve.call(this, request, ...rest);
     };`,
  );
  return file;
}

function run(preload: string, src: string) {
  return spawnSync(process.execPath, ['-r', preload, '-e', src], { cwd: ROOT, encoding: 'utf8', timeout: 20_000 });
}

describe('without better-sqlite3 installed', () => {
  const preload = hide('better-sqlite3');

  it('the library loads and renders on the memory store', () => {
    const r = run(preload, `const { createEngine } = require(${JSON.stringify(DIST)}); createEngine().renderString('<% cache 60 x %>ok<% endcache %>', {}).then((s) => console.log(s));`);
    expect([r.status, r.stdout.trim(), r.stderr]).toEqual([0, 'ok', '']);
  });

  it('a sqlite:// store throws a MissingDependencyError that says what to install', () => {
    const r = run(
      preload,
      `const { createEngine, MissingDependencyError } = require(${JSON.stringify(DIST)});
       try { createEngine({ store: 'sqlite://' + ${JSON.stringify(path.join(tmpdir(), 'fragcache-never.db'))} }); }
       catch (e) { console.log(JSON.stringify([e instanceof MissingDependencyError, e.packageName, e.message])); }`,
    );
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([true, 'better-sqlite3', 'the sqlite:// store needs the package better-sqlite3, which is not installed: run `npm install better-sqlite3` in your app']);
  });

  it('the CLI prints the same advice and exits 1', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-cli-'));
    writeFileSync(path.join(dir, 'cache.db'), ''); // exists (the CLI never creates a database to inspect)
    const r = spawnSync(process.execPath, ['-r', preload, path.join(ROOT, 'dist', 'cli', 'index.js'), 'keys', '--store', 'sqlite://cache.db'], { cwd: dir, encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('npm install better-sqlite3');
  });
});
