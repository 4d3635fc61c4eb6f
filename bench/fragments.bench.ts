/**
 * The core benchmark: what a `cache` hit costs against the ideal (the same HTML pasted into the template)
 * and against rendering it, for one big fragment and for many small ones, and what a cached fragment
 * costs in memory. Every timing row comes from one interleaved run and is reported as ratios worked out
 * per repetition (see bench/support/harness.ts); each goal is printed with PASS or MISS. The process
 * exits 0 on a MISS (benchmarks inform, they do not fail CI) and 1 only when cached and uncached outputs
 * differ, which is a bug, not a performance result.
 *
 * Run: `npm run bench fragments` (or `npx tsx bench/fragments.bench.ts`).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Keyv from 'keyv';
import { createEngine, type Engine } from '../lib/engine';
import { KeyvStore } from '../lib/stores/keyv';
import { MemoryStore } from '../lib/stores/memory';
import type { Store } from '../lib/store';
import { addFilters, pageContext } from './support/data';
import { formatNs, measure, ratio, summarise, type Summary } from './support/harness';
import { canGc, heapPerItem } from './support/heap';

const VIEWS = path.join(__dirname, 'templates');

/** Heap measurements need --expose-gc: re-run this file with it when started without. */
if (!canGc()) {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', __filename, ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

interface Goal {
  what: string;
  value: Summary;
  unit: string;
  target: string;
  pass: boolean;
}

const goals: Goal[] = [];
const context: string[] = [];

function engineWith(store: Store, extraViews: string[] = []): Engine {
  const engine = createEngine({ views: [VIEWS, ...extraViews], store });
  addFilters(engine.env);
  return engine;
}

function check(label: string, got: string, want: string): void {
  if (got !== want) {
    let at = 0;
    while (at < got.length && got[at] === want[at]) at++;
    console.error(`OUTPUT MISMATCH (${label}) at char ${at}:\n  got:  ${JSON.stringify(got.slice(Math.max(0, at - 40), at + 60))}\n  want: ${JSON.stringify(want.slice(Math.max(0, at - 40), at + 60))}`);
    process.exit(1);
  }
}

const fmt = (s: Summary, digits = 2) => `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;

async function timings(tmp: string): Promise<void> {
  const ctx = pageContext(200);
  const mem = engineWith(new MemoryStore(), [tmp]);
  const keyv = engineWith(new KeyvStore(new Keyv()), [tmp]);

  // The literal page: the cached page with the table's rendered HTML pasted in place of the cache block.
  const tableHtml = await mem.render('table.njk', ctx);
  if (/<%|%>|\{\{|\{#|\{%/.test(tableHtml)) throw new Error('the table HTML contains template delimiters; cannot paste it as a literal');
  const cachedSrc = readFileSync(path.join(VIEWS, 'page-cached.njk'), 'utf8');
  const block = /<% cache [^%]*%>[\s\S]*?<% endcache %>/;
  if (!block.test(cachedSrc)) throw new Error('page-cached.njk has no cache block');
  writeFileSync(path.join(tmp, 'page-literal.njk'), cachedSrc.replace(block, () => tableHtml));

  const uncached = await mem.render('page-uncached.njk', ctx);
  const first = await mem.render('page-cached.njk', ctx); // miss: renders and stores
  check('cached miss vs uncached', first, uncached);
  check('cached hit vs uncached', await mem.render('page-cached.njk', ctx), uncached);
  check('literal vs uncached', await mem.render('page-literal.njk', ctx), uncached);
  await keyv.render('page-cached.njk', ctx);
  check('keyv hit vs uncached', await keyv.render('page-cached.njk', ctx), uncached);
  const hitsBefore = mem.stats().hits;
  await mem.render('page-cached.njk', ctx);
  if (mem.stats().hits !== hitsBefore + 1) throw new Error('the cached page did not hit');

  // 20 small blocks in a loop.
  const listCtx = { items: pageContext(20).rows };
  const listPlain = await mem.render('list-uncached.njk', listCtx);
  check('list miss vs uncached', await mem.render('list-cached.njk', listCtx), listPlain);
  check('list hit vs uncached', await mem.render('list-cached.njk', listCtx), listPlain);
  await keyv.render('list-cached.njk', listCtx);
  check('list keyv hit vs uncached', await keyv.render('list-cached.njk', listCtx), listPlain);
  const listHits = mem.stats().hits;
  await mem.render('list-cached.njk', listCtx);
  if (mem.stats().hits !== listHits + 20) throw new Error('the cached list did not hit 20 times');

  console.log(`page ${uncached.length} chars (table fragment ${tableHtml.length}); list page ${listPlain.length} chars, 20 fragments`);
  const samples = await measure(
    [
      { name: 'page: uncached', run: () => mem.render('page-uncached.njk', ctx) },
      { name: 'page: table pasted as literal', run: () => mem.render('page-literal.njk', ctx) },
      { name: 'page: cache hit, memory store', run: () => mem.render('page-cached.njk', ctx) },
      { name: 'page: cache hit, Keyv memory', run: () => keyv.render('page-cached.njk', ctx) },
      { name: 'list: uncached', run: () => mem.render('list-uncached.njk', listCtx) },
      { name: 'list: 20 hits, memory store', run: () => mem.render('list-cached.njk', listCtx) },
      { name: 'list: 20 hits, Keyv memory', run: () => keyv.render('list-cached.njk', listCtx) },
    ],
    { sampleMs: Number(process.env.BENCH_SAMPLE_MS ?? 40), reps: Number(process.env.BENCH_REPS ?? 21) },
  );

  console.log('\nper render, median (min–max) over repetitions:');
  for (const [name, xs] of samples) {
    const s = summarise(xs);
    console.log(`  ${name.padEnd(34)} ${formatNs(s.median).padStart(10)}  (${formatNs(s.min)} – ${formatNs(s.max)})`);
  }

  const hitVsLiteral = ratio(samples, 'page: cache hit, memory store', 'page: table pasted as literal');
  goals.push({ what: '200-row page: hit / literal', value: hitVsLiteral, unit: '×', target: '≤ 1.1', pass: hitVsLiteral.median <= 1.1 });
  const speedup = ratio(samples, 'page: uncached', 'page: cache hit, memory store');
  goals.push({ what: '200-row page: uncached / hit', value: speedup, unit: '×', target: '≥ 40', pass: speedup.median >= 40 });
  const list = ratio(samples, 'list: 20 hits, memory store', 'list: uncached');
  goals.push({ what: '20 small blocks: hits / uncached', value: list, unit: '×', target: '≤ 0.8', pass: list.median <= 0.8 });
  context.push(`200-row page: Keyv-memory hit / memory hit   ${fmt(ratio(samples, 'page: cache hit, Keyv memory', 'page: cache hit, memory store'))}×  (two passes + getMany + decode)`);
  context.push(`200-row page: uncached / Keyv-memory hit     ${fmt(ratio(samples, 'page: uncached', 'page: cache hit, Keyv memory'), 1)}×`);
  context.push(`20 small blocks: Keyv-memory hits / uncached ${fmt(ratio(samples, 'list: 20 hits, Keyv memory', 'list: uncached'))}×`);
  await mem.close();
  await keyv.close();
}

let sink = 0;
/**
 * Flattens a rope string. The result of `s | 0` must be used: when it is not, an optimising compiler drops
 * the conversion (and with it the flattening) once the function is hot.
 */
function flatten(s: string): string {
  sink ^= (s as unknown as number) | 0;
  return s;
}

const FRAGMENTS = Number(process.env.BENCH_FRAGMENTS ?? 20_000);
const FILLER = 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ut labore';
const LINES = Array.from({ length: 16 }, (_, n) => n + 1);

/** The same text blob.njk renders for index `i`, built in plain JS (the baseline's strings). */
function blobText(i: number): string {
  let s = `<section id="blob-${i}">`;
  for (const n of LINES) s += `<p class="l${n}">fragment ${i} line ${n}: ${FILLER}</p>`;
  return s + '</section>';
}

async function memory(): Promise<void> {
  const sample = blobText(FRAGMENTS - 1);
  // Baseline: the same strings, flat, in an array (their own size) and in a Map under keys as long as the cache's.
  const reps = 3;
  const arr: number[] = [];
  const map: number[] = [];
  const frag: number[] = [];
  let avgLen = 0;
  for (let rep = 0; rep < reps; rep++) {
    arr.push(
      await heapPerItem(FRAGMENTS, () => {
        const a: string[] = [];
        for (let i = 0; i < FRAGMENTS; i++) a.push(flatten(blobText(i)));
        avgLen = a.reduce((n, s) => n + s.length, 0) / a.length;
        return a;
      }),
    );
    map.push(
      await heapPerItem(FRAGMENTS, () => {
        const m = new Map<string, string>();
        for (let i = 0; i < FRAGMENTS; i++) m.set(`fc:1:f:blob/0123456789ab/=n${i};`, flatten(blobText(i)));
        return m;
      }),
    );
    // Real renders into a fresh memory store (large enough that nothing is evicted); one warm-up render first.
    const store = new MemoryStore({ maxBytes: 2 ** 30 });
    const engine = engineWith(store);
    const c = { lines: LINES, filler: FILLER, i: -1 };
    check('blob', await engine.render('blob.njk', c), blobText(-1));
    frag.push(
      await heapPerItem(FRAGMENTS, async () => {
        for (let i = 0; i < FRAGMENTS; i++) await engine.render('blob.njk', { lines: LINES, filler: FILLER, i });
        return store;
      }),
    );
    if (engine.stats().stores !== FRAGMENTS + 1) throw new Error(`expected ${FRAGMENTS + 1} stores, got ${engine.stats().stores}`);
    check('blob hit', await engine.render('blob.njk', { ...c, i: 7 }), blobText(7));
    await engine.close();
  }
  const a = summarise(arr);
  const f = summarise(frag);
  const perRep = summarise(frag.map((x, i) => x / arr[i]!));
  console.log(`\nmemory, ${FRAGMENTS} fragments of ~${Math.round(avgLen)} chars (ASCII, last one ${sample.length}), ${reps} reps, Δ heapUsed / item:`);
  console.log(`  flat strings in an array        ${a.median.toFixed(0)} B  (${a.min.toFixed(0)}–${a.max.toFixed(0)})`);
  console.log(`  flat strings in a Map (+keys)   ${summarise(map).median.toFixed(0)} B`);
  console.log(`  cached fragments, memory store  ${f.median.toFixed(0)} B  (${f.min.toFixed(0)}–${f.max.toFixed(0)})`);
  goals.push({ what: 'bytes per cached 2 KB fragment / string', value: perRep, unit: '×', target: '≤ 1.3', pass: perRep.median <= 1.3 });
}

async function main(): Promise<void> {
  const started = Date.now();
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'fragcache-bench-'));
  try {
    await timings(tmp);
    await memory();
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log('\ngoals (median over repetitions, min–max in brackets):');
  for (const g of goals) {
    const verdict = g.pass ? 'PASS' : 'MISS  <<<';
    console.log(`  ${g.what.padEnd(42)} ${fmt(g.value).padEnd(22)}${g.unit}  goal ${g.target.padEnd(6)} ${verdict}`);
  }
  console.log('\ncontext:');
  for (const c of context) console.log(`  ${c}`);
  const missed = goals.filter((g) => !g.pass).length;
  console.log(`\n${missed ? `${missed} goal(s) MISSED` : 'all goals met'} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
