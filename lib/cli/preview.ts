/**
 * `fragcache preview`: renders a template with data to stdout; `--explain` writes a table of every
 * fragment to stderr (so stdout stays the pure HTML); `--repeat N` renders N times (the miss run, then hits).
 * @module
 */
import path from 'node:path';
import { TemplateError } from '../errors';
import type { FragmentTrace } from '../render';
import { loadConfig, type ConfigFlags } from './config';
import { loadData } from './data';
import * as fmt from './format';
import { CliError, colorsFor, tableWidth, type Colors } from './io';
import { closeQuietly, openEngine } from './open';

/** Options of the preview command. */
export interface PreviewOptions extends ConfigFlags {
  data?: string;
  /** Renders (validated by the command line parser). */
  repeat?: number;
  explain?: boolean;
  /** Tables show whole keys instead of fitting the terminal. */
  wide?: boolean;
}

/** The explain table of one render. Nested fragments are indented under the one that contains them. */
export function explainTable(fragments: readonly FragmentTrace[], c: Colors, width?: number): string {
  if (!fragments.length) return c.dim('  (no cache fragments in this render)');
  const status = (s: string) => {
    const t = s.trim();
    return t === 'hit' ? c.green(s) : t === 'miss' ? c.red(s) : t === 'stale' ? c.yellow(s) : c.dim(s);
  };
  const rows = fragments.map((f) => [
    `${'  '.repeat(f.depth)}${f.depth ? '└ ' : ''}${f.name}`,
    fmt.vary(f.vary),
    f.key || '-',
    f.status,
    fmt.ms(f.ms),
    fmt.size(f.size),
    f.status === 'uncached' ? '-' : fmt.seconds(f.ttlLeft),
    f.tags.join(', '),
  ]);
  return fmt.table(
    [
      { header: 'fragment', color: (s) => c.cyan(s), shrink: 'end', shrinkOrder: 3, min: 10 },
      { header: 'vary', shrink: 'end', shrinkOrder: 2, min: 8 },
      { header: 'key', color: (s) => c.dim(s), shrink: 'middle', shrinkOrder: 0, min: 12 },
      { header: 'status', color: status },
      { header: 'time', align: 'right' },
      { header: 'size', align: 'right' },
      { header: 'ttl left', align: 'right' },
      { header: 'tags', shrink: 'end', shrinkOrder: 1, min: 8 },
    ],
    rows,
    c,
    width,
  );
}

/** Runs the preview. Throws (a {@link CliError}, {@link TemplateError}…) on failure. */
export async function preview(template: string, options: PreviewOptions): Promise<void> {
  const config = loadConfig(options);
  const repeat = options.repeat ?? 1;
  // Before the data file is read: output whose data predates an invalidation is never stored, and output read after
  // one is stored for its whole TTL (without `since`, it would live only the unknown-since window).
  const since = Date.now();
  const data = options.data ? loadData(path.resolve(options.data)) : {};
  const err = colorsFor(process.stderr);
  const engine = await openEngine(config);
  // A store that fails mid-render never fails the preview; say so once, on stderr.
  engine.on('error', (e) => process.stderr.write(`${err.yellow('warning')}: ${e.message}\n`));
  // Long repeats: the first runs and the last one in full, then a summary of the repeat runs.
  const shown = (run: number) => run <= 5 || run === repeat;
  const times: number[] = [];
  try {
    for (let run = 1; run <= repeat; run++) {
      const started = performance.now();
      let result;
      try {
        result = await engine.explain(template, data, { since });
      } catch (e) {
        if (e instanceof TemplateError && e.line === undefined && /^template not found/.test(e.message)) {
          throw new CliError(`${e.message} (views: ${config.views.map((v) => path.relative(process.cwd(), v) || '.').join(', ')})`, 1, { cause: e });
        }
        throw e;
      }
      const total = performance.now() - started;
      if (run > 1) times.push(total);
      if (run === 1) process.stdout.write(result.html.endsWith('\n') ? result.html : `${result.html}\n`);
      if ((options.explain || repeat > 1) && shown(run)) {
        const count = (s: string) => result.fragments.filter((f) => f.status === s).length;
        const summary = [`${count('hit')} hit`, `${count('miss')} miss`, count('stale') ? `${count('stale')} stale` : '', count('uncached') ? `${count('uncached')} uncached` : '']
          .filter(Boolean)
          .join(', ');
        const head = `${err.bold(`run ${run}/${repeat}`)}  ${fmt.ms(total)}  ${result.passes} pass${result.passes > 1 ? 'es' : ''}  ${summary}  ${err.dim(`(${template}, store ${engine.cache.store.kind})`)}`;
        process.stderr.write(`${head}\n`);
        if (options.explain) process.stderr.write(`${explainTable(result.fragments, err, tableWidth(process.stderr, options.wide))}\n\n`);
      }
    }
    if (times.length >= 2) {
      const sorted = [...times].sort((a, b) => a - b);
      const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
      process.stderr.write(
        `${err.bold(`runs 2-${repeat}`)}  median ${fmt.ms(at(0.5))}  p95 ${fmt.ms(at(0.95))}  min ${fmt.ms(sorted[0])}  max ${fmt.ms(sorted[sorted.length - 1])}\n`,
      );
    }
  } finally {
    await closeQuietly(engine.cache.store);
  }
}
