/**
 * The dependency tree of a template: the templates it extends, includes and imports, and the `cache`
 * fragments in each, nested as they nest in the source (what Rails' `cache_digests:dependencies` shows).
 * Built from Nunjucks' own parser with the `cache` tag registered, so it reads templates exactly as
 * renders do. Include paths that are expressions are reported as dynamic, not followed.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import nunjucks from 'nunjucks';
import { TemplateError } from './errors';
import { CacheExtension } from './extension';
import { declaredDeps } from './template-ast';

/* eslint-disable @typescript-eslint/no-explicit-any -- Nunjucks' AST is untyped */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const parser = require('nunjucks/src/parser') as { parse(src: string, extensions: unknown[], opts: unknown): any };
const nodes = (nunjucks as any).nodes;

/** One node of the tree. */
export interface DepNode {
  /**
   * `template` (the root), `extends`/`include`/`import` (a template it pulls in), `cache` (a fragment),
   * `dynamic` (an include whose name is an expression), `missing` (not found under the views),
   * `cycle` (already on the path), `repeat` (already shown above), `declared` (a dependency the author declared
   * with `deps=[…]` or a `Template Dependency:` comment: part of the digest, not followed here).
   */
  kind: 'template' | 'extends' | 'include' | 'import' | 'cache' | 'dynamic' | 'missing' | 'cycle' | 'repeat' | 'declared';
  /** Template path (relative to its views folder), fragment name, or the expression of a dynamic include. */
  name: string;
  /** 1-based position in the template that contains it (absent on the root). */
  line?: number;
  column?: number;
  /** For `cache`: the TTL and vary expressions as written. */
  ttl?: string;
  vary?: string[];
  children: DepNode[];
}

/** Options of {@link dependencies}. */
export interface DepsOptions {
  views: string | string[];
  syntax?: 'angle' | 'curly';
}

/** Source text of simple expressions (names, lookups, literals); `…` for anything else. */
function expr(node: any): string {
  if (!node) return '';
  if (node instanceof nodes.Literal) return typeof node.value === 'string' ? JSON.stringify(node.value) : String(node.value);
  if (node instanceof nodes.Symbol) return node.value;
  if (node instanceof nodes.LookupVal) {
    const key = node.val instanceof nodes.Literal && typeof node.val.value === 'string' && /^[A-Za-z_]\w*$/.test(node.val.value) ? `.${node.val.value}` : `[${expr(node.val)}]`;
    return `${expr(node.target)}${key}`;
  }
  if (node instanceof nodes.Concat) return `${expr(node.left)} ~ ${expr(node.right)}`;
  if (node instanceof nodes.Array) return `[${node.children.map(expr).join(', ')}]`;
  return '…';
}

/** Builds the tree of `template` (a path under the views). Throws a {@link TemplateError} on a parse error. */
export function dependencies(template: string, options: DepsOptions): DepNode {
  const views = (Array.isArray(options.views) ? options.views : [options.views]).map((v) => path.resolve(v));
  const tags = options.syntax === 'curly' ? undefined : { blockStart: '<%', blockEnd: '%>' };
  const extension = new CacheExtension(() => undefined); // parses only: deps never renders
  const shown = new Set<string>();

  const find = (name: string): string | undefined => {
    for (const v of views) {
      const p = path.resolve(v, name);
      if (existsSync(p)) return p;
    }
    return undefined;
  };

  const parse = (name: string, src: string): any => {
    try {
      return parser.parse(src, [extension], { tags });
    } catch (err) {
      const e = err as Error & { lineno?: number; colno?: number };
      const msg = String(e.message).replace(/^\s*\(unknown path\)\s*(\[Line \d+, Column \d+\])?\s*/m, '').trim();
      const where = [name, e.lineno, e.colno].filter((x) => x !== undefined).join(':');
      throw new TemplateError(`${where}: ${msg}`, name, e.lineno, e.colno, { cause: err });
    }
  };

  // `stack` holds the templates on the current path, to stop at cycles.
  const expand = (name: string, stack: string[]): DepNode[] => {
    const file = find(name)!;
    const out: DepNode[] = [];
    const source = readFileSync(file, 'utf8');
    for (const d of declaredDeps(source)) out.push({ kind: 'declared', name: d, children: [] });
    walk(parse(name, source), out, [...stack, name]);
    return out;
  };

  const pull = (kind: 'extends' | 'include' | 'import', node: any, into: DepNode[], stack: string[]): void => {
    const at = { line: node.lineno + 1, column: node.colno + 1 };
    const t = node.template;
    if (!(t instanceof nodes.Literal) || typeof t.value !== 'string') {
      into.push({ kind: 'dynamic', name: `${kind} ${expr(t)}`, ...at, children: [] });
      return;
    }
    const name = t.value;
    if (!find(name)) into.push({ kind: 'missing', name, ...at, children: [] });
    else if (stack.includes(name)) into.push({ kind: 'cycle', name, ...at, children: [] });
    else if (shown.has(name)) into.push({ kind: 'repeat', name, ...at, children: [] });
    else {
      shown.add(name);
      into.push({ kind, name, ...at, children: expand(name, stack) });
    }
  };

  const walk = (node: any, into: DepNode[], stack: string[]): void => {
    if (!node || typeof node !== 'object') return;
    if (Array.isArray(node)) {
      for (const n of node) walk(n, into, stack);
      return;
    }
    if (!(node instanceof nodes.Node)) return;
    if (node instanceof nodes.Extends) return pull('extends', node, into, stack);
    if (node instanceof nodes.Include) return pull('include', node, into, stack);
    if (node instanceof nodes.Import || node instanceof nodes.FromImport) return pull('import', node, into, stack);
    if (node instanceof nodes.CallExtension && node.extName === extension) {
      if (node.prop !== 'run') return; // the markers of macro and capture bodies (lib/extension.ts), not fragments
      // Arguments as the tag's parser lays them out (lib/extension.ts): name, name part, digest, line, column, ttl,
      // [vary], {options}, [blocks].
      const args = node.args.children;
      const frag: DepNode = {
        kind: 'cache',
        name: String(args[0].value),
        line: node.args.lineno + 1,
        column: node.args.colno + 1,
        ttl: expr(args[5]),
        vary: (args[6]?.children ?? []).map(expr),
        children: [],
      };
      into.push(frag);
      for (const d of (node.fragcache?.declared ?? []) as string[]) frag.children.push({ kind: 'declared', name: d, children: [] });
      walk(node.contentArgs, frag.children, stack);
      return;
    }
    for (const f of node.fields as string[]) walk(node[f], into, stack);
  };

  const root = find(template);
  if (!root) throw new TemplateError(`template not found: ${template} (views: ${views.join(', ')})`, template, undefined, undefined);
  shown.add(template);
  return { kind: 'template', name: template, children: expand(template, []) };
}

/** Every fragment name in a tree, in order, once each. */
export function fragmentNames(tree: DepNode): string[] {
  const out = new Set<string>();
  const visit = (n: DepNode) => {
    if (n.kind === 'cache') out.add(n.name);
    n.children.forEach(visit);
  };
  visit(tree);
  return [...out];
}
