/**
 * `await engine.close()` lets the process exit, whatever state the store is in: created and closed at once (a
 * Redis connection still being opened), on a server that refuses, on a user's own Keyv. Each case is its own
 * child process on the built `dist/` (npm test builds it first); the time from close() resolving to the process
 * exiting is what is measured (a leaked socket or timer keeps it alive indefinitely).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describeWith, freePort, memcached, need, redis, type TestServer } from './support/servers';

const DIST = path.resolve(__dirname, '..', 'dist', 'index.js');

/** Runs `body` (an async function body with `createEngine` and `store` in scope) and times close → exit. */
function closeThenExit(storeExpr: string): Promise<{ code: number | null; afterClose: number; stderr: string }> {
  const src = `
    const { createEngine } = require(${JSON.stringify(DIST)});
    (async () => {
      const store = ${storeExpr};
      const engine = createEngine({ store });
      await engine.close();
      process.stdout.write('closed');
    })().catch((e) => { console.error(e); process.exit(2); });`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', src], { cwd: path.resolve(__dirname, '..'), stdio: ['ignore', 'pipe', 'pipe'] });
    let closedAt = 0;
    let stderr = '';
    child.stdout.on('data', () => (closedAt ||= performance.now()));
    child.stderr.on('data', (d) => (stderr += d));
    // A process that never exits is the failure: kill it well after the bound, so the assertion reports it.
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, afterClose: closedAt ? performance.now() - closedAt : Infinity, stderr });
    });
  });
}

const expectPromptExit = async (storeExpr: string) => {
  const r = await closeThenExit(storeExpr);
  expect([r.code, r.stderr]).toEqual([0, '']);
  // Exit takes a few ms; a socket or timer left behind keeps the process alive for seconds (or for ever).
  expect(r.afterClose).toBeLessThan(1000);
};

beforeAll(() => {
  if (!existsSync(DIST)) throw new Error(`${DIST} is missing: run npm run build first (npm test does)`);
});

describe('close() lets the process exit', () => {
  it('memory store', () => expectPromptExit("'memory'"));
  it('memory store with a byte budget', () => expectPromptExit("'memory://?maxBytes=100000'"));
  it('sqlite store', () => expectPromptExit(JSON.stringify(`sqlite://${path.join(mkdtempSync(path.join(tmpdir(), 'fragcache-exit-')), 'c.db')}`)));
  it("a user's in-memory Keyv", () => expectPromptExit("new (require('keyv').Keyv)()"));
  it('redis store on a port that refuses connections', async () => expectPromptExit(JSON.stringify(`redis://127.0.0.1:${await freePort()}`)));
  it('memcache store on a port that refuses connections', async () => expectPromptExit(JSON.stringify(`memcache://127.0.0.1:${await freePort()}`)));
});

describeWith(need(redis), 'close() lets the process exit: Redis', () => {
  let server: TestServer;
  beforeAll(async () => (server = await redis.get!()));
  afterAll(() => server?.stop());
  // Closed while the connection is still being opened: the case that used to keep the process alive.
  it('redis:// closed at once', () => expectPromptExit(JSON.stringify(server.url)));
  it('redis:// with an L1 (a second, subscribed connection) closed at once', () => expectPromptExit(JSON.stringify(`${server.url}?l1=1`)));
  it("a user's createKeyv('redis://…') closed at once", () => expectPromptExit(`require('@keyv/redis').createKeyv(${JSON.stringify(server.url)})`));
});

describeWith(need(memcached), 'close() lets the process exit: Memcached', () => {
  let server: TestServer;
  beforeAll(async () => (server = await memcached.get!()));
  afterAll(() => server?.stop());
  it('memcache:// closed at once', () => expectPromptExit(JSON.stringify(server.url)));
});
