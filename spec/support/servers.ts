/**
 * Real Redis and Memcached servers for the specs.
 *
 * `REDIS_URL` / `MEMCACHE_URL` name a shared server (tests then only touch keys under their own unique
 * prefix, and never stop or pause it). Otherwise a PRIVATE server is started on a free loopback port and
 * stopped after the suite. With neither, the suite is skipped with a loud message, except under `CI=true`,
 * where a missing server fails the suite.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { randomBytes } from 'node:crypto';

const REDIS_BIN = process.env.REDIS_SERVER_BIN ?? '/usr/bin/redis-server';
const MEMCACHED_BIN = process.env.MEMCACHED_BIN ?? '/usr/bin/memcached';

/** A running server. `restartable` only for a private one. */
export interface TestServer {
  url: string;
  port: number;
  /** True for a server this suite started (so it may stop, restart or pause it). */
  private: boolean;
  /** Kills the server (SIGKILL: a crash, not a clean shutdown). */
  kill(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** Stops it for good (after the suite). */
  stop(): Promise<void>;
}

/** A free loopback TCP port. */
export async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** A prefix no other test run uses (letters and digits: valid as a fragcache prefix). */
export function uniquePrefix(name: string): string {
  return `t${name}${randomBytes(4).toString('hex')}`;
}

async function waitForPort(port: number, child: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${port} within 5 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function privateServer(bin: string, args: (port: number) => string[], scheme: (port: number) => string, what: string) {
  return async (): Promise<TestServer> => {
    const port = await freePort();
    let child: ChildProcess | undefined;
    const server: TestServer = {
      url: scheme(port),
      port,
      private: true,
      async start() {
        if (child && child.exitCode === null && child.signalCode === null) return; // running
        child = spawn(bin, args(port), { stdio: 'ignore' });
        await waitForPort(port, child, what);
      },
      async kill() {
        if (!child || child.exitCode !== null) return;
        const c = child;
        c.kill('SIGKILL');
        if (c.exitCode === null && c.signalCode === null) await once(c, 'exit');
      },
      async stop() {
        await server.kill();
      },
    };
    await server.start();
    return server;
  };
}

function sharedServer(url: string): TestServer {
  const port = Number(new URL(url.replace(/^memcache:\/\/([^,/]+).*$/, 'memcache://$1')).port);
  const refuse = async () => {
    throw new Error(`refusing to stop or restart the shared server ${url}`);
  };
  return { url, port, private: false, kill: refuse, start: refuse, async stop() {} };
}

interface Availability {
  /** How to get a server, or why there is none. */
  get?: () => Promise<TestServer>;
  /** True when a private server can be started (fault tests need one). */
  canPrivate: boolean;
  reason?: string;
}

function availability(envVar: string, bin: string, get: () => Promise<TestServer>): Availability {
  const canPrivate = existsSync(bin);
  const env = process.env[envVar];
  if (env) return { get: async () => sharedServer(env), canPrivate };
  if (canPrivate) return { get, canPrivate };
  return { canPrivate, reason: `${envVar} is not set and ${bin} is not installed` };
}

/** How the Redis specs get their server. */
export const redis = availability(
  'REDIS_URL',
  REDIS_BIN,
  privateServer(REDIS_BIN, (p) => ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], (p) => `redis://127.0.0.1:${p}`, 'redis-server'),
);

/** A private redis-server, whatever REDIS_URL says (for tests that stop, restart or pause it). */
export const privateRedis = privateServer(
  REDIS_BIN,
  (p) => ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--enable-debug-command', 'yes'],
  (p) => `redis://127.0.0.1:${p}`,
  'redis-server',
);

/** A private memcached, whatever MEMCACHE_URL says (for tests that stop it). */
export const privateMemcached = privateServer(
  MEMCACHED_BIN,
  (p) => ['-p', String(p), '-l', '127.0.0.1', '-U', '0', '-m', '64', ...(process.getuid?.() === 0 ? ['-u', 'root'] : [])],
  (p) => `memcache://127.0.0.1:${p}`,
  'memcached',
);

/** How the Memcached specs get their server. */
export const memcached = availability('MEMCACHE_URL', MEMCACHED_BIN, privateMemcached);

/**
 * `describe` when the server is available; otherwise a loudly announced skip, or, under `CI=true`, a
 * suite that fails naming what is missing.
 */
export function describeWith(a: Pick<Availability, 'reason'> & { ok: boolean }, name: string, fn: () => void): void {
  if (a.ok) {
    describe(name, fn);
    return;
  }
  const message = `SKIPPED "${name}": ${a.reason}. Set the URL or install the server (in CI this is a failure).`;
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('has its server', () => {
        throw new Error(message);
      });
    });
    return;
  }
  console.warn(`\n*** ${message} ***\n`);
  // The reason is in the suite's name too, so Jest's own report of the skipped tests says why.
  describe.skip(`${name} (SKIPPED: ${a.reason})`, fn);
}

/** Availability of a server for {@link describeWith}. */
export function need(a: Availability, privateOnly = false): { ok: boolean; reason?: string } {
  if (privateOnly) return a.canPrivate ? { ok: true } : { ok: false, reason: a.reason ?? 'the server binary is not installed (these tests stop and pause a private server)' };
  return a.get ? { ok: true } : { ok: false, reason: a.reason };
}

/** Polls `check` until it returns true, at most `ms`; throws naming `what` otherwise. */
export async function until(what: string, check: () => boolean | Promise<boolean>, ms = 5000, every = 25): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await check()) return Date.now() - start;
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** A private 3-master Redis Cluster on free loopback ports (for the Cluster specs). */
export async function privateRedisCluster(): Promise<{ nodes: string[]; stop(): Promise<void> }> {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { execFileSync } = await import('node:child_process');
  const dir = mkdtempSync(`${tmpdir()}/fragcache-cluster-`);
  const children: ChildProcess[] = [];
  const ports: number[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const child = spawn(REDIS_BIN, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--cluster-enabled', 'yes', '--cluster-config-file', `${dir}/nodes-${port}.conf`, '--dir', dir], { stdio: 'ignore' });
      children.push(child);
      ports.push(port);
      await waitForPort(port, child, 'redis-server (cluster)');
    }
    execFileSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { stdio: 'ignore' });
    await until('the cluster to be ready', () => ports.every((p) => /cluster_state:ok/.test(execFileSync('redis-cli', ['-p', String(p), 'cluster', 'info']).toString())), 10_000, 100);
  } catch (err) {
    for (const c of children) c.kill('SIGKILL');
    throw err;
  }
  return {
    nodes: ports.map((p) => `redis://127.0.0.1:${p}`),
    async stop() {
      await Promise.all(children.map(async (c) => {
        if (c.exitCode === null && c.signalCode === null) {
          c.kill('SIGKILL');
          await once(c, 'exit');
        }
      }));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
