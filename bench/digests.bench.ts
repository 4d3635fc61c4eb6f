/**
 * Compile-time cost of dependency digests and of the leak guard, and proof that neither costs anything on a
 * hit. Compiles the sample site's templates (`templates/`: a page that extends a layout, imports macros and
 * includes partials) through Nunjucks' compiler:
 *  - raw: the compiler alone, outside any template compile (no dependency work);
 *  - digests: what an engine's compile adds (whole-template parse, dependency closure through the loader), with
 *    a new source each time (a first compile) and with the same source (a `noCache` recompile: memoised);
 *  - digests + leak guard: the same with the guard on.
 * Then renders a page of hits with the guard off and on: the compiled code is the same, so the numbers are.
 *
 * Run: `npm run bench digests` (or `npx tsx bench/digests.bench.ts`).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createEngine, type Engine } from '../lib/engine';
import { compilingTemplate } from '../lib/extension';
import { formatNs, measure, ratio, summarise } from './support/harness';

const VIEWS = path.join(__dirname, '..', 'templates');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const compiler = require('nunjucks/src/compiler') as { compile(src: string, asyncFilters: unknown[], extensions: unknown[], name: string, opts: unknown): string };

function engine(leakGuard: 'off' | 'warn'): Engine {
  const e = createEngine({ views: VIEWS, leakGuard });
  e.on('warning', () => undefined); // findings are not the point here
  return e;
}

async function main(): Promise<void> {
  const off = engine('off');
  const on = engine('warn');
  const names = ['page.njk', 'layout.njk', 'article.njk', 'partials/article-card.njk', 'macros/ui.njk'];
  const sources = names.map((n) => ({ name: n, path: path.join(VIEWS, n), src: readFileSync(path.join(VIEWS, n), 'utf8') }));
  let serial = 0;
  const compileAll = (e: Engine, checks: boolean, fresh: boolean) => {
    const env = e.env as unknown as { asyncFilters: unknown[]; extensionsList: unknown[]; opts: unknown };
    for (const s of sources) {
      // A trailing comment makes each first-compile case a source never seen (the parse memo misses).
      const src = fresh ? `${s.src}{# ${serial++} #}` : s.src;
      const previous = checks ? compilingTemplate({ path: s.path, env: e.env }) : undefined;
      try {
        compiler.compile(src, env.asyncFilters, env.extensionsList, s.path, env.opts);
      } finally {
        if (checks) compilingTemplate(previous);
      }
    }
  };
  // Warm the loaders' caches (dependencies are loaded once per process, as in production).
  compileAll(off, true, false);
  compileAll(on, true, false);

  const data = YAMLish();
  await off.render('page.njk', data);
  await on.render('page.njk', data);
  const hitsBefore = off.stats().hits;
  await off.render('page.njk', data);
  if (off.stats().hits === hitsBefore) throw new Error('page.njk did not hit');

  const samples = await measure(
    [
      { name: 'compile 5 templates: raw', run: () => compileAll(off, false, true) },
      { name: 'compile: + digests (first)', run: () => compileAll(off, true, true) },
      { name: 'compile: + digests (noCache re-)', run: () => compileAll(off, true, false) },
      { name: 'compile: + digests + leak guard', run: () => compileAll(on, true, true) },
      { name: 'page of hits: guard off', run: () => off.render('page.njk', data) },
      { name: 'page of hits: guard on', run: () => on.render('page.njk', data) },
    ],
    { sampleMs: Number(process.env.BENCH_SAMPLE_MS ?? 60), reps: Number(process.env.BENCH_REPS ?? 11) },
  );
  console.log('per operation, median (min–max) over repetitions:');
  for (const [name, xs] of samples) {
    const s = summarise(xs);
    console.log(`  ${name.padEnd(36)} ${formatNs(s.median).padStart(10)}  (${formatNs(s.min)} – ${formatNs(s.max)})`);
  }
  // On a loaded host the medians wander; the ratio of the fastest samples is shown too (least disturbed).
  const r = (a: string, b: string) => {
    const s = ratio(samples, a, b);
    const best = summarise(samples.get(a)!).min / summarise(samples.get(b)!).min;
    return `${s.median.toFixed(2)}× (${s.min.toFixed(2)}–${s.max.toFixed(2)}); fastest/fastest ${best.toFixed(2)}×`;
  };
  console.log(`\n  digests, first compile / raw            ${r('compile: + digests (first)', 'compile 5 templates: raw')}`);
  console.log(`  digests, noCache recompile / raw        ${r('compile: + digests (noCache re-)', 'compile 5 templates: raw')}`);
  console.log(`  digests + guard / digests (first)       ${r('compile: + digests + leak guard', 'compile: + digests (first)')}`);
  console.log(`  hit render, guard on / off              ${r('page of hits: guard on', 'page of hits: guard off')}  (same compiled code: ~1.00 expected)`);
  await off.close();
  await on.close();
}

/** The sample page's data (what templates/data/page.yaml holds, enough to render it). */
function YAMLish(): object {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { parse } = require('yaml') as { parse(s: string): object };
  return parse(readFileSync(path.join(VIEWS, 'data', 'page.yaml'), 'utf8'));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
