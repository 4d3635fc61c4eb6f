/**
 * An interleaved micro-benchmark harness for a noisy machine: each case is calibrated to a fixed time per
 * sample, then every repetition runs every case once, in rotating order, so that a slow phase of the host
 * hits all cases alike. Ratios are worked out per repetition (both cases of a ratio come from the same
 * repetition) and summarised as median / min / max.
 * @module
 */

/** One case: an async operation measured in a loop. */
export interface Case {
  name: string;
  run: () => unknown;
}

/** Nanoseconds per operation of every case, one number per repetition. */
export type Samples = Map<string, number[]>;

/** Options of {@link measure}. */
export interface MeasureOptions {
  /** Target duration of one sample, ms (default 150). */
  sampleMs?: number;
  /** Repetitions (default 7). */
  reps?: number;
  /** Warm-up duration per case, ms (default 200). */
  warmupMs?: number;
}

/** Median / min / max of a list of numbers. */
export interface Summary {
  median: number;
  min: number;
  max: number;
}

/** Median, min and max. */
export function summarise(xs: readonly number[]): Summary {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0]!, max: s[s.length - 1]! };
}

/** Runs `op` `n` times in a row, awaiting it only when it returns a promise; returns elapsed ns. */
async function timeLoop(op: () => unknown, n: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const r = op();
    if (r instanceof Promise) await r;
  }
  return Number(process.hrtime.bigint() - t0);
}

/** Warms every case up, calibrates its iteration count, then takes `reps` interleaved samples of each. */
export async function measure(cases: readonly Case[], options: MeasureOptions = {}): Promise<Samples> {
  const sampleNs = (options.sampleMs ?? 150) * 1e6;
  const reps = options.reps ?? 7;
  const warmNs = (options.warmupMs ?? 200) * 1e6;
  const iterations = new Map<string, number>();
  for (const c of cases) {
    // Warm-up doubles as calibration: grow n until one loop takes a measurable time.
    let n = 1;
    let spent = 0;
    let ns = await timeLoop(c.run, n);
    spent += ns;
    while (ns < 20e6 || spent < warmNs) {
      n = ns < 20e6 ? n * 2 : n;
      ns = await timeLoop(c.run, n);
      spent += ns;
    }
    iterations.set(c.name, Math.max(1, Math.round((n * sampleNs) / ns)));
  }
  const out: Samples = new Map(cases.map((c) => [c.name, [] as number[]]));
  for (let rep = 0; rep < reps; rep++) {
    for (let j = 0; j < cases.length; j++) {
      const c = cases[(rep + j) % cases.length]!;
      const n = iterations.get(c.name)!;
      out.get(c.name)!.push((await timeLoop(c.run, n)) / n);
    }
  }
  return out;
}

/** Per-repetition ratio `a / b`, summarised. */
export function ratio(samples: Samples, a: string, b: string): Summary {
  const xa = samples.get(a)!;
  const xb = samples.get(b)!;
  return summarise(xa.map((x, i) => x / xb[i]!));
}

/** Formats nanoseconds as ns / µs / ms with 3 significant digits. */
export function formatNs(ns: number): string {
  if (ns < 1e3) return `${ns.toPrecision(3)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toPrecision(3)} µs`;
  return `${(ns / 1e6).toPrecision(3)} ms`;
}
