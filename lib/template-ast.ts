/**
 * Whole-template syntax trees for the compile-time checks (dependency digests, the leak guard): each
 * template source is parsed once with its Environment's parser options and extensions, and what the
 * checks need from its top level (imports, macros, constant `set`s, static and dynamic references,
 * `Template Dependency:` comments) is kept with the tree. Memoised by source text, so recompiling an
 * unchanged template (`noCache`) costs a map lookup.
 * @module
 */
import nunjucks from 'nunjucks';

/* eslint-disable @typescript-eslint/no-explicit-any -- Nunjucks' AST is untyped */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const parser = require('nunjucks/src/parser') as { parse(src: string, extensions: unknown[], opts: unknown): any };
/** @internal Nunjucks' node classes. */
export const nodes: any = (nunjucks as any).nodes;

/** A reference to another template by a literal name. */
export interface TemplateRef {
  kind: 'include' | 'import' | 'extends' | 'declared';
  name: string;
  /** 1-based. */
  line: number;
}

/** A reference whose name is an expression: it cannot be followed. */
export interface DynamicRef {
  kind: 'include' | 'import' | 'extends';
  expr: string;
  line: number;
  column: number;
}

/** What a name bound by `import`/`from … import` at the top level refers to. */
export interface ImportBinding {
  template: string | null; // null: dynamic
  /** For `from … import name`: the macro's name in the imported template. */
  member?: string;
  withContext: boolean;
}

/** One template, parsed. */
export interface TemplateAst {
  root: any;
  /** Every static reference anywhere in the template (includes, imports, extends) and declared dependencies. */
  refs: TemplateRef[];
  dynamic: DynamicRef[];
  imports: Map<string, ImportBinding>;
  /** Top-level macros by name. */
  macros: Map<string, any>;
  /** Names set at the top level to values that read no variable (constants). */
  constants: Set<string>;
  /** Names set at the top level from other variables (`set name = user.name`): the value's expression. */
  derived: Map<string, any>;
}

