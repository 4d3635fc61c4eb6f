/**
 * `lint`: the leak guard over whole template folders, without rendering anything (for CI). Compiles each
 * template with the guard on and collects what it finds: blocks reading data they do not vary on, blocks
 * emitting per-request secrets, dependencies the digest cannot follow, and templates that do not compile.
 * @module
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { createEngine } from './engine';
import type { FragcacheWarning } from './warnings';

/** Options of {@link lintTemplates}. */
export interface LintOptions {
  views: string | string[];
  syntax?: 'angle' | 'curly';
  /** Variables that are the same for every request (as the engine option `leakGuard.shared`). */
  shared?: readonly string[];
  /** Template names under the views (default: every `.njk`, `.html` and `.nunjucks` file). */
  templates?: readonly string[];
}

/** A finding: a leak guard warning, or a template that does not compile (`kind: 'error'`). */
export type LintFinding = FragcacheWarning | { kind: 'error'; template: string; message: string };

/** Result of {@link lintTemplates}. */
export interface LintResult {
  /** Templates compiled. */
  templates: string[];
  /** Leaks, secrets and compile errors: any of these fails the lint. */
  problems: LintFinding[];
  /** Dependencies the digests cannot follow (dynamic names): worth a look, not a failure. */
  notes: FragcacheWarning[];
}

const EXT = /\.(njk|html|nunjucks)$/;

/** Every template file under the views, as names relative to its folder. */
function allTemplates(views: string[]): string[] {
  const out = new Set<string>();
  const walk = (root: string, dir: string) => {
    for (const f of readdirSync(dir).sort()) {
      if (f.startsWith('.') || f === 'node_modules') continue;
      const p = path.join(dir, f);
      if (statSync(p).isDirectory()) walk(root, p);
      else if (EXT.test(f)) out.add(path.relative(root, p).split(path.sep).join('/'));
    }
  };
  for (const v of views) walk(v, v);
  return [...out];
}

/** Compiles templates with the leak guard on and returns its findings. Renders nothing, stores nothing. */
export async function lintTemplates(options: LintOptions): Promise<LintResult> {
  const views = (Array.isArray(options.views) ? options.views : [options.views]).map((v) => path.resolve(v));
  const engine = createEngine({ views, syntax: options.syntax, store: 'memory', leakGuard: { mode: 'warn', shared: options.shared ?? [] } });
  const problems: LintFinding[] = [];
  const notes: FragcacheWarning[] = [];
  engine.on('warning', (w) => (w.kind === 'dynamic-dependency' ? notes : problems).push(w));
  const templates = options.templates?.length ? [...options.templates] : allTemplates(views);
  try {
    for (const name of templates) {
      try {
        engine.env.getTemplate(name, true);
      } catch (err) {
        const e = engine.templateError(err, name);
        problems.push({ kind: 'error', template: name, message: e.message });
      }
    }
  } finally {
    await engine.close();
  }
  return { templates, problems, notes };
}
