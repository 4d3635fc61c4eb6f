/**
 * The Nunjucks extension: parses `cache ttl name [vary…] [tags=[…]] [when=expr] [using="alias"]
 * [stale=secs] [digest=false]` … `endcache`, and hands each render to the {@link RenderSession}.
 *
 * The tag is a *synchronous* Nunjucks extension (`CallExtension`), never `CallExtensionAsync`: Nunjucks
 * drops the output of async extensions in macros, `set` captures, `call`/`filter` blocks and includes in
 * loops (mozilla/nunjucks #1252, #1363, #617, #792). Store reads happen between passes instead.
 * @module
 */
import nunjucks from 'nunjucks';
import { FragmentCache } from './cache';
import { OptionError } from './errors';
import { MemoryStore } from './stores/memory';
import { blockDependencies, blockDigest as depsDigest, trackDependents, type BlockDeps, type EnvLike } from './digest';
import { namePart, sourceDigest } from './keys';
import { checkBlock, displayPath, leakGuardOf, type LeakGuard } from './leakguard';
import { currentSession, renderBody, RenderSession, type Block, type CacheResolver, type TagOptions } from './render';
import { cacheExtensions, cacheNodeAt, declaredDeps, isAnalysing, parseTemplate } from './template-ast';
import { emitProcessWarning, type FragcacheWarning } from './warnings';

/* eslint-disable @typescript-eslint/no-explicit-any -- Nunjucks' parser API is untyped */
type Parser = any;
type Nodes = any;
type Lexer = any;

const OPTIONS = ['tags', 'when', 'using', 'stale', 'digest', 'deps', 'shared'] as const;
const NAME = /^[A-Za-z0-9_.:-]+$/;

/**
 * Names under which a CacheExtension was added to an Environment: their nodes' bodies are searched for blocks.
 * Nunjucks finds a template's `block`s with `findAll(Block)`, which does not look into an extension's body (a
 * plain array), so a `block` inside a cache body would be "unknown". Looking into this tag's bodies makes such a
 * block work as it does inside `if` or `for` (only for this extension's nodes; others are left as they are).
 */
const ownNames = new Set<string>();
const nunjucksNodes: Nodes = (nunjucks as unknown as { nodes: Nodes }).nodes;
{
  const proto = nunjucksNodes.CallExtension.prototype;
  if (!proto.__fragcacheFindAll) {
    const findAll = proto.findAll;
    proto.findAll = function (this: any, type: any, results?: unknown[]) {
      const found = findAll.call(this, type, results);
      if (ownNames.has(this.extName)) {
        for (const c of this.contentArgs ?? []) {
          if (c instanceof type) found.push(c);
          if (c instanceof nunjucksNodes.Node) c.findAll(type, found);
        }
      }
      return found;
    };
    proto.__fragcacheFindAll = true;
  }
}