/** `{# Template Dependency: partials/a.njk #}`, as Rails writes it; any comment syntax. */
const DECLARED = /Template Dependency:\s*["']?([^\s"'#%}>]+)/g;

/** Template names declared in `Template Dependency:` comments of `source`. */
export function declaredDeps(source: string): string[] {
  return [...source.matchAll(DECLARED)].map((m) => m[1]);
}

/** Set while the checks parse a template: the cache tag then only builds its node (no checks of its own). */
let analysing = 0;

/** True while a template is parsed for the checks (see {@link parseTemplate}). */
export function isAnalysing(): boolean {
  return analysing > 0;
}

const memo = new Map<string, TemplateAst>();
const MEMO_MAX = 1000;

/** Parses `source` as `env` would (its tags, extensions); memoised by source and parser options. */
export function parseTemplate(env: { extensionsList?: unknown[]; opts?: any }, source: string): TemplateAst {
  const tags = env.opts?.tags;
  const key = `${tags ? JSON.stringify(tags) : ''}${env.opts?.trimBlocks ? 't' : ''}${env.opts?.lstripBlocks ? 'l' : ''}\0${source}`;
  let ast = memo.get(key);
  if (ast) return ast;
  analysing++;
  let root: any;
  try {
    root = parser.parse(source, env.extensionsList ?? [], env.opts ?? {});
  } finally {
    analysing--;
  }
  ast = summarise(root, source);
  if (memo.size >= MEMO_MAX) memo.clear();
  memo.set(key, ast);
  return ast;
}

/** Source text of simple expressions (names, lookups, literals); `…` for anything else. */
export function exprText(node: any): string {
  if (!node) return '';
  if (node instanceof nodes.Literal) return typeof node.value === 'string' ? JSON.stringify(node.value) : String(node.value);
  if (node instanceof nodes.Symbol) return node.value;
  if (node instanceof nodes.LookupVal) {
    const v = node.val;
    const key = v instanceof nodes.Literal && typeof v.value === 'string' && /^[A-Za-z_]\w*$/.test(v.value) ? `.${v.value}` : `[${exprText(v)}]`;
    return `${exprText(node.target)}${key}`;
  }
  if (node instanceof nodes.Concat) return `${exprText(node.left)} ~ ${exprText(node.right)}`;
  if (node instanceof nodes.Add) return `${exprText(node.left)} + ${exprText(node.right)}`;
  if (node instanceof nodes.Array) return `[${node.children.map(exprText).join(', ')}]`;
  return '…';
}

/** A literal template name, or undefined when the name is an expression. */
export function literalName(node: any): string | undefined {
  return node instanceof nodes.Literal && typeof node.value === 'string' ? node.value : undefined;
}

/** Children of a node, in source order (fields, plus a block `set`'s body, which is not a field). */
export function children(node: any): any[] {
  if (Array.isArray(node)) return node;
  if (!(node instanceof nodes.Node)) return [];
  const out: any[] = [];
  for (const f of node.fields as string[]) {
    const v = node[f];
    if (v && typeof v === 'object') out.push(v);
  }
  if (node instanceof nodes.Set && node.body) out.push(node.body);
  return out;
}

/** True when the expression reads no variable (literals and operators on literals). */
export function isConstant(node: any): boolean {
  if (!node || typeof node !== 'object') return true;
  if (node instanceof nodes.Symbol || node instanceof nodes.FunCall || node instanceof nodes.Filter || node instanceof nodes.FilterAsync) return false;
  return children(node).every(isConstant);
}

function summarise(root: any, source: string): TemplateAst {
  const ast: TemplateAst = { root, refs: [], dynamic: [], imports: new Map(), macros: new Map(), constants: new Set(), derived: new Map() };
  for (const name of declaredDeps(source)) ast.refs.push({ kind: 'declared', name, line: 0 });
  const ref = (kind: 'include' | 'import' | 'extends', node: any) => {
    const name = literalName(node.template);
    if (name !== undefined) ast.refs.push({ kind, name, line: node.lineno + 1 });
    else ast.dynamic.push({ kind, expr: exprText(node.template), line: node.lineno + 1, column: node.colno + 1 });
    return name ?? null;
  };
  const visit = (node: any, top: boolean) => {
    if (!node || typeof node !== 'object') return;
    if (Array.isArray(node)) return node.forEach((n) => visit(n, top));
    if (!(node instanceof nodes.Node)) return;
    if (node instanceof nodes.Include || node instanceof nodes.Extends) ref(node instanceof nodes.Include ? 'include' : 'extends', node);
    else if (node instanceof nodes.Import) {
      const t = ref('import', node);
      if (top && node.target instanceof nodes.Symbol) ast.imports.set(node.target.value, { template: t, withContext: !!node.withContext });
    } else if (node instanceof nodes.FromImport) {
      const t = ref('import', node);
      if (top) {
        for (const n of node.names.children) {
          const [member, alias] = n instanceof nodes.Pair ? [n.key.value, n.value.value] : [n.value, n.value];
          ast.imports.set(alias, { template: t, member, withContext: !!node.withContext });
        }
      }
    } else if (node instanceof nodes.Macro && top) ast.macros.set(node.name.value, node);
    else if (node instanceof nodes.Set && top && node.value) {
      const constant = isConstant(node.value);
      for (const t of node.targets) if (t instanceof nodes.Symbol) constant ? ast.constants.add(t.value) : ast.derived.set(t.value, node.value);
    }
    // Top level: the root's children, and what blocks and `if`s at the top hold (they run in the template's frame).
    const stillTop = top && (node instanceof nodes.Root || node instanceof nodes.NodeList || node instanceof nodes.Block || node instanceof nodes.If);
    for (const c of children(node)) visit(c, stillTop);
  };
  visit(root, true);
  return ast;
}

/** Names (and instances, when unnamed) of cache tag extensions: their CallExtension nodes are cache blocks. */
export const cacheExtensions = new Set<unknown>();

/** True for a cache block's node. */
export function isCacheNode(node: any): boolean {
  // (prop 'run': not the value markers lib/extension.ts adds to macro and capture bodies)
  return node instanceof nodes.CallExtension && cacheExtensions.has(node.extName) && node.prop === 'run';
}

const blockIndex = new WeakMap<TemplateAst, Map<string, any>>();

/** The cache block whose tag is at 0-based `line`/`col` (as the parser counts), if any. */
export function cacheNodeAt(ast: TemplateAst, line: number, col: number): any {
  let index = blockIndex.get(ast);
  if (!index) {
    const found = new Map<string, any>();
    const visit = (n: any) => {
      if (!n || typeof n !== 'object') return;
      if (Array.isArray(n)) return n.forEach(visit);
      if (!(n instanceof nodes.Node)) return;
      if (isCacheNode(n)) found.set(`${n.args.lineno}:${n.args.colno}`, n);
      children(n).forEach(visit);
    };
    visit(ast.root);
    blockIndex.set(ast, (index = found));
  }
  return index.get(`${line}:${col}`);
}
