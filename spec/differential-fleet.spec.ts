/**
 * The differential test across two processes on one Redis (issue 13, "Hostile input": concurrent renders sharing
 * one Redis from two processes). The seeded random template sets of `spec/differential.spec.ts` (generator in
 * `spec/support/differential.ts`) are rendered by TWO forked processes (`spec/support/differential-worker.ts`), each
 * with its own engine and Redis connection, on the same Redis and the same prefix, and every output is compared with
 * plain Nunjucks rendering the same templates without the cache tags, on the same data. The parent owns the data
 * and sends it with every request, so both processes render identical data.
 *
 * Each case:
 * 1. cold: both processes, released together, render the page 3 times each at once (6 concurrent renders of a
 *    cold page: single-flight and lock waiting across processes, no torn or mixed fragments);
 * 2. a hit round (2 renders each);
 * 3. for each kind of invalidation (tag, name, variant, as the one-process test chooses them): the parent changes the
 *    data; one process (they take turns) invalidates, while the OTHER keeps rendering the old data it loaded before
 *    the invalidation started (`since` = then), and once more after the invalidation resolved: each of these
 *    renders must show the old data exactly (and fencing must keep them out of the store); then both processes
 *    render the new data at once (3 each), and again (1 each): every output must equal plain Nunjucks' on the new
 *    data. One process renders with `since` (the request's start), the other without, alternating with the seed.
 *
 * A mismatch is reduced (while it still fails) and printed with its seed: `DIFF_SEED=<seed> npx jest
 * spec/differential-fleet.spec.ts` replays it. `DIFF_CASES=2000` runs 200 cases (the default, 100, runs 10).
 */
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  describeInvalidation, disagreement, files, genProgram, initialData, invalidationSteps, plainEnvironment, plainRender, showTemplates, shrink, type Data,
  type Program,
} from './support/differential';
import type { Reply, Request } from './support/differential-worker';
import { workerScript } from './support/fleet';
import { describeWith, need, redis, uniquePrefix, type TestServer } from './support/servers';
import { writeTemplates } from './support/views';

type ReplyOf<T extends Reply['type']> = Extract<Reply, { type: T }>;

/** A forked worker; one request at a time (a `straddle` is answered twice, and takes a `stop` in between). */
class Proc {
  readonly child: ChildProcess;
  private readonly waiting: { type: Reply['type']; resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  private failure: Error | undefined;
  private readonly exited: Promise<void>;

  constructor(readonly name: string) {
    this.child = fork(workerScript('differential-worker.ts'), [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (m: Reply) => {
      if (m.type === 'error') return this.fail(new Error(`${name} failed: ${m.message}`));
      const i = this.waiting.findIndex((w) => w.type === m.type);
      if (i < 0) return this.fail(new Error(`${name}: unexpected reply ${JSON.stringify(m).slice(0, 200)}`));
      this.waiting.splice(i, 1)[0].resolve(m);
    });
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
    void this.exited.then(() => this.fail(new Error(`${name} exited (code ${this.child.exitCode}, signal ${this.child.signalCode})`)));
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const w of this.waiting.splice(0)) w.reject(e);
  }

  send(m: Request): void {
    if (this.failure) throw this.failure;
    this.child.send(m);
  }

  /** The next reply of that type. */
  next<T extends Reply['type']>(type: T): Promise<ReplyOf<T>> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiting.push({ type, resolve: resolve as (r: Reply) => void, reject }));
  }

  ask<T extends Reply['type']>(m: Request, type: T): Promise<ReplyOf<T>> {
    const reply = this.next(type); // registered first: the reply may come quickly
    this.send(m);
    return reply;
  }

  async exit(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (!this.failure && this.child.connected) this.child.send({ type: 'exit' } satisfies Request);
    else this.child.kill();
    // A worker stuck in a request (a failed or timed-out test) does not get to the `exit`: kill it after a while.
    const stuck = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(stuck);
  }
}

let tmp: string;
let server: TestServer;
let procs: [Proc, Proc];
/** The run's prefix; each case (and each shrink candidate) gets its own under it, shared by both processes. */
const runPrefix = uniquePrefix('dfleet');
let cases = 0;
/** Outputs compared with plain Nunjucks in this file so far. */
let renders = 0;

/**
 * Runs one case on the two processes. Null when every output matched plain Nunjucks'; else the first mismatch.
 * `unfenced`: process 2 stores what fencing would refuse (the test must then fail).
 */
