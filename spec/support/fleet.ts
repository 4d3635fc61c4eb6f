/**
 * Runs fleets of `fleet-worker.ts` processes and checks their histories (used by `spec/fleet.spec.ts` and
 * `bench/soak-fleet.ts`).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { Mode, Setup } from './fleet-worker';

const bundled = new Map<string, string>();

/**
 * A worker (`fleet-worker.ts` unless named) and the library sources it imports, bundled once into one plain script
 * (esbuild, which tsx brings): a worker then starts in a fraction of the time tsx takes to compile the sources in
 * each process. Packages stay external and resolve from the project's node_modules. Fork it with IPC.
 */
export function workerScript(entry = 'fleet-worker.ts'): string {
  const done = bundled.get(entry);
  if (done) return done;
  const root = path.resolve(__dirname, '..', '..');
  const out = path.join(root, 'node_modules', '.cache', 'fragcache-fleet', `${path.basename(entry, '.ts')}-${process.pid}.js`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  (require('esbuild') as typeof import('esbuild')).buildSync({
    entryPoints: [path.join(__dirname, entry)],
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    packages: 'external',
    outfile: out,
    logLevel: 'error',
  });
  process.once('exit', () => rmSync(out, { force: true }));
  bundled.set(entry, out);
  return out;
}

interface Worker {
  child: ChildProcess;
  ready: Promise<void>;
  done: Promise<unknown>;
}

function start(setup: Setup): Worker {
  const child = fork(workerScript(), [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => (readyResolve = r));
  const done = new Promise<unknown>((resolve, reject) => {
    child.on('message', (m: { type: string; result?: unknown; message?: string }) => {
      if (m.type === 'ready') readyResolve();
      else if (m.type === 'done') resolve(m.result);
      else if (m.type === 'error') reject(new Error(`fleet worker failed: ${m.message}`));
    });
    child.on('exit', (code) => reject(new Error(`fleet worker exited with ${code} before reporting`)));
  });
  done.catch(() => readyResolve()); // a worker that dies before `ready` must not hang the barrier
  child.send(setup);
  return { child, ready, done };
}

/** Starts the workers, waits until all are ready, releases them together, and collects their results. */
export async function runFleet<T = unknown>(setups: Setup[]): Promise<T[]> {
  const workers = setups.map(start);
  try {
    await Promise.all(workers.map((w) => w.ready));
    for (const w of workers) w.child.send({ type: 'go' });
    return (await Promise.all(workers.map((w) => w.done))) as T[];
  } finally {
    for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null && !w.child.connected) w.child.kill();
  }
}

export interface RenderResult {
  /** Per mode: [start, version shown] of each render (page modes: [start, version shown, end] of each response). */
  renders: Record<string, [number, number, ...number[]][]>;
  arrivals: Record<string, number[]>;
  fenced: Record<string, number>;
}
/** What a `serve` worker (page modes) reports: its responses as renders, and how many were page-cache hits. */
export interface ServeResult extends RenderResult {
  hits: Record<string, number>;
}
export interface WriteResult {
  invalidations: Record<string, [number, number, number, string][]>;
}

/** What one mode's history shows. */
export interface Verdict {
  renders: number;
  invalidations: number;
  /** Renders that started after the invalidation of a newer version resolved and showed an older one. */
  stale: number;
  /** Stale renders later than the allowed window after that invalidation resolved (the L1's delivery; `window`). */
  beyond: number;
  /** For stale renders: ms from the invalidation's resolution to the render's start. */
  lags: number[];
  /** L1 only: delivery of each invalidation message to each renderer, ms after the invalidation resolved. */
  delivery: number[];
  fenced: number;
}

/**
 * Checks one mode's history. A render is stale when it started after the invalidation of a newer version
 * resolved and shows an older version. With `l1`, a stale render counts as `beyond` only when it started
 * after its process received that invalidation's message; otherwise, beyond `windowMs` after the resolution.
 */
export function verdict(prefix: string, writer: WriteResult, renderers: RenderResult[], opts: { l1?: boolean; windowMs?: number } = {}): Verdict {
  const inv = writer.invalidations[prefix] ?? [];
  const out: Verdict = { renders: 0, invalidations: inv.length, stale: 0, beyond: 0, lags: [], delivery: [], fenced: 0 };
  for (const r of renderers) {
    out.fenced += r.fenced[prefix] ?? 0;
    const arrivals = r.arrivals[prefix] ?? [];
    if (opts.l1) {
      // The i-th message is the i-th invalidation (one publisher connection: Redis keeps their order). Every
      // worker engine also invalidated a "warm" tag before the start: skip that message.
      const offset = arrivals.length - inv.length;
      inv.forEach(([, , resolved], i) => {
        const at = arrivals[i + offset];
        if (at !== undefined) out.delivery.push(at - resolved);
      });
    }
    for (const [startedAt, shown] of r.renders[prefix] ?? []) {
      out.renders++;
      // The newest invalidation that had resolved when this render started.
      let k = -1;
      for (let i = inv.length - 1; i >= 0; i--) {
        if (inv[i][2] < startedAt) {
          k = i;
          break;
        }
      }
      if (k < 0 || !(shown < inv[k][0])) continue;
      out.stale++;
      const lag = startedAt - inv[k][2];
      out.lags.push(lag);
      if (opts.l1) {
        const offset = arrivals.length - inv.length;
        const at = arrivals[k + offset];
        if (at === undefined || startedAt > at) out.beyond++;
      } else if (lag > (opts.windowMs ?? 0)) out.beyond++;
    }
  }
  return out;
}

/** p-th percentile (0..100) of numbers, or NaN for none. */
export function percentile(xs: readonly number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** The modes of a linearizability run, on fresh prefixes. */
export function modes(tag: string, windowMs: number, gap: [number, number], slowGap: [number, number]): Record<'known' | 'knownL1' | 'unknown' | 'unfenced', Mode> {
  const id = `${tag}${Math.random().toString(36).slice(2, 8)}`;
  const m = (name: string, o: Partial<Mode>): Mode => ({ prefix: `f${id}${name}`, dataKey: `f${id}${name}:data`, l1: false, since: true, fence: true, gap, ...o });
  return {
    known: m('known', {}),
    knownL1: m('l1', { l1: true }),
    unknown: m('unknown', { since: false, unknownSinceWindow: windowMs, gap: slowGap }),
    unfenced: m('unfenced', { fence: false }),
  };
}

/**
 * The page modes of a linearizability run, on fresh prefixes: the data loaded in the route or before the page
 * cache, each without and with the L1; and a contrast whose writer never invalidates (the check must see it).
 */
export function pageModes(tag: string, gap: [number, number], loops = 1): Record<'route' | 'early' | 'routeL1' | 'earlyL1' | 'none', Mode> {
  const id = `${tag}${Math.random().toString(36).slice(2, 8)}`;
  const m = (name: string, o: Partial<Mode>): Mode => ({ prefix: `p${id}${name}`, dataKey: `p${id}${name}:data`, l1: false, since: true, fence: true, gap, page: 'route', loops, ...o });
  return {
    route: m('route', {}),
    early: m('early', { page: 'early' }),
    routeL1: m('routel1', { l1: true }),
    earlyL1: m('earlyl1', { page: 'early', l1: true }),
    none: m('none', { invalidate: false, loops: 1, gap: [gap[0] * 4, gap[1] * 4] }),
  };
}

/** One page mode's verdict, with the page-cache hits among its responses. */
export type PageVerdict = Verdict & { hits: number };

/** The verdict of each page mode (with the L1: a stale response counts only after its process got the message). */
export function pageVerdicts<K extends string>(modes: Record<K, Mode>, writer: WriteResult, servers: ServeResult[]): Record<K, PageVerdict> {
  const out = {} as Record<K, PageVerdict>;
  for (const k of Object.keys(modes) as K[]) {
    const m = modes[k];
    out[k] = { ...verdict(m.prefix, writer, servers, { l1: m.l1 }), hits: servers.reduce((n, s) => n + (s.hits[m.prefix] ?? 0), 0) };
  }
  return out;
}