/**
 * Output that becomes a value (a macro's or `call` body's result, a `set` capture, a filter block, `super()`) may be
 * printed later inside a cached body that did not render it (see RenderSession.tieEarlier). The session counts such
 * constructs while they run: templates parsed with this extension get a marker at the start and the end of every macro,
 * caller and capture body, and `super()` (Context#getSuper) is counted around its call.
 */
{
  const Parser = (nunjucks as unknown as { parser: { Parser: { prototype: any } } }).parser.Parser;
  const proto = Parser.prototype;
  if (!proto.__fragcacheValues) {
    const parseAsRoot = proto.parseAsRoot;
    proto.parseAsRoot = function (this: any) {
      const root = parseAsRoot.call(this);
      const ext = (this.extensions ?? []).find((e: unknown) => e instanceof CacheExtension);
      if (ext) {
        const mark = (list: any) => {
          if (!list?.children) return;
          list.children.unshift(new nunjucksNodes.CallExtension(ext, 'enterValue', null, null));
          list.children.push(new nunjucksNodes.CallExtension(ext, 'leaveValue', null, null));
        };
        // (Nunjucks' findAll does not look into a Set's capture body, nor into arrays: walk every field.)
        const found: any[] = [];
        const walk = (node: any): void => {
          if (Array.isArray(node)) return node.forEach(walk);
          if (!(node instanceof nunjucksNodes.Node)) return;
          if (node instanceof nunjucksNodes.Macro || node instanceof nunjucksNodes.Capture) found.push(node); // macros, callers, captures, filter blocks
          if (node instanceof nunjucksNodes.NodeList) node.children.forEach(walk);
          else for (const f of (node as { fields: string[] }).fields) walk(node[f]);
          if (node instanceof nunjucksNodes.Set) walk(node.body);
        };
        walk(root);
        for (const n of found) mark(n.body);
      }
      return root;
    };
    proto.__fragcacheValues = true;
  }
  // Context is not exported: take its prototype from a render.
  const env = new nunjucks.Environment(null);
  let ctxProto: any;
  env.addFilter('grab', function (this: unknown) {
    ctxProto = Object.getPrototypeOf(this);
    return '';
  });
  env.renderString('{{ 0 | grab }}', {});
  if (ctxProto && !ctxProto.__fragcacheSuper) {
    const getSuper = ctxProto.getSuper;
    ctxProto.getSuper = function (this: unknown, env: unknown, name: unknown, block: unknown, frame: unknown, runtime: unknown, cb: (err: unknown, res?: string) => void) {
      const session = currentSession();
      if (!session) return getSuper.call(this, env, name, block, frame, runtime, cb);
      session.enterValue();
      let left = false;
      return getSuper.call(this, env, name, block, frame, runtime, (err: unknown, res?: string) => {
        if (!left) {
          left = true;
          session.leaveValue();
        }
        cb(err, res);
      });
    };
    ctxProto.__fragcacheSuper = true;
  }
}

/** The template being compiled (set around Template#compile by the engine): its path and Environment. */
export interface Compiling {
  path: string | undefined;
  env: object;
}
let compiling: Compiling | undefined;

/** @internal Sets the template being compiled; returns the previous one. */
export function compilingTemplate(state: Compiling | undefined): Compiling | undefined {
  const previous = compiling;
  compiling = state;
  return previous;
}

/** Compile-time checks of an extension (see {@link CacheExtensionOptions}). */
export interface CacheExtensionOptions {
  /** The leak guard (default: `warn`, `off` in production). */
  leakGuard?: LeakGuard;
  /** Where warnings go (default: the fragments cache's `warning` event, else `process.emitWarning`). */
  onWarning?: (w: FragcacheWarning) => void;
}

/** Digest of a compiled block function (its code), computed once per function. */
const blockDigests = new WeakMap<object, string>();
function blockDigest(fn: object): string {
  let d = blockDigests.get(fn);
  if (d === undefined) blockDigests.set(fn, (d = sourceDigest(String(fn))));
  return d;
}

/** What {@link CacheExtension} takes: where its fragments are stored. */
export type CacheTarget = CacheResolver | FragmentCache | { cache: FragmentCache; caches: ReadonlyMap<string, FragmentCache> };

/**
 * The `cache` tag, for your own Nunjucks Environment (an engine adds it to its own): `env.addExtension('FragmentCache',
 * new CacheExtension(engine))`. Give it an engine (its stores and `using=` aliases), a {@link FragmentCache}, a
 * resolver `(alias) => cache`, or nothing (a private memory store). Renders through your Environment are synchronous
 * and take one pass: fragments on a store that cannot answer in the same tick (Redis…) render uncached there, with an
 * `error` event; render with `engine.render()` for those.
 */
export class CacheExtension {
  readonly tags = ['cache'];
  private warnedAsync = false;
  private implicit: RenderSession | undefined;
  private readonly resolveCache: CacheResolver;
  private readonly guard: LeakGuard;
  private readonly onWarning: (w: FragcacheWarning) => void;
  /** Warnings already given (each once per process). */
  private readonly warned = new Set<string>();

  constructor(target?: CacheTarget, options: CacheExtensionOptions = {}) {
    this.guard = options.leakGuard ?? leakGuardOf(undefined);
    this.onWarning =
      options.onWarning ??
      ((w) => {
        const events = this.resolveCache(undefined)?.events;
        if (events?.listenerCount('warning')) events.emit('warning', w);
        else emitProcessWarning(w);
      });
    if (target === undefined) {
      const own = new FragmentCache(new MemoryStore());
      this.resolveCache = (alias) => (alias === undefined ? own : undefined);
    } else if (typeof target === 'function') this.resolveCache = target;
    else if (target instanceof FragmentCache) this.resolveCache = (alias) => (alias === undefined ? target : undefined);
    else if (target && target.cache instanceof FragmentCache && target.caches instanceof Map) {
      const { cache, caches } = target;
      this.resolveCache = (alias) => (alias === undefined ? (caches.get('fragments') ?? cache) : caches.get(alias));
    } else throw new OptionError('CacheExtension', target, 'expected an engine, a FragmentCache or a function (alias) => FragmentCache');
  }