async function check(p: Program, seed: number, unfenced = false): Promise<string | null> {
  const id = cases++;
  const dir = path.join(tmp, `c${id}`);
  writeTemplates(dir, files(p, true));
  writeTemplates(`${dir}-plain`, files(p, false));
  const plain = plainEnvironment(`${dir}-plain`);
  const prefix = `${runPrefix}c${id}`;
  await Promise.all(procs.map((w, i) => w.ask({ type: 'case', url: server.url, dir, prefix, unfenced: unfenced && i === 1 }, 'ready')));
  // Which process passes `since` (the other renders without: its start stands in for it).
  const since = (i: number) => (seed + i) % 2 === 0;
  const compare = (what: string, who: number, outputs: string[], want: string): string | null => {
    for (const [j, got] of outputs.entries()) {
      renders++;
      const d = disagreement(`${what}: process ${who + 1} (${since(who) ? 'with since' : 'without since'}), render ${j + 1} of ${outputs.length}`, got, want);
      if (d) return d;
    }
    return null;
  };
  /** Both processes render `n` times each, all at once. */
  const both = async (what: string, data: Data, n: number): Promise<string | null> => {
    const want = plainRender(plain, data);
    const replies = await Promise.all(procs.map((w, i) => w.ask({ type: 'render', data, n, since: since(i) }, 'rendered')));
    for (const [i, r] of replies.entries()) {
      const d = compare(what, i, r.outputs, want);
      if (d) return d;
    }
    return null;
  };

  const data = initialData();
  let fail = (await both('cold, both processes at once', data, 3)) ?? (await both('hit', data, 2));
  for (const [k, step] of invalidationSteps(p, seed, data).entries()) {
    if (fail) break;
    const before = structuredClone(data);
    const inv = step(); // changes `data`
    if (!inv) continue;
    const op = describeInvalidation(inv);
    const by = (seed + k) % 2;
    const [invalidator, other] = [procs[by], procs[1 - by]];
    // The other process renders the data it loaded before the write, while (and after) the invalidation runs.
    const straddled = other.next('rendered');
    await other.ask({ type: 'straddle', data: before }, 'straddling');
    await invalidator.ask({ type: 'invalidate', inv }, 'invalidated');
    other.send({ type: 'stop' });
    fail = compare(`old data rendered by the other process while process ${by + 1} ran ${op}, and once after`, 1 - by, (await straddled).outputs, plainRender(plain, before));
    fail ??= (await both(`after ${op} by process ${by + 1}, both processes at once`, data, 3)) ?? (await both(`after ${op}, again`, data, 1));
  }
  return fail;
}

/** Both processes' totals (renders, fenced writes, error events). */
async function totals(): Promise<{ renders: number; fenced: number; errors: number }> {
  const t = await Promise.all(procs.map((w) => w.ask({ type: 'totals' }, 'totals')));
  return { renders: t[0].renders + t[1].renders, fenced: t[0].fenced + t[1].fenced, errors: t[0].errors + t[1].errors };
}

/** The seeds of a run; `DIFF_SEED` replays one. */
function seeds(from: number, count: number): number[] {
  return process.env.DIFF_SEED ? [Number(process.env.DIFF_SEED)] : Array.from({ length: count }, (_, i) => from + i);
}

/** A failure with its seed and templates (reduced while it still fails, within `ms`). */
async function report(program: Program, seed: number, fail: string, ms: number, unfenced = false): Promise<Error> {
  const deadline = Date.now() + ms;
  const small = await shrink(program, async (q) => Date.now() < deadline && (await check(q, seed, unfenced)) !== null, 150);
  const again = small === program ? null : await check(small, seed, unfenced);
  const reduced = small !== program && again !== null;
  return new Error(
    `differential failure across two processes on Redis, seed ${seed} (DIFF_SEED=${seed} npx jest spec/differential-fleet.spec.ts to replay)\n` +
      `${reduced ? again : fail}\n${reduced ? 'minimal templates' : 'templates (not reduced: no smaller set failed again)'}:\n${showTemplates(reduced ? small : program)}`,
  );
}

// 10 cases by default (DIFF_CASES=2000 for a longer run: 200).
const N = Math.ceil(Number(process.env.DIFF_CASES ?? 100) / 10);

describeWith(need(redis), 'differential across two processes sharing one Redis', () => {
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fragcache-dfleet-'));
    server = await redis.get!();
    procs = [new Proc('process 1'), new Proc('process 2')];
  });
  afterAll(async () => {
    await Promise.all((procs ?? []).map((w) => w.exit()));
    await server?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test(`${N} seeded template sets: cold, hit, and after each kind of invalidation, both processes at once`, async () => {
    const start = { renders, totals: await totals(), at: Date.now() };
    for (const seed of seeds(400_001, N)) {
      const program = genProgram(seed);
      const fail = await check(program, seed);
      if (fail) throw await report(program, seed, fail, 60_000);
    }
    const end = await totals();
    const summary = { cases: seeds(400_001, N).length, compared: renders - start.renders, fenced: end.fenced - start.totals.fenced, errors: end.errors - start.totals.errors, ms: Date.now() - start.at };
    if (process.env.DIFF_CASES) console.log(`differential across two processes: ${JSON.stringify(summary)}`);
    expect(summary.compared).toBeGreaterThanOrEqual(summary.cases * 10);
    // Renders of old data after an invalidation really raced it: fencing refused to store some.
    if (!process.env.DIFF_SEED) expect(summary.fenced).toBeGreaterThan(0);
  }, Math.max(120_000, N * 3000));

  test('the same run with fencing off in one process fails (old output stored after an invalidation is served to both)', async () => {
    let found: string | undefined;
    for (let seed = 400_001; seed < 400_041; seed++) {
      const fail = await check(genProgram(seed), seed, true);
      if (fail) {
        found = `seed ${seed}: ${fail}`;
        break;
      }
    }
    expect(found).toMatch(/^seed \d+: after invalidate/);
  }, 120_000);
});
