/**
 * Dependency digests: the digest in a fragment's key covers every template its output can depend on,
 * resolved at compile time through the Environment's loader: static `include`s in the body, the templates
 * whose macros it calls (`import`/`from … import`), macros of its own template it calls, what those pull in
 * in turn (includes, imports, extends, declared dependencies, transitively, cycles cut), and the templates
 * the author declares (`deps=[…]`, `Template Dependency:` comments). Block overrides are added per render
 * (see `CacheExtension.run`).
 *
 * Computed once per compiled template. Dependencies are read through `env.getTemplate`, so the digest
 * describes the very template objects the render will use: with the loader's cache, both stay as they were
 * until the loader reloads; when it does (`watch`), the templates that depend on the changed one are dropped
 * from the cache too (see {@link trackDependents}), so they recompile with a new digest; with `noCache`
 * every render recompiles (the parsing is memoised by source text).
 * @module
 */
import { sourceDigest } from './keys';
import { children, exprText, literalName, nodes, parseTemplate, type DynamicRef, type TemplateAst } from './template-ast';

/* eslint-disable @typescript-eslint/no-explicit-any -- Nunjucks' AST and Environment internals are untyped */

/** The Environment surface used here. */
export interface EnvLike {
  extensionsList?: unknown[];
  opts?: any;
  globals?: Record<string, unknown>;
  getTemplate(name: string, eagerCompile?: boolean, parentName?: string | null, ignoreMissing?: boolean): any;
  on?(event: string, fn: (...args: any[]) => void): unknown;
  loaders?: { cache?: Record<string, any> }[];
}

/** A template loaded through the Environment for the checks. */
export interface Loaded {
  name: string;
  path: string | undefined;
  source: string;
  ast: TemplateAst;
}

/** Loads `name` as an include in `parent` would; undefined when missing, unparsable or loaded asynchronously. */
export function load(env: EnvLike, name: string, parent: string | undefined): Loaded | undefined {
  try {
    const t = env.getTemplate(name, false, parent ?? null, false);
    if (!t || typeof t.tmplStr !== 'string') return undefined;
    return { name, path: t.path, source: t.tmplStr, ast: parseTemplate(env, t.tmplStr) };
  } catch {
    return undefined; // missing or broken: the render reports it
  }
}

/** Structural text of a node (no positions): what a macro's code is, for its digest. */
export function nodeText(node: any): string {
  if (node === null || node === undefined) return '_';
  if (typeof node !== 'object') return JSON.stringify(node);
  if (Array.isArray(node)) return `[${node.map(nodeText).join(',')}]`;
  if (!(node instanceof nodes.Node)) return '?';
  const parts = (node.fields as string[]).map((f) => (f === 'extName' ? String(node[f]?.__name ?? node[f]) : nodeText(node[f])));
  if (node instanceof nodes.Set && node.body) parts.push(nodeText(node.body));
  return `${node.typename}(${parts.join(',')})`;
}

/** What a block's output depends on, found in its body. */
export interface BlockDeps {
  /** Parts added to the block's own source digest (sorted): templates (`t:name:digest`), macros, missing names. */
  parts: string[];
  /** Full paths of every template in the closure (for reloading dependents). */
  paths: string[];
  /** Names that are expressions: not followed (reported, unless the author declared dependencies). */
  dynamic: (DynamicRef & { template: string | undefined })[];
}

/**
 * The dependencies of one cache node of `ast` (the template at `path`): its body's includes, macro calls and
 * their closure, plus `declared` (tag option and comments).
 */
export function blockDependencies(env: EnvLike, path: string | undefined, ast: TemplateAst, node: any, declared: readonly string[]): BlockDeps {
  const parts = new Set<string>();
  const paths = new Set<string>();
  const dynamic: BlockDeps['dynamic'] = [];
  const pending: { name: string; parent: string | undefined }[] = declared.map((name) => ({ name, parent: path }));
  const seenMacros = new Set<any>();
  const seenFiles = new Set<string>();

  // The body: includes, imports inside it, names bound by the template's imports, the template's own macros.
  const walk = (n: any) => {
    if (!n || typeof n !== 'object') return;
    if (Array.isArray(n)) return n.forEach(walk);
    if (!(n instanceof nodes.Node)) return;
    if (n instanceof nodes.Include || n instanceof nodes.Import || n instanceof nodes.FromImport || n instanceof nodes.Extends) {
      const name = literalName(n.template);
      if (name !== undefined) pending.push({ name, parent: path });
      else dynamic.push({ kind: n instanceof nodes.Include ? 'include' : n instanceof nodes.Extends ? 'extends' : 'import', expr: exprText(n.template), line: n.lineno + 1, column: n.colno + 1, template: path });
    } else if (n instanceof nodes.Symbol) {
      const imp = ast.imports.get(n.value);
      if (imp?.template) pending.push({ name: imp.template, parent: path });
      const macro = ast.macros.get(n.value);
      if (macro && !seenMacros.has(macro)) {
        seenMacros.add(macro);
        parts.add(`m:${n.value}:${sourceDigest(nodeText(macro))}`);
        walk(macro.body);
        walk(macro.args);
      }
    }
    for (const c of children(n)) walk(c);
  };
  walk(node.contentArgs);

  // The closure, through the loader: everything each dependency references, at file level.
  while (pending.length) {
    const { name, parent } = pending.shift()!;
    const t = load(env, name, parent);
    if (!t) {
      parts.add(`x:${name}`);
      continue;
    }
    const id = t.path ?? name;
    if (seenFiles.has(id)) continue; // cycles and diamonds
    seenFiles.add(id);
    if (t.path) paths.add(t.path);
    // The name as written, not the full path: digests must agree between machines and deploy folders.
    parts.add(`t:${name}:${sourceDigest(t.source)}`);
    for (const r of t.ast.refs) pending.push({ name: r.name, parent: t.path });
    for (const d of t.ast.dynamic) dynamic.push({ ...d, template: t.path });
  }
  return { parts: [...parts].sort(), paths: [...paths], dynamic };
}

/** The key digest of a block: its own source's, or, with dependencies, of its source and their digests. */
export function blockDigest(source: string, deps: BlockDeps | undefined): string {
  if (!deps || !deps.parts.length) return sourceDigest(source);
  return sourceDigest(`${source}\n${deps.parts.join('\n')}`);
}

/** Per Environment: full path of a dependency → full paths of the templates whose digests include it. */
const dependents = new WeakMap<object, Map<string, Set<string>>>();

/**
 * Records that `template` (a full path) digests `deps`; the first time for an Environment, listens to its
 * loaders' `update` events (Nunjucks' `watch`) to drop the dependents of a changed template from the
 * loader cache as well, so that they recompile with a new digest instead of serving entries of the old one.
 */
export function trackDependents(env: EnvLike, template: string | undefined, deps: readonly string[]): void {
  if (!template || !deps.length || typeof env !== 'object') return;
  let map = dependents.get(env);
  if (!map) {
    dependents.set(env, (map = new Map()));
    const byDep = map;
    env.on?.('update', (_name: string, fullname: string) => {
      const drop = byDep.get(fullname);
      if (!drop?.size) return;
      for (const loader of env.loaders ?? []) {
        const cache = loader.cache;
        if (!cache) continue;
        for (const k of Object.keys(cache)) if (cache[k] && drop.has(cache[k].path)) cache[k] = null;
      }
    });
  }
  for (const d of deps) {
    let set = map.get(d);
    if (!set) map.set(d, (set = new Set()));
    set.add(template);
  }
}