  parse(parser: Parser, nodes: Nodes, lexer: Lexer): unknown {
    const first = parser.peekToken();
    try {
      return this.parseTag(parser, nodes, lexer);
    } catch (err) {
      // Some Nunjucks parse errors (a tag or string left open up to the end of the template) carry no position: give
      // them the tag's, so that every error names the file, line and column.
      const e = err as { lineno?: number; message?: string };
      if (first && err instanceof (nunjucks.lib as unknown as { TemplateError: new (...a: unknown[]) => Error }).TemplateError && e.lineno === undefined) {
        parser.fail(`${e.message} (in the cache tag opened here: a tag or a string is not closed)`, first.lineno, first.colno);
      }
      throw err;
    }
  }

  private parseTag(parser: Parser, nodes: Nodes, lexer: Lexer): unknown {
    ownNames.add((this as { __name?: string }).__name ?? 'FragmentCache');
    cacheExtensions.add((this as { __name?: string }).__name ?? this);
    const tok = parser.nextToken();
    const at = (t: { lineno: number; colno: number }) => [t.lineno, t.colno] as const;
    const isEnd = () => {
      const p = parser.peekToken();
      return !p || p.type === lexer.TOKEN_BLOCK_END;
    };
    if (isEnd()) parser.fail('cache tag needs a ttl and a name: <% cache ttl name [vary…] %>', ...at(tok));
    const ttl = parser.parseExpression();
    parser.skip(lexer.TOKEN_COMMA);
    if (isEnd()) parser.fail('cache tag needs a name after the ttl: <% cache ttl name [vary…] %>', ...at(tok));
    const name = this.parseName(parser, lexer);

    const vary: unknown[] = [];
    const options: unknown[] = [];
    let digest = true;
    const declared: string[] = [];
    const shared: string[] = [];
    const seen = new Set<string>();
    while (!isEnd()) {
      if (parser.skip(lexer.TOKEN_COMMA)) continue;
      const next = parser.peekToken();
      // An option is `word=`: look at the source right after the word (the parser has one token of lookahead).
      const rest: string = parser.tokens.str.slice(parser.tokens.index);
      if (next.type === lexer.TOKEN_SYMBOL && /^\s*=(?!=)/.test(rest)) {
        parser.nextToken();
        parser.nextToken(); // '='
        const opt = next.value as string;
        if (!(OPTIONS as readonly string[]).includes(opt)) {
          parser.fail(`cache tag: unknown option "${opt}" (options: ${OPTIONS.join(', ')})`, next.lineno, next.colno);
        }
        if (seen.has(opt)) parser.fail(`cache tag: option "${opt}" given twice`, next.lineno, next.colno);
        seen.add(opt);
        const value = parser.parseExpression();
        if (opt === 'digest') {
          if (!(value instanceof nodes.Literal) || typeof value.value !== 'boolean') {
            parser.fail('cache tag: digest= takes true or false', next.lineno, next.colno);
          }
          digest = value.value;
        } else if (opt === 'deps' || opt === 'shared') {
          // Read at compile time: literal strings only.
          const items = value instanceof nodes.Array ? value.children : [];
          if (!(value instanceof nodes.Array) || !items.every((c: any) => c instanceof nodes.Literal && typeof c.value === 'string' && c.value)) {
            parser.fail(`cache tag: ${opt}= takes a list of strings, e.g. ${opt}=["${opt === 'deps' ? 'partials/a.njk' : 'site'}"]`, next.lineno, next.colno);
          }
          (opt === 'deps' ? declared : shared).push(...items.map((c: any) => c.value as string));
        } else {
          options.push(new nodes.Pair(next.lineno, next.colno, new nodes.Literal(next.lineno, next.colno, opt), value));
        }
        continue;
      }
      if (seen.size) parser.fail('cache tag: vary values must come before the options', next.lineno, next.colno);
      vary.push(parser.parseExpression());
    }
    // `-%>` trims the body's leading white space: part of what the body outputs, so part of its digest.
    const trimmed = parser.advanceAfterBlockEnd(tok.value)?.value?.startsWith('-') ? '-' : '';

    const start: number = parser.tokens.index;
    let body: any;
    try {
      body = parser.parseUntilBlocks('endcache');
    } catch (err) {
      // `<% endif %>` (say) before this tag's endcache: the endcache is missing, which is what to say.
      const m = /unknown block tag: (end\w*)/.exec(String((err as Error).message));
      if (m) parser.fail(`cache tag "${name}" opened at line ${tok.lineno + 1} has no endcache before "${m[1]}"`, ...at(tok));
      throw err;
    }
    const end = parser.peekToken();
    if (!end || end.value !== 'endcache') {
      parser.fail(`cache tag "${name}" opened at line ${tok.lineno + 1} has no endcache`, ...at(tok));
    }
    const source: string = trimmed + parser.tokens.str.slice(start, parser.tokens.index);
    // Blocks inside the body: what they output depends on the template that extends this one (see `run`).
    const blocks: string[] = body.findAll(nodes.Block).map((b: any) => b.name.value);
    parser.advanceAfterBlockEnd();

    const [line, col] = at(tok);
    const lit = (v: unknown) => new nodes.Literal(line, col, v);
    const deps = isAnalysing() ? undefined : this.check(parser, tok, name, vary, declared, shared);
    const args = new nodes.NodeList(line, col, [
      lit(name),
      lit(namePart(name)),
      digest ? lit(depsDigest(source, deps)) : lit(null),
      lit(line + 1),
      lit(col + 1),
      ttl,
      new nodes.Array(line, col, vary),
      new nodes.Dict(line, col, options),
      // null when there are none: an empty array literal would be allocated on every render.
      blocks.length ? new nodes.Array(line, col, blocks.map(lit)) : lit(null),
      lit(compiling?.path ?? null),
    ]);
    const node = new nodes.CallExtension(this, 'run', args, [body]);
    node.fragcache = { declared, shared }; // for `fragcache deps` (not compiled)
    // Macros and imports at the top of the body define names for what follows the tag too. On a hit the body does not
    // run, so they are moved ahead of it: defined on a hit as on a miss, as in plain Nunjucks (they output nothing).
    const hoisted = body.children.filter((c: any) => (c instanceof nodes.Macro && !(c instanceof nodes.Caller)) || c instanceof nodes.Import || c instanceof nodes.FromImport);
    if (!hoisted.length) return node;
    body.children = body.children.filter((c: any) => !hoisted.includes(c));
    return new nodes.NodeList(line, col, [...hoisted, node]);
  }

