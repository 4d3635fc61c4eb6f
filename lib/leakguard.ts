/**
 * The leak guard: from a cache block's syntax tree, which variables its body reads (following static
 * includes, the template's own macros and macros imported `with context`), compared with what its vary
 * expressions read. A variable the body reads and no vary expression mentions (nor a `shared` declaration)
 * would be frozen into the first render's output and served to everyone: reported as a `leak`. A body that
 * emits what looks like a per-request secret (a CSRF token field, a nonce attribute) is reported as `secret`.
 *
 * Names bound inside the body (`for` targets, `loop`, `set`, macro and caller arguments, imports) are not
 * variables of the request; names bound around the block (an enclosing loop or macro) are, and must be
 * varied on. Environment globals, top-level constants, the template's macros and imported namespaces are not
 * data. What filters, globals and functions read at run time cannot be seen here: see `verify`.
 * Runs at compile time only (once per compiled template): a render, hit or miss, never runs any of this.
 * @module
 */
import path from 'node:path';
import { load, type EnvLike } from './digest';
import { OptionError } from './errors';
import { children, literalName, nodes, type ImportBinding, type TemplateAst } from './template-ast';
import type { FragcacheWarning } from './warnings';

/* eslint-disable @typescript-eslint/no-explicit-any -- Nunjucks' AST is untyped */

/** `leakGuard` option of an engine. */
export type LeakGuardMode = 'warn' | 'error' | 'off';
export interface LeakGuardOptions {
  /**
   * `warn` (default outside production): a `warning` event per finding, once; `error` (for CI): the template
   * fails to compile, so the render fails; `off` (default when `NODE_ENV=production`): no analysis at all.
   */
  mode?: LeakGuardMode;
  /** Variables that are the same for every request (site settings, navigation): `['site', 'nav']`, or paths `'user.locale'`. */
  shared?: readonly string[];
}

/** The guard's settings after defaults. */
export interface LeakGuard {
  mode: LeakGuardMode;
  shared: readonly string[];
}

/** Defaults applied: `warn`, or `off` when `NODE_ENV` is `production`. */
export function leakGuardOf(option: LeakGuardMode | LeakGuardOptions | undefined, env = process.env.NODE_ENV): LeakGuard {
  const o: LeakGuardOptions = typeof option === 'string' ? { mode: option } : (option ?? {});
  if (typeof o !== 'object' || o === null) throw new OptionError('leakGuard', option, 'expected "warn", "error", "off" or { mode, shared }');
  const mode = o.mode ?? (env === 'production' ? 'off' : 'warn');
  if (!['warn', 'error', 'off'].includes(mode)) throw new OptionError('leakGuard.mode', o.mode, 'expected "warn", "error" or "off"');
  if (o.shared !== undefined && (!Array.isArray(o.shared) || !o.shared.every((s) => typeof s === 'string' && s.length > 0))) {
    throw new OptionError('leakGuard.shared', o.shared, 'expected a list of variable names, e.g. ["site", "nav"]');
  }
  return { mode, shared: o.shared ?? [] };
}

/** A template as the walker sees it. */
interface Tpl {
  path: string | undefined;
  ast: TemplateAst;
}

interface Read {
  root: string;
  path: string;
  tpl: Tpl;
  line: number;
}

