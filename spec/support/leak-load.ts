/**
 * The cross-user leak check of issue 13: many simulated users, each with their own session cookie, against
 * instances of the example blog (fragment and page caching on), every response checked against that user's
 * own data. Used by `leak.spec` (short) and `npm run soak` (long).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import path from 'node:path';

/** A user of the example's cookie session. */
export interface LoadUser {
  id: string;
  name: string;
  readingList: number[];
}

/** `n` users, the same in every process (derived from their index). */
export function makeUsers(n: number): Record<string, LoadUser> {
  const out: Record<string, LoadUser> = {};
  for (let i = 0; i < n; i++) out[`u${i}`] = { id: `u${i}`, name: `User ${i}`, readingList: [(i % 5) + 1, ((i * 7 + 2) % 5) + 1] };
  return out;
}

/** Outcome of a load run. */
export interface LeakReport {
  responses: number;
  /** Responses showing anything but their own user's name and reading list. */
  leaks: number;
  /** Requests that failed or answered other than 200. */
  failures: number;
  /** Whole-page hits among the responses. */
  pageHits: number;
  /** Up to 5 examples of leaks or failures. */
  examples: string[];
}

function get(port: number, path: string, cookie: string | undefined, agent: http.Agent): Promise<{ status: number; body: string; cache: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent, headers: { host: 'blog.example', ...(cookie ? { cookie } : {}) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), cache: String(res.headers['x-cache'] ?? '') }));
    });
    req.on('error', reject);
  });
}

/** What the sidebar of `user` (undefined: a guest) must show, and nothing else. */
function check(body: string, user: LoadUser | undefined): string | undefined {
  const hello = /class="hello">([^<]*)</.exec(body)?.[1];
  const list = [...(/<nav class="sidebar">([\s\S]*?)<\/nav>/.exec(body)?.[1] ?? '').matchAll(/href="\/articles\/(\d+)"/g)].map((m) => Number(m[1]));
  const want = user ? `Hello, ${user.name}` : 'Hello, guest';
  if (hello !== want) return `expected "${want}", got "${hello}"`;
  const wantList = user ? user.readingList : [];
  if (list.join(',') !== wantList.join(',')) return `${want}: reading list ${list.join(',')} instead of ${wantList.join(',')}`;
  return undefined;
}

/** Sends `responses` requests of random users (and guests) to random pages of the instances on `ports`. */
export async function runLeakLoad(o: { ports: number[]; users: Record<string, LoadUser>; responses: number; concurrency?: number }): Promise<LeakReport> {
  const ids = Object.keys(o.users);
  const pages = ['/', '/articles/1', '/articles/2', '/articles/3', '/fragment/articles/1', '/fragment/articles/4'];
  const agent = new http.Agent({ keepAlive: true, maxSockets: o.concurrency ?? 16 });
  const report: LeakReport = { responses: 0, leaks: 0, failures: 0, pageHits: 0, examples: [] };
  let sent = 0;
  const worker = async () => {
    while (sent < o.responses) {
      sent++;
      const guest = Math.random() < 0.05;
      const user = guest ? undefined : o.users[ids[Math.floor(Math.random() * ids.length)]!];
      const path = pages[Math.floor(Math.random() * pages.length)]!;
      const port = o.ports[Math.floor(Math.random() * o.ports.length)]!;
      try {
        const r = await get(port, path, user ? `uid=${user.id}` : undefined, agent);
        report.responses++;
        if (r.cache === 'HIT') report.pageHits++;
        const bad = r.status !== 200 ? `status ${r.status}` : check(r.body, user);
        if (bad) {
          if (r.status !== 200) report.failures++;
          else report.leaks++;
          if (report.examples.length < 5) report.examples.push(`${path} as ${user?.id ?? 'guest'} on :${port}: ${bad}`);
        }
      } catch (err) {
        report.failures++;
        if (report.examples.length < 5) report.examples.push(`${path}: ${String(err)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency ?? 16 }, worker));
  agent.destroy();
  return report;
}

/** Starts `n` example-blog processes on `store` (each its own engine and connection); resolves their ports. */
export async function startWorkers(store: string, prefix: string, users: number, n: number, script = 'example-worker.ts'): Promise<{ ports: number[]; stop(): Promise<void> }> {
  const file = path.join(__dirname, script);
  const children = Array.from({ length: n }, () => spawn(process.execPath, [require.resolve('tsx/cli'), file, store, prefix, String(users)], { stdio: ['ignore', 'pipe', 'inherit'] }));
  const stop = async () => {
    await Promise.all(children.map(async (c) => {
      if (c.exitCode !== null || c.signalCode !== null) return;
      c.kill('SIGTERM');
      const t = setTimeout(() => c.kill('SIGKILL'), 5000);
      await once(c, 'exit');
      clearTimeout(t);
    }));
  };
  try {
    const ports = await Promise.all(children.map((c) => new Promise<number>((resolve, reject) => {
      let out = '';
      c.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(Number(out.trim()));
      });
      c.once('exit', (code) => reject(new Error(`example worker exited with ${code} before listening`)));
    })));
    return { ports, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