  /**
   * Compile-time work on one block, from the whole template's tree (parsed once per source): its dependencies
   * (for the digest), dynamic names (warned about once), and the leak guard. Undefined outside an engine's
   * compile (no Environment to resolve templates with).
   */
  private check(parser: Parser, tok: { lineno: number; colno: number }, name: string, vary: unknown[], tagDeps: string[], shared: string[]): BlockDeps | undefined {
    const state = compiling;
    if (!state) return undefined;
    const env = state.env as EnvLike;
    const source: string = parser.tokens.str;
    const ast = parseTemplate(env, source);
    const node = cacheNodeAt(ast, tok.lineno, tok.colno);
    if (!node) return undefined;
    const declared = [...tagDeps, ...declaredDeps(source)];
    const deps = blockDependencies(env, state.path, ast, node, declared);
    trackDependents(env, state.path, deps.paths);
    const where = `${displayPath(state.path)}:${tok.lineno + 1}`;
    if (!declared.length) {
      for (const d of deps.dynamic) {
        const inside = d.template === state.path ? '' : ` (in ${displayPath(d.template)}:${d.line})`;
        this.warnOnce({
          kind: 'dynamic-dependency',
          fragment: name,
          template: displayPath(state.path),
          line: tok.lineno + 1,
          column: tok.colno + 1,
          message: `${name} (${where}) depends on ${d.kind} ${d.expr}${inside}, whose name is an expression: the digest cannot cover it, so editing that template will not refresh ${name}. Declare it: deps=["partials/x.njk"] or {# Template Dependency: partials/x.njk #}`,
        });
      }
    }
    if (this.guard.mode !== 'off') {
      const findings = checkBlock(env, { name, template: state.path, ast, node, vary, line: tok.lineno + 1, column: tok.colno + 1, shared }, this.guard);
      if (findings.length && this.guard.mode === 'error') parser.fail(`leak guard: ${findings.map((f) => f.message).join('; ')}`, tok.lineno, tok.colno);
      for (const f of findings) this.warnOnce(f);
    }
    return deps;
  }

