/**
 * `fragcache lint [templates…]`: the leak guard over the views, for CI. Exit 1 when any block reads data it
 * does not vary on, emits a per-request secret, or a template does not compile.
 * @module
 */
import { lintTemplates } from '../lint';
import { loadConfig, type ConfigFlags } from './config';
import { colorsFor } from './io';

/** Runs `lint`. */
export async function lint(templates: string[], options: ConfigFlags & { json?: boolean; shared?: string }): Promise<void> {
  const config = loadConfig(options);
  const shared = (options.shared ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const result = await lintTemplates({ views: config.views, syntax: config.syntax, shared, templates });
  if (options.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    const c = colorsFor(process.stdout);
    for (const p of result.problems) process.stdout.write(`${c.red(p.kind === 'error' ? 'error' : p.kind)}  ${p.message}\n`);
    for (const n of result.notes) process.stdout.write(`${c.yellow('note')}  ${n.message}\n`);
    const e = colorsFor(process.stderr);
    const summary = `${result.templates.length} template${result.templates.length === 1 ? '' : 's'}: ${result.problems.length} problem${result.problems.length === 1 ? '' : 's'}, ${result.notes.length} note${result.notes.length === 1 ? '' : 's'}`;
    process.stderr.write(`${result.problems.length ? e.red(summary) : e.green(summary)}\n`);
  }
  if (result.problems.length) process.exitCode = 1;
}
