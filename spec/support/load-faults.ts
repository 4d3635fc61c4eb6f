/**
 * Faults during load (issue 13): a bounded loopback load generator against the example blog (its own process,
 * see load-app.ts) on Redis or Memcached, while a fault is injected (spec/support/proxy.ts, or the server
 * itself killed and restarted). Used by spec/faults-load.spec.ts (short runs) and bench/soak.ts (`npm run soak`).
 *
 * Every response is checked: status 200 and the page greets the user whose cookie was sent (never another's).
 * Measured per fault: failed requests (network errors, 5xx, wrong user), p99 latency of requests started
 * during the fault, and recovery time: from the end of the fault to the first moment from which the page hit
 * rate over the next 300 ms is back to 75% of its steady value.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import type { FaultProxy } from './proxy';
import type { TestServer } from './servers';

/** One response as the load generator saw it. */
export interface Sample {
  start: number;
  end: number;
  status: number;
  hit: boolean;
  /** False for a network error, a 5xx, or a page that greets someone else. */
  ok: boolean;
  detail?: string;
}

/** What the app process reports about itself. */
export interface Probe {
  heapUsed: number;
  inflight: number;
  hits: number;
  misses: number;
  errors: string[];
  resets: number;
}

/** The example app in a child process. */
export interface AppProcess {
  port: number;
  probe(): Promise<Probe>;
  /** Closes the engine (reports how long that took) and waits for the process to exit. */
  close(): Promise<number>;
  child: ChildProcess;
}

const USERS = { alice: 'Hello, Alice', bob: 'Hello, Bob' } as const;