/** Markup that holds a per-request secret. */
const SECRET_MARKUP: [RegExp, string][] = [
  [/<input\b[^>]*\bname\s*=\s*["']?(?:_?csrf[\w-]*|csrfmiddlewaretoken|authenticity_token|_token|xsrf[\w-]*)\b/i, 'a CSRF token field'],
  [/<meta\b[^>]*\bname\s*=\s*["']?(?:csrf|xsrf)[\w-]*/i, 'a CSRF token meta tag'],
  [/\bnonce\s*=\s*["']?/i, 'a nonce attribute'],
];
/** Variable names of per-request secrets. */
const SECRET_NAME = /csrf|xsrf|nonce/i;

/** A template path as messages show it: relative to the working directory when under it. */
export function displayPath(p: string | undefined): string {
  if (!p) return '(string)';
  const rel = path.relative(process.cwd(), p);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}

/** Walks bodies and collects reads and secrets. */
class Walker {
  readonly reads: Read[] = [];
  readonly secrets: { what: string; tpl: Tpl; line: number }[] = [];
  private readonly files = new Set<string>();
  private readonly macros = new Set<any>();

  constructor(
    private readonly env: EnvLike,
    private readonly globals: Record<string, unknown>,
  ) {}

  walk(n: any, t: Tpl, scope: Set<string>): void {
    if (!n || typeof n !== 'object') return;
    if (Array.isArray(n)) {
      for (const c of n) this.walk(c, t, scope);
      return;
    }
    if (!(n instanceof nodes.Node)) return;
    if (n instanceof nodes.Symbol) return this.read(n.value, n.value, t, n, scope);
    if (n instanceof nodes.LookupVal) return this.lookup(n, t, scope);
    if (n instanceof nodes.TemplateData) return this.markup(String(n.value ?? ''), t, n);
    if (n instanceof nodes.Filter || n instanceof nodes.FilterAsync) return this.walk(n.args, t, scope); // the filter's name is no variable
    if (n instanceof nodes.Is) {
      this.walk(n.left, t, scope);
      if (n.right instanceof nodes.FunCall) this.walk(n.right.args, t, scope); // a test's name is no variable
      return;
    }
    if (n instanceof nodes.FunCall) return this.call(n, t, scope);
    if (n instanceof nodes.KeywordArgs || n instanceof nodes.Dict) {
      // Keys are names, not reads.
      for (const p of n.children) this.walk(p instanceof nodes.Pair ? p.value : p, t, scope);
      return;
    }
    if (n instanceof nodes.For || n instanceof nodes.AsyncEach || n instanceof nodes.AsyncAll) {
      this.walk(n.arr, t, scope);
      const inner = new Set(scope).add('loop');
      bind(n.name, inner);
      this.walk(n.body, t, inner);
      this.walk(n.else_, t, scope);
      return;
    }
    if (n instanceof nodes.Set) {
      this.walk(n.value, t, scope);
      this.walk(n.body, t, scope);
      for (const target of n.targets) bind(target, scope);
      return;
    }
    if (n instanceof nodes.Macro) {
      if (t.ast.macros.get(n.name.value) === n) return; // a template's own macro: followed where it is called
      scope.add(n.name.value);
      return this.macroBody(n, t, scope);
    }
    if (n instanceof nodes.Caller) return this.macroBody(n, t, scope);
    if (n instanceof nodes.Import) return void bind(n.target, scope);
    if (n instanceof nodes.FromImport) {
      for (const c of n.names.children) bind(c instanceof nodes.Pair ? c.value : c, scope);
      return;
    }
    if (n instanceof nodes.Include) return this.include(n, t, scope);
    if (n instanceof nodes.Extends || n instanceof nodes.Super) return;
    for (const c of children(n)) this.walk(c, t, scope);
  }

  private read(root: string, p: string, t: Tpl, n: any, scope: Set<string>): void {
    if (scope.has(root) || t.ast.constants.has(root) || t.ast.macros.has(root) || t.ast.imports.has(root)) return;
    if (root in this.globals) {
      if (SECRET_NAME.test(root)) this.secrets.push({ what: `a per-request secret ("${root}")`, tpl: t, line: n.lineno + 1 });
      return;
    }
    this.reads.push({ root, path: p, tpl: t, line: n.lineno + 1 });
  }

  /** `user.name`, `user["name"]`: one read of the longest static path; dynamic keys are walked. */
  private lookup(n: any, t: Tpl, scope: Set<string>): void {
    const keys: string[] = [];
    let cur = n;
    while (cur instanceof nodes.LookupVal) {
      const v = cur.val;
      if (v instanceof nodes.Literal && (typeof v.value === 'string' || typeof v.value === 'number')) keys.unshift(String(v.value));
      else {
        keys.length = 0; // a dynamic key: the path stops before it
        this.walk(v, t, scope);
      }
      cur = cur.target;
    }
    if (cur instanceof nodes.Symbol) this.read(cur.value, [cur.value, ...keys].join('.'), t, cur, scope);
    else this.walk(cur, t, scope);
  }

  private markup(text: string, t: Tpl, n: any): void {
    for (const [re, what] of SECRET_MARKUP) if (re.test(text)) this.secrets.push({ what, tpl: t, line: n.lineno + 1 });
  }

  private call(n: any, t: Tpl, scope: Set<string>): void {
    const name = n.name;
    if (name instanceof nodes.Symbol && !scope.has(name.value)) {
      const macro = t.ast.macros.get(name.value);
      if (macro) this.macro(macro, t);
      else {
        const imp = t.ast.imports.get(name.value);
        if (imp?.member) this.imported(imp, imp.member, t);
        else if (name.value !== 'caller') this.walk(name, t, scope); // a function from the context is a read
      }
    } else if (name instanceof nodes.LookupVal && name.target instanceof nodes.Symbol && !scope.has(name.target.value) && t.ast.imports.has(name.target.value)) {
      const imp = t.ast.imports.get(name.target.value)!;
      const member = literalName(name.val);
      if (member !== undefined && !imp.member) this.imported(imp, member, t);
    } else this.walk(name, t, scope);
    this.walk(n.args, t, scope);
  }

  /** A macro of the template: its body reads the context the template was rendered with (its arguments are its own). */
  private macro(macro: any, t: Tpl): void {
    if (this.macros.has(macro)) return; // recursion
    this.macros.add(macro);
    this.macroBody(macro, t, new Set());
    this.macros.delete(macro);
  }

  private macroBody(m: any, t: Tpl, outer: Set<string>): void {
    const inner = new Set(outer).add('caller');
    for (const a of m.args?.children ?? []) {
      if (a instanceof nodes.Symbol) inner.add(a.value);
      else if (a instanceof nodes.KeywordArgs) {
        for (const p of a.children) {
          this.walk(p.value, t, outer); // defaults
          inner.add(p.key.value);
        }
      }
    }
    this.walk(m.body, t, inner);
  }

  /** A macro of an imported template: it sees the render's variables only when imported `with context`. */
  private imported(imp: ImportBinding, member: string, t: Tpl): void {
    if (!imp.withContext || !imp.template) return;
    const loaded = load(this.env, imp.template, t.path);
    const macro = loaded?.ast.macros.get(member);
    if (macro) this.macro(macro, { path: loaded!.path, ast: loaded!.ast });
  }

  /** A static include sees the including frame: its reads are the body's. */
  private include(n: any, t: Tpl, scope: Set<string>): void {
    const name = literalName(n.template);
    if (name === undefined) return this.walk(n.template, t, scope); // dynamic: its name's reads only
    const loaded = load(this.env, name, t.path);
    if (!loaded) return;
    const id = loaded.path ?? name;
    if (this.files.has(id)) return; // a cycle
    this.files.add(id);
    this.walk(loaded.ast.root, { path: loaded.path, ast: loaded.ast }, new Set(scope));
    this.files.delete(id);
  }
}

function bind(target: any, scope: Set<string>): void {
  if (target instanceof nodes.Symbol) scope.add(target.value);
  else if (target instanceof nodes.Array || target instanceof nodes.NodeList) for (const c of target.children) bind(c, scope);
}

/** The cache block being checked. */
export interface CheckedBlock {
  name: string;
  /** Full path of its template. */
  template: string | undefined;
  ast: TemplateAst;
  /** Its CallExtension node in `ast`. */
  node: any;
  /** Vary expressions (nodes). */
  vary: any[];
  /** 1-based position of the tag. */
  line: number;
  column: number;
  /** `shared=[…]` of the tag. */
  shared: readonly string[];
}

/** Findings (`leak` and `secret` warnings) of one cache block. */
export function checkBlock(env: EnvLike, block: CheckedBlock, guard: Pick<LeakGuard, 'shared'>): FragcacheWarning[] {
  const tpl: Tpl = { path: block.template, ast: block.ast };
  const body = new Walker(env, env.globals ?? {});
  body.walk(block.node.contentArgs, tpl, new Set());
  const varied = new Walker(env, env.globals ?? {});
  for (const v of block.vary) varied.walk(v, tpl, new Set());
  const roots = new Set(varied.reads.map((r) => r.root));
  const shared = [...guard.shared, ...block.shared];
  const isShared = (p: string) => shared.some((s) => p === s || p.startsWith(`${s}.`));
  // A name set at the top of the template from other variables (`set name = user.name`) is covered when what its
  // value reads is.
  const covered = (root: string, t: Tpl, seen = new Set<string>()): boolean => {
    if (roots.has(root)) return true;
    const value = t.ast.derived.get(root);
    if (!value || seen.has(root)) return false;
    seen.add(root);
    const w = new Walker(env, env.globals ?? {});
    w.walk(value, t, new Set());
    return w.reads.length > 0 && w.reads.every((r) => isShared(r.path) || covered(r.root, t, seen));
  };
  const where = `${displayPath(block.template)}:${block.line}`;
  const base = { fragment: block.name, template: displayPath(block.template), line: block.line, column: block.column };
  const at = (r: { tpl: Tpl; line: number }) => (r.tpl.path !== block.template ? ` (read in ${displayPath(r.tpl.path)}:${r.line})` : '');
  const out: FragcacheWarning[] = [];
  const reported = new Set<string>();
  for (const r of body.reads) {
    // A secret is reported as such (below), not as one more unvaried variable.
    if (reported.has(r.root) || isShared(r.path) || SECRET_NAME.test(r.path) || covered(r.root, r.tpl)) continue;
    reported.add(r.root);
    out.push({
      ...base,
      kind: 'leak',
      variable: r.root,
      path: r.path,
      message: `${block.name} (${where}) reads "${r.path}" but does not vary on "${r.root}": every user would see the first user's ${block.name}${at(r)}`,
    });
  }
  const secrets = [...body.secrets];
  for (const r of body.reads) if (SECRET_NAME.test(r.path) && !roots.has(r.root)) secrets.push({ what: `a per-request secret ("${r.path}")`, tpl: r.tpl, line: r.line });
  const said = new Set<string>();
  for (const s of secrets) {
    if (said.has(s.what)) continue;
    said.add(s.what);
    out.push({ ...base, kind: 'secret', message: `${block.name} (${where}) emits ${s.what}${at(s)}: cached, every user would get the first user's; render it outside the cache block` });
  }
  return out;
}