  private warnOnce(w: FragcacheWarning): void {
    if (this.warned.has(w.message)) return;
    this.warned.add(w.message);
    this.onWarning(w);
  }

  /** A bare identifier (letters, digits, `_ - . :`) or a string literal, taken literally. */
  private parseName(parser: Parser, lexer: Lexer): string {
    const first = parser.nextToken();
    if (first.type === lexer.TOKEN_STRING) {
      if (!first.value) parser.fail('cache tag: the name must not be empty', first.lineno, first.colno);
      return first.value;
    }
    let name = String(first.value);
    // Glue the tokens of `sidebar-left`, `a.b`, `x:y` back together, up to the next space.
    for (;;) {
      const t = parser.nextToken(true);
      if (!t || t.type === lexer.TOKEN_WHITESPACE) break;
      if (t.type === lexer.TOKEN_BLOCK_END || t.type === lexer.TOKEN_COMMA) {
        parser.pushToken(t);
        break;
      }
      name += String(t.value);
    }
    const ok = [lexer.TOKEN_SYMBOL, lexer.TOKEN_INT, lexer.TOKEN_FLOAT, lexer.TOKEN_BOOLEAN, lexer.TOKEN_NONE].includes(first.type);
    if (!ok || !NAME.test(name)) {
      parser.fail(`cache tag: the name must be an identifier (letters, digits, _ - . :) or a string, got ${JSON.stringify(name)}`, first.lineno, first.colno);
    }
    return name;
  }

  /** Marks where output that becomes a value starts and ends (see the parser hook at the top of this module). */
  enterValue(): string {
    currentSession()?.enterValue();
    return '';
  }
  leaveValue(): string {
    currentSession()?.leaveValue();
    return '';
  }

  /** Called by compiled templates. */
  run(
    context: { blocks?: Record<string, object[]> },
    name: string,
    np: string,
    digest: string | null,
    line: number,
    column: number,
    ttl: unknown,
    vary: unknown[],
    options: TagOptions,
    blocks: string[] | null,
    template: string | null,
    body: () => string,
  ): unknown {
    // A `block` inside the body renders whatever the templates extending this one put there: the key includes the
    // code of every override in the chain, so two child templates never share (and an edited override misses).
    if (blocks) digest = sourceDigest(`${digest ?? '-'}|${blocks.map((b) => (context.blocks?.[b] ?? []).map(blockDigest).join(',')).join('|')}`);
    const block: Block = { name, namePart: np, digest, line, column, template: template ?? undefined };
    const session = currentSession();
    // A session belongs to one engine: another engine's template rendered inside it gets its own.
    if (session && session.resolver === this.resolveCache) return session.fragment(block, ttl, vary, options, body);
    // `env.render()` called directly: fine with a same-tick store (memory), one pass.
    const cache = this.resolveCache(typeof options.using === 'string' ? options.using : undefined);
    if (cache && !cache.store.sync) {
      if (!this.warnedAsync) {
        this.warnedAsync = true;
        cache.report(new Error(`env.render() cannot read the ${cache.store.kind} store synchronously: fragments render uncached. Use engine.render().`));
      }
      return new nunjucks.runtime.SafeString(renderBody(block, body));
    }
    // One session reused by every top-level fragment of plain renders (they are synchronous, so never concurrent).
    const implicit = (this.implicit ??= new RenderSession(this.resolveCache));
    implicit.reset();
    // One pass only: a fragment of a remote store (using=) nested here renders uncached instead of waiting.
    implicit.lastPass = true;
    return implicit.pass(() => implicit.fragment(block, ttl, vary, options, body));
  }
}

export type { FragmentCache };