/** Starts the example app on `store` in its own process. */
export async function startApp(store: string, prefix: string, timeoutMs?: number): Promise<AppProcess> {
  const script = path.join(__dirname, 'load-app.ts');
  const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', script, store, prefix, ...(timeoutMs ? [String(timeoutMs)] : [])], {
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    env: { ...process.env, NODE_ENV: 'production' },
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the example app did not start within 30 s')), 30_000);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
      const m = /listening (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`the example app exited (${code})`))));
  });
  const ask = <T>(type: string, answer: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the example app did not answer "${type}" within 10 s`)), 10_000);
      const on = (m: { type: string }) => {
        if (m.type !== answer) return;
        clearTimeout(timer);
        child.off('message', on);
        resolve(m as T);
      };
      child.on('message', on);
      child.send({ type });
    });
  return {
    port,
    child,
    probe: () => ask<Probe>('probe', 'probe'),
    async close() {
      if (child.exitCode !== null) return 0;
      const exited = new Promise((r) => child.once('exit', r));
      const { ms } = await ask<{ ms: number }>('close', 'closed');
      await exited;
      return ms;
    },
  };
}

/** Runs `concurrency` request loops against the app until stopped; every response is checked. */
export function startLoad(port: number, concurrency = 8): { stop(): Promise<Sample[]>; samples: Sample[] } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const samples: Sample[] = [];
  let running = true;
  let n = 0;
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const i = n++;
      const user = i % 2 ? 'bob' : 'alice';
      const start = performance.now();
      const req = http.get({ host: '127.0.0.1', port, path: `/articles/${1 + (i % 5)}`, headers: { cookie: `uid=${user}` }, agent, timeout: 10_000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => {
          const greeting = /class="hello">([^<]*)</.exec(body)?.[1];
          const status = res.statusCode ?? 0;
          const ok = status === 200 && greeting === USERS[user];
          samples.push({ start, end: performance.now(), status, hit: res.headers['x-cache'] === 'HIT', ok, detail: ok ? undefined : `${status} ${user} got ${greeting ?? body.slice(0, 60)}` });
          resolve();
        });
        res.on('error', (err) => (samples.push({ start, end: performance.now(), status: 0, hit: false, ok: false, detail: String(err) }), resolve()));
      });
      req.on('timeout', () => req.destroy(new Error('client timeout (10 s)')));
      req.on('error', (err) => (samples.push({ start, end: performance.now(), status: 0, hit: false, ok: false, detail: String(err) }), resolve()));
    });
  const loops = Array.from({ length: concurrency }, async () => {
    while (running) await one();
  });
  return {
    samples,
    async stop() {
      running = false;
      await Promise.all(loops);
      agent.destroy();
      return samples;
    },
  };
}

/** The faults of issue 13. */
export type FaultKind = 'kill-connection' | 'stall-2s' | 'latency-50ms' | 'garbage' | 'restart-server';

/** Result of one fault under load. */
export interface FaultResult {
  fault: FaultKind;
  store: string;
  requests: number;
  failed: number;
  /** Up to 5 descriptions of failed requests. */
  failures: string[];
  steadyHitRate: number;
  steadyP99: number;
  /** p99 of requests started during the fault (its first 500 ms for an instant fault). */
  faultP99: number;
  faultMax: number;
  /** ms from the end of the fault until the hit rate is back (0: it never dropped); Infinity: never. */
  recoveryMs: number;
}

function p99(xs: number[]): number {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)];
}

const hitRate = (xs: Sample[]) => (xs.length ? xs.filter((s) => s.hit).length / xs.length : 0);

/**
 * Recovery: from `end`, the first request start from which the next 300 ms of requests hit at ≥ 75% of the
 * steady rate (a loaded machine times some calls out in steady state too, so "back" cannot mean 100%).
 */
export function recovery(samples: Sample[], end: number, steady: number): number {
  const after = samples.filter((s) => s.start >= end).sort((a, b) => a.start - b.start);
  for (let i = 0; i < after.length; i++) {
    const t = after[i].start;
    const window = [];
    for (let j = i; j < after.length && after[j].start < t + 300; j++) window.push(after[j]);
    if (after[after.length - 1].start < t + 300) break; // not a full window left
    if (window.length >= 5 && hitRate(window) >= 0.75 * steady) return Math.max(0, t - end);
  }
  return Infinity;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs one fault under load: `steadyMs` of load, the fault, then `afterMs` of load. `proxy` must sit between
 * the app and `server` for the link faults; `restart-server` kills `server` and starts it again after `downMs`.
 */
export async function runFault(opts: {
  fault: FaultKind;
  store: string;
  app: AppProcess;
  proxy?: FaultProxy;
  server?: TestServer;
  steadyMs?: number;
  afterMs?: number;
  downMs?: number;
  concurrency?: number;
}): Promise<FaultResult> {
  // (The app's time budget is set when it starts: see startApp.)
  const { fault, app, proxy, server } = opts;
  const load = startLoad(app.port, opts.concurrency ?? 8);
  // Steady state first: the last 300 ms of requests hit at ≥ 90% (bounded: a cold, loaded machine is slow).
  const warmUntil = performance.now() + 20_000;
  await sleep(opts.steadyMs ?? 1000);
  while (performance.now() < warmUntil) {
    const now = performance.now();
    const recent = load.samples.filter((s) => s.start > now - 600 && s.end < now);
    if (recent.length >= 5 && hitRate(recent) >= 0.9) break;
    await sleep(100);
  }
  const faultStart = performance.now();
  switch (fault) {
    case 'kill-connection':
      proxy!.kill();
      break;
    case 'stall-2s':
      proxy!.stall();
      await sleep(2000);
      proxy!.resume();
      break;
    case 'latency-50ms':
      proxy!.latency(50);
      await sleep(2000);
      proxy!.latency(0);
      break;
    case 'garbage':
      proxy!.garbleNext();
      break;
    case 'restart-server':
      await server!.kill();
      await sleep(opts.downMs ?? 1000);
      await server!.start();
      break;
  }
  const faultEnd = performance.now();
  await sleep(opts.afterMs ?? 2000);
  const samples = await load.stop();
  const steady = samples.filter((s) => s.start >= faultStart - 600 && s.start < faultStart);
  const during = samples.filter((s) => s.start >= faultStart && s.start < Math.max(faultEnd, faultStart + 500));
  const failed = samples.filter((s) => !s.ok);
  const steadyHitRate = hitRate(steady);
  return {
    fault,
    store: opts.store,
    requests: samples.length,
    failed: failed.length,
    failures: failed.slice(0, 5).map((s) => s.detail ?? ''),
    steadyHitRate,
    steadyP99: p99(steady.map((s) => s.end - s.start)),
    faultP99: p99(during.map((s) => s.end - s.start)),
    faultMax: Math.max(0, ...during.map((s) => s.end - s.start)),
    recoveryMs: recovery(samples, faultEnd, steadyHitRate),
  };
}

/** Measures p99 of the uncached page under the same load (the "render time" of the latency bound). */
export async function uncachedP99(port: number, ms = 1000, concurrency = 8): Promise<number> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const times: number[] = [];
  const end = Date.now() + ms;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, k) => {
      for (let i = k; Date.now() < end; i += concurrency) {
        const t0 = performance.now();
        await new Promise<void>((resolve) => {
          http
            .get({ host: '127.0.0.1', port, path: `/uncached/articles/${1 + (i % 5)}`, headers: { cookie: `uid=${i % 2 ? 'bob' : 'alice'}` }, agent }, (res) => {
              res.resume();
              res.on('end', () => resolve());
            })
            .on('error', () => resolve());
        });
        times.push(performance.now() - t0);
      }
    }),
  );
  agent.destroy();
  return p99(times);
}

/** One row of the fault table (docs/reliability-faults.md). */
export function row(r: FaultResult, budget: number, renderP99: number): string {
  const rec = r.recoveryMs === Infinity ? 'never' : `${Math.round(r.recoveryMs)} ms`;
  return `| ${r.store} | ${r.fault} | ${r.requests} | ${r.failed} | ${r.faultP99.toFixed(0)} ms (max ${r.faultMax.toFixed(0)}) | ${(budget + renderP99).toFixed(0)} ms | ${rec} |`;
}
