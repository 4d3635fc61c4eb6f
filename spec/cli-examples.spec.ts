/**
 * Every example of `fragcache --help` and of each command's `--help` works from an empty folder after
 * `fragcache init` (the first example), run as written by a shell, with `fragcache` on the PATH (as `npx
 * fragcache` provides it). `redis://localhost:6379` in an example is pointed at the test Redis, and
 * FRAGCACHE_STORE is set to it too (store commands need a shared store). Runs the built CLI (`dist/`).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describeWith, need, redis, uniquePrefix, type TestServer } from './support/servers';

const BIN = path.resolve(__dirname, '..', 'dist', 'cli', 'index.js');
if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run "npm run build" first (npm test does)`);

/** The `$ …` lines under "Examples" of a help text, without their trailing comments. */
function examples(help: string): string[] {
  const at = help.search(/^Examples[^\n]*:$/m);
  if (at < 0) return [];
  return [...help.slice(at).matchAll(/^ {2}\$ (.+)$/gm)].map((m) => m[1].replace(/\s+#.*$/, '').trim());
}

const COMMANDS = ['init', 'preview', 'serve', 'deps', 'keys', 'inspect', 'invalidate', 'stats', 'clear'];

describeWith(need(redis), 'the --help examples, from an empty folder', () => {
  let server: TestServer;
  beforeAll(async () => (server = await redis.get!()));
  afterAll(() => server?.stop());

  it('each runs and exits 0 (serve: covered by cli-serve.spec, it does not exit)', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fragcache-examples-'));
    const bin = path.join(dir, '.bin');
    mkdirSync(bin);
    writeFileSync(path.join(bin, 'fragcache'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} "$@"\n`);
    chmodSync(path.join(bin, 'fragcache'), 0o755);
    const prefix = uniquePrefix('ex');
    const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, FRAGCACHE_STORE: server.url, NO_COLOR: '1' };
    const help = (args: string[]) => execFileSync(process.execPath, [BIN, ...args], { cwd: dir, env, encoding: 'utf8' });
    const lines = [...new Set([...examples(help(["--help"])), ...COMMANDS.flatMap((c) => examples(help([c, "--help"])))])];
    expect(lines[0]).toMatch(/^fragcache init\b/);
    expect(lines.length).toBeGreaterThan(15);
    const ran: string[] = [];
    for (const line of lines) {
      if (/^fragcache serve\b/.test(line)) continue;
      if (/^fragcache init site\/views/.test(line)) continue; // a second init into another folder: run once below
      // The examples' own store URL is the test server; every key goes under this run's prefix ('fc' in an example too).
      const cmd = line.replace(/redis:\/\/localhost:6379/g, server.url).replace(/--prefix (fc|shop)\b/g, `--prefix ${prefix}`).replace(/'fc:tag:\*'/, `'${prefix}:tag:*'`);
      const withPrefix = /--prefix /.test(cmd) || !/^(FRAGCACHE_STORE=\S+ )?fragcache (preview|keys|inspect|invalidate|stats|clear)\b/.test(cmd) ? cmd : cmd.replace(/fragcache (\w+)/, `fragcache $1 --prefix ${prefix}`);
      const r = spawnSync('sh', ['-c', `set -e; ${withPrefix}`], { cwd: dir, env, encoding: 'utf8', timeout: 30_000 });
      expect([line, r.status, r.status === 0 ? '' : r.stderr]).toEqual([line, 0, '']);
      ran.push(line);
    }
    const other = spawnSync('sh', ['-c', 'fragcache init site/views'], { cwd: dir, env, encoding: 'utf8' });
    expect([other.status, existsSync(path.join(dir, 'site', 'views', 'page.njk'))]).toEqual([0, true]);
    expect(ran.length).toBeGreaterThan(12);
  }, 180_000);
});
