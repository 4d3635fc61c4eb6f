/**
 * The engine: a Nunjucks Environment with the `cache` tag, its stores, and renders that resolve every
 * fragment (see {@link RenderSession} for the passes).
 * @module
 */
import { EventEmitter } from 'node:events';
import { STORE_BUDGET, StoreBudget } from './budget';
import path from 'node:path';
import nunjucks from 'nunjucks';
import { FragmentCache, type CacheEvents, type Counters } from './cache';
import { AsyncTemplateError, FragcacheError, OptionError, TemplateError } from './errors';
import { dependencies, type DepNode } from './deps';
import { CacheExtension, compilingTemplate } from './extension';
import type { GuardOptions } from './guard';
import { leakGuardOf, type LeakGuardMode, type LeakGuardOptions } from './leakguard';
import { RenderSession, SharedFailure, type FragmentTrace } from './render';
import { createStore, type StoreSpec } from './stores';
import { verifyLater } from './verify';
import { emitProcessWarning, type FragcacheWarning } from './warnings';

/** Options of {@link createEngine}. */
export interface EngineOptions {
  /** Folder(s) of templates (default `"templates"`, relative to the working directory). */
  views?: string | string[];
  /**
   * The default store (default `"memory"`): `"memory"`, a store URL (`redis://…`, `memcache://…`,
   * `sqlite://…`), a Keyv instance or adapter, or a `Store`.
   */
  store?: StoreSpec;
  /**
   * Named stores, as Django's `CACHES`: `{ default: …, fragments: … }`. The tag picks one with
   * `using="alias"`; fragments use `fragments` when it exists, else `default` (which is `store`).
   */
  stores?: Record<string, StoreSpec>;
  /** Key prefix of everything the engine stores (default `"fc"`). */
  prefix?: string;
  /** Key version (default 1): bump it to start from an empty cache without deleting anything. */
  version?: number | string;
  /**
   * Tag delimiters: `"angle"` (default) for `<% cache … %>` block tags with `{{ }}` variables and `{# #}`
   * comments; `"curly"` for Nunjucks' own `{% %}`.
   */
  syntax?: 'angle' | 'curly';
  /** Options passed to the Nunjucks Environment (default `{ autoescape: true }`). */
  nunjucks?: nunjucks.ConfigureOptions;
  /** Reload templates when they change (Nunjucks `watch`-free `noCache`; for development). */
  noCache?: boolean;
  /** Time budget and circuit breaker of store calls (default 100 ms budget, 3 failures, retry after 0.5 s). */
  timeout?: number;
  /**
   * Store-time budget of one request, in ms (default: 3 × `timeout`): how long one render, or one page request
   * through the page cache (page look-up, lock, fragments, tag versions), may wait on the stores in total.
   * A miss makes several store calls in a row, so on a slow store (each call under `timeout`, none failing)
   * they add up; once this is spent the request reads nothing more from the stores, renders what is left
   * uncached, and does not wait for its writes (they finish in the background). Only time spent waiting on a
   * store counts (calls made together once), never the route's own work. `Infinity` turns it off.
   */
  requestBudget?: number;
  /**
   * Longest time a render waits for a fragment that another render in this process is producing (single-flight),
   * in ms (default 5000). After that it renders the fragment itself.
   */
  waitTimeout?: number;
  /**
   * Shared stores (Redis, Memcached): a missed fragment is rendered by one process of the fleet, which holds
   * a lock on it for at most `lockTimeout` ms (default 5000, so a crashed owner blocks nobody longer); the
   * others serve a stale copy (`stale=`) or wait up to `lockWait` ms (default 3000) for its result, then
   * render it themselves.
   */
  lockTimeout?: number;
  lockWait?: number;
  /**
   * Probabilistic early refresh (XFetch, as Symfony Cache) on shared stores, as β (default 0: off; 1 is the usual
   * value, more refreshes earlier). A hit whose remaining TTL is small compared with its render cost is, with a
   * probability that grows as expiry nears, refreshed by one renderer (the lock winner) while others keep hitting.
   */
  earlyRefresh?: number;
  breaker?: Omit<GuardOptions, 'timeout' | 'requestBudget'>;
  /**
   * Renders whose data-load time is not known (no `since`): output of a tag invalidated less than this many ms
   * before the render started is stored only until the invalidation time plus this (default 1000). The same
   * bound as invalidating again after this delay, without a second write. See docs/reliability.md.
   */
  unknownSinceWindow?: number;
  /**
   * Most passes one render may take (default 32); each level of nested fragments that misses on a remote store
   * costs one. The last pass renders fragments whose keys are still unknown without caching them.
   */
  maxPasses?: number;
  /**
   * The leak guard (compile time only): `"warn"` (default outside production) reports a cache block whose body
   * reads a variable none of its vary expressions mention, as a `warning` event; `"error"` fails the render (for
   * CI); `"off"` (default when NODE_ENV=production) skips the analysis. `{ mode, shared: ['site', 'nav'] }` names
   * variables that are the same for every request. See docs/leak-guard.md.
   */
  leakGuard?: LeakGuardMode | LeakGuardOptions;
  /**
   * Share of fragment hits (0…1, default 0) checked in the background: after the response, the page is rendered
   * again without the cache and each sampled fragment's output compared with the stored body; a difference is
   * reported (`warning`, kind `verify`) as a missing vary, and the entry is replaced with the fresh output. The
   * response never waits for it. See docs/leak-guard.md.
   */
  verify?: number;
  /**
   * Reload templates when their files change (a chokidar watcher, closed by `close()`): the changed template and
   * every template whose fragments' digests include it recompile, so exactly those fragments miss. (With
   * `noCache`, every render recompiles anyway.) See docs/digests.md.
   */
  watch?: boolean;
}

/** Options of {@link Engine.render} and {@link Engine.renderString}. */
export interface RenderOptions {
  /**
   * When the data in the context was loaded, or any time before (a `Date` or epoch ms): the start of the request
   * is right. Output whose data was loaded before one of its tags was last invalidated is shown but not stored,
   * so an invalidation that resolved is never undone by a request that loaded the old data just before it.
   * Renders through `engine.express(app)` use the start of the request. Without it, see `unknownSinceWindow`.
   */
  since?: Date | number;
  /** Name used in error messages (`renderString`; default `"(string)"`). */
  name?: string;
}

/** Options of {@link Engine.explain}. */
export interface ExplainOptions extends Pick<RenderOptions, 'since'> {
  /**
   * Wrap each fragment's output in `<fragcache-fragment data-name data-status data-age>` (the CLI's
   * `?fragcache=debug` view). What is stored stays exactly what a normal render stores.
   */
  annotate?: boolean;
}

/** Result of {@link Engine.explain}. */
export interface Explained {
  html: string;
  /** Every fragment of the final pass, in the order they appear, with hit/miss and timings. */
  fragments: FragmentTrace[];
  /** Render passes taken (1 on a same-tick store). */
  passes: number;
}

const ANGLE = { blockStart: '<%', blockEnd: '%>' };

/**
 * Environments made by engines. Nunjucks reports a syntax error found while compiling a template it loads for
 * another (`import`, `from`, and any template whose earlier failed load left it uncompiled in the loader cache)
 * without that template's name, so it reads as an error of the template being rendered: for these
 * environments, every compile error names the template it is in.
 */
const engineEnvs = new WeakSet<object>();
/** Per engine environment using the angle syntax: looks at each template's source as it is compiled. */
const sourceChecks = new WeakMap<object, (path: string | undefined, source: unknown) => void>();
{
  type Tmpl = { env: object; path?: string; tmplStr?: unknown; compiled?: boolean; compile(): void; _compile(): void; __fragcache?: boolean };
  const proto = (nunjucks.Template as unknown as { prototype: Tmpl }).prototype;
  if (!proto.__fragcache) {
    const compile = proto.compile;
    const _compile = proto._compile;
    const prettify = (nunjucks as unknown as { lib: { _prettifyError(path: string | undefined, withInternals: boolean, e: unknown): unknown } }).lib._prettifyError;
    proto.compile = function (this: Tmpl) {
      if (this.compiled) return compile.call(this);
      try {
        return compile.call(this);
      } catch (e) {
        throw engineEnvs.has(this.env) ? prettify(this.path, true, e) : e;
      }
    };
    // Every compile (eager ones call _compile directly): cache tags record where they are, and resolve dependencies.
    proto._compile = function (this: Tmpl) {
      const previous = compilingTemplate({ path: this.path, env: this.env });
      try {
        return _compile.call(this);
      } finally {
        compilingTemplate(previous);
      }
    };
    proto.__fragcache = true;
  }
  // Every compile, eager (getTemplate, new Template) or lazy, goes through _compile.
  const inner = proto as unknown as { _compile(): void; __fragcacheSource?: boolean } & Tmpl;
  if (!inner.__fragcacheSource) {
    const _compile = inner._compile;
    inner._compile = function (this: Tmpl & { _compile(): void }) {
      sourceChecks.get(this.env)?.(this.path, this.tmplStr);
      return _compile.call(this);
    };
    inner.__fragcacheSource = true;
  }
}

/** 1-based line and column of an offset in a text. */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  return { line: before.split('\n').length, column: offset - before.lastIndexOf('\n') };
}

/**
 * The request's store budget, when the render runs inside one that has it (the page cache and `engine.express`
 * put it on `res.locals` under a symbol, which Express copies into the render options).
 */
function budgetOf(options: object): StoreBudget | undefined {
  const b = (options as Record<symbol, unknown>)[STORE_BUDGET];
  return b instanceof StoreBudget ? b : undefined;
}

/** Epoch ms of a `since` option; rejects what is not a time. */
function sinceOf(since: Date | number | undefined): number | undefined {
  if (since === undefined) return undefined;
  const ms = since instanceof Date ? since.getTime() : since;
  if (typeof ms !== 'number' || !Number.isFinite(ms)) throw new OptionError('since', since, 'expected a Date or epoch milliseconds');
  return ms;
}

const COUNTERS = ['hits', 'misses', 'stores', 'stale', 'errors', 'fenced'] as const;

/** A pass whose callback had not come when it returned (see `Engine.settle`). */
interface PendingPass {
  /** True while a late callback is still awaited. */
  late: boolean;
  error?: unknown;
}
// `(path) [Line l, Column c]`; the path may hold parentheses itself, as `(string)` does.
const POSITION = /^\s*\((.+?)\)(?: \[Line (\d+), Column (\d+)\])?$/gm;

/** Events of an {@link Engine}: those of its caches (`warning` included: see {@link FragcacheWarning}). */
export type EngineEvents = CacheEvents;

/** Nunjucks block tags: one of these after `{%` under the angle syntax is almost surely a template written for `{% %}`. */
const CURLY_TAG = /\{%-?\s*(cache|endcache|if|elif|elseif|else|endif|for|endfor|block|endblock|extends|include|import|from|set|endset|macro|endmacro|call|endcall|filter|endfilter)\b/;

/** The engine returned by {@link createEngine}. Emits the cache events of all its stores. */
export class Engine extends EventEmitter<EngineEvents> {
  /** The Nunjucks Environment: add filters and globals here. */
  readonly env: nunjucks.Environment;
  /** The default cache (low-level API). */
  readonly cache: FragmentCache;
  /** Every cache by alias (`default` and the `stores` option). */
  readonly caches: ReadonlyMap<string, FragmentCache>;
  readonly views: string[];
  private readonly maxPasses: number;
  private readonly waitTimeout: number;
  private readonly syntax: 'angle' | 'curly';
  private readonly verify: number;
  private readonly watcher: import('chokidar').FSWatcher | undefined;
  private readonly lock: { lockMs: number; lockWaitMs: number; earlyRefresh: number; unknownSinceWindow: number };
  /** @internal Only for the specs that show what fencing prevents: renders store whatever they produce. */
  unfenced = false;
  private readonly resolve = (alias: string | undefined): FragmentCache | undefined =>
    alias === undefined ? (this.caches.get('fragments') ?? this.cache) : this.caches.get(alias);

  constructor(options: EngineOptions = {}) {
    super();
    const views = options.views ?? 'templates';
    this.views = (Array.isArray(views) ? views : [views]).map((v) => path.resolve(v));
    if (options.syntax !== undefined && options.syntax !== 'angle' && options.syntax !== 'curly') {
      throw new OptionError('syntax', options.syntax, 'expected "angle" or "curly"');
    }
    this.syntax = options.syntax ?? 'angle';
    this.maxPasses = options.maxPasses ?? 32;
    if (!Number.isInteger(this.maxPasses) || this.maxPasses < 1) throw new OptionError('maxPasses', options.maxPasses, 'expected a whole number >= 1');
    for (const [name, value] of [
      ['timeout', options.timeout],
      ['waitTimeout', options.waitTimeout],
      ['lockTimeout', options.lockTimeout],
      ['lockWait', options.lockWait],
      ['unknownSinceWindow', options.unknownSinceWindow],
    ] as const) {
      if (value !== undefined && (typeof value !== 'number' || !Number.isFinite(value) || value <= 0)) {
        throw new OptionError(name, value, 'expected a number of milliseconds > 0');
      }
    }
    if (options.requestBudget !== undefined && (typeof options.requestBudget !== 'number' || Number.isNaN(options.requestBudget) || options.requestBudget <= 0)) {
      throw new OptionError('requestBudget', options.requestBudget, 'expected a number of milliseconds > 0 (or Infinity)');
    }
    this.waitTimeout = options.waitTimeout ?? 5000;
    if (options.verify !== undefined && (typeof options.verify !== 'number' || !(options.verify >= 0 && options.verify <= 1))) {
      throw new OptionError('verify', options.verify, 'expected a share of hits between 0 and 1, e.g. 0.01');
    }
    this.verify = options.verify ?? 0;
    if (options.earlyRefresh !== undefined && (typeof options.earlyRefresh !== 'number' || !Number.isFinite(options.earlyRefresh) || options.earlyRefresh < 0)) {
      throw new OptionError('earlyRefresh', options.earlyRefresh, 'expected a number >= 0 (XFetch beta)');
    }
    this.lock = {
      lockMs: options.lockTimeout ?? 5000,
      lockWaitMs: options.lockWait ?? 3000,
      earlyRefresh: options.earlyRefresh ?? 0,
      unknownSinceWindow: options.unknownSinceWindow ?? 1000,
    };
    const guard: GuardOptions = { ...options.breaker, timeout: options.timeout, requestBudget: options.requestBudget };
    const caches = new Map<string, FragmentCache>();
    const byStore = new Map<unknown, FragmentCache>();
    const make = (alias: string, spec: StoreSpec | undefined) => {
      // Two aliases given the same instance share one cache (and one circuit breaker).
      const existing = spec !== undefined && typeof spec === 'object' ? byStore.get(spec) : undefined;
      const cache =
        existing ?? new FragmentCache(createStore(spec, {}, alias === 'default' ? 'store' : `stores.${alias}`), {
          prefix: options.prefix,
          version: options.version,
          guard,
          events: this as unknown as EventEmitter<CacheEvents>,
          unknownSinceWindow: options.unknownSinceWindow,
        });
      if (spec !== undefined && typeof spec === 'object') byStore.set(spec, cache);
      caches.set(alias, cache);
    };
    make('default', options.stores?.default ?? options.store);
    for (const [alias, spec] of Object.entries(options.stores ?? {})) if (alias !== 'default') make(alias, spec);
    this.caches = caches;
    this.cache = caches.get('default')!;
    const loader = new nunjucks.FileSystemLoader(this.views, { noCache: options.noCache ?? false });
    this.env = new nunjucks.Environment(loader, {
      autoescape: true,
      ...options.nunjucks,
      // dev keeps the original error as `cause`, which becomes our TemplateError's cause.
      dev: true,
      tags: options.syntax === 'curly' ? options.nunjucks?.tags : { ...ANGLE, ...options.nunjucks?.tags },
    });
    this.env.addExtension('FragmentCache', new CacheExtension(this.resolve, { leakGuard: leakGuardOf(options.leakGuard), onWarning: (w) => this.warn(w) }));
    engineEnvs.add(this.env);
    const tags = options.syntax === 'curly' ? options.nunjucks?.tags : { ...ANGLE, ...options.nunjucks?.tags };
    if (tags?.blockStart === '<%') sourceChecks.set(this.env, (file, source) => this.checkSource(file, source));
    // Our own watcher, not Nunjucks' (it cannot be closed): a change is reported as the loader's `update`, which
    // drops the template and, for dependency digests, the templates that depend on it (lib/digest.ts).
    if (options.watch) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      this.watcher = (require('chokidar') as typeof import('chokidar')).watch(this.views, { ignoreInitial: true });
      const byPath = loader as unknown as { pathsToNames?: Record<string, string>; emit(e: string, ...a: unknown[]): void };
      this.watcher.on('all', (_event, file) => {
        const full = path.resolve(file);
        const name = byPath.pathsToNames?.[full];
        if (name) byPath.emit('update', name, full);
      });
    }
  }

  /** Templates already warned about (once each). */
  private readonly warned = new Set<string>();

  /** Under the angle syntax: warns once per template whose source has `{% tag` (output as text there). */
  private checkSource(file: string | undefined, source: unknown): void {
    if (typeof source !== 'string' || !source.includes('{%')) return;
    const m = CURLY_TAG.exec(source);
    const name = this.relative(file);
    if (!m || this.warned.has(name)) return;
    if (this.warned.size < 1000) this.warned.add(name);
    const { line, column } = lineColumn(source, m.index);
    this.warn({
      kind: 'syntax',
      message: `${name}:${line}:${column}: "${m[0]}" is a Nunjucks {% %} tag, but this engine uses the angle syntax (<% %>), where it is output as text. Write <% ${m[1]} … %>, or use syntax: 'curly' (fragcache --syntax curly) for templates written with {% %}.`,
      template: name,
      line,
      column,
    });
  }

  /**
   * Renders a template by name. Resolves with the HTML; rejects with a {@link TemplateError}. Give `since` (the
   * start of the request) so that output of data loaded before an invalidation is never stored.
   */
  async render(name: string, context: object = {}, options: RenderOptions = {}): Promise<string> {
    return (await this.run(() => this.template(name), context, false, false, sinceOf(options.since), budgetOf(options))).html;
  }

  /** Renders template source. The third argument is the name used in error messages, or {@link RenderOptions}. */
  async renderString(source: string, context: object = {}, options: string | RenderOptions = {}): Promise<string> {
    const o = typeof options === 'string' ? { name: options } : options;
    return (await this.run(() => this.compileString(source, o.name ?? '(string)'), context, false, false, sinceOf(o.since))).html;
  }

  /** Renders a template and reports each fragment: name, vary, key, hit/miss, time, size, TTL left, tags. */
  async explain(name: string, context: object = {}, options: ExplainOptions = {}): Promise<Explained> {
    return this.run(() => this.template(name), context, true, options.annotate, sinceOf(options.since));
  }

  /** Same as {@link explain} for template source. */
  async explainString(source: string, context: object = {}, name = '(string)'): Promise<Explained> {
    return this.run(() => this.compileString(source, name), context, true);
  }

  private template(name: string): nunjucks.Template {
    let tmpl: nunjucks.Template | undefined;
    try {
      tmpl = this.env.getTemplate(name, true);
    } catch (err) {
      throw this.templateError(err, name);
    }
    // An asynchronous loader answers later: getTemplate returns nothing.
    if (!tmpl) throw new AsyncTemplateError(`template ${name} comes from an asynchronous loader; fragcache renders synchronously so that no output is lost. Use a synchronous loader.`);
    return tmpl;
  }

  private compileString(source: string, name: string): nunjucks.Template {
    try {
      return new nunjucks.Template(source, this.env, name, true);
    } catch (err) {
      throw this.templateError(err, name);
    }
  }

  private async run(load: () => nunjucks.Template, context: object, trace: boolean, annotate = false, since?: number, budget?: StoreBudget): Promise<Explained> {
    const tmpl = load();
    budget ??= new StoreBudget(this.cache.guard.requestBudget);
    const session = new RenderSession(this.resolve, {
      trace,
      annotate,
      waitMs: this.waitTimeout,
      verify: this.verify,
      ...this.lock,
      since,
      fencing: !this.unfenced,
      budget,
      onWarning: this.renderWarning,
    });
    try {
      for (let passes = 1; ; passes++) {
        const html = await this.settle(session.pass(() => this.renderPass(tmpl, context)), tmpl);
        if (!session.incomplete) {
          await session.flush();
          if (session.sampled) this.verifyLater(tmpl, context, session);
          return { html, fragments: session.trace ?? [], passes };
        }
        await session.resolveWanted();
        // Past maxPasses (keys that change every pass, or absurd nesting) the next pass renders what is still unknown uncached.
        if (passes + 1 >= this.maxPasses) session.lastPass = true;
      }
    } catch (err) {
      session.fail();
      const root = (tmpl as unknown as { path?: string }).path;
      const late = await this.lateError(err);
      if (late) throw this.locateMissing(this.templateError(late, root), root);
      throw this.locateMissing(err instanceof FragcacheError ? err : this.templateError(err, root), root);
    }
  }

  /**
   * Nunjucks says "template not found: x" for a missing include, import or parent without saying where it is
   * pulled in: find that in the dependency tree of the rendered template, and name the file, line and column.
   */
  private locateMissing(err: FragcacheError, rootPath: string | undefined): FragcacheError {
    const m = /^template not found: (.+)$/.exec(err.message);
    if (!m || !(err instanceof TemplateError) || err.line !== undefined || !rootPath || !path.isAbsolute(rootPath)) return err;
    const root = this.relative(rootPath);
    let tree: DepNode;
    try {
      tree = dependencies(root, { views: this.views, syntax: this.syntax });
    } catch {
      return err;
    }
    const find = (node: DepNode, owner: string): { owner: string; at: DepNode } | undefined => {
      for (const c of node.children) {
        if (c.kind === 'missing' && c.name === m[1]) return { owner, at: c };
        const found = find(c, c.kind === 'cache' ? owner : c.name);
        if (found) return found;
      }
      return undefined;
    };
    const hit = find(tree, root);
    if (!hit) return err;
    const { owner, at } = hit;
    return new TemplateError(`${owner}:${at.line}:${at.column}: template not found: ${m[1]}`, owner, at.line, at.column, { cause: err.cause });
  }

  /** `verify`: after this response, renders the page again against shadow caches and compares the sampled hits. */
  private verifyLater(tmpl: nunjucks.Template, context: object, session: RenderSession): void {
    const samples = session.sampled!;
    session.sampled = undefined;
    const done = verifyLater(samples, (redirect) => {
      const check = new RenderSession(this.resolve, { waitMs: this.waitTimeout, redirect });
      check.lastPass = true; // same-tick shadow stores: one pass
      check.pass(() => this.renderPass(tmpl, context));
    }, (w) => this.warn(w), (s) => session.dataPredates(s.entry, s.cache));
    this.pending.add(done);
    void done.finally(() => this.pending.delete(done));
  }

  /** A render's warning about a template: blocks know its full path; warnings name it as the others do. */
  private readonly renderWarning = (w: FragcacheWarning): void => {
    const name = w.template === undefined ? undefined : this.relative(w.template);
    this.warnOnce(name === undefined ? w : { ...w, template: name, message: w.message.replace(w.template!, name) });
  };

  /** {@link warn}, once per message (bounded memory: past 1000 messages, repeats are possible again). */
  private readonly warnOnce = (w: FragcacheWarning): void => {
    if (this.warnedMessages.has(w.message)) return;
    if (this.warnedMessages.size >= 1000) this.warnedMessages.clear();
    this.warnedMessages.add(w.message);
    this.warn(w);
  };
  private readonly warnedMessages = new Set<string>();

  /** Emits a warning, or hands it to `process.emitWarning` when nobody listens. */
  private warn(w: FragcacheWarning): void {
    if (this.listenerCount('warning')) this.emit('warning', w);
    else emitProcessWarning(w);
  }

  /** For an AsyncTemplateError raised in a cache body: the error Nunjucks reports a tick later, if any. */
  private async lateError(err: unknown): Promise<unknown> {
    let e: unknown = err;
    for (let i = 0; i < 5 && e && !(e instanceof AsyncTemplateError); i++) e = (e as { cause?: unknown }).cause;
    if (!(e instanceof AsyncTemplateError) || !e.late) return undefined;
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    return e.late.error;
  }

  /**
   * The result of a pass. A pass that did not finish in the same tick either used something asynchronous (an
   * AsyncTemplateError) or hit an error that Nunjucks reports a tick later (a syntax error in an included
   * template is reported through setImmediate): wait one turn of the event loop to tell which.
   */
  private async settle(pass: string | PendingPass, tmpl: nunjucks.Template): Promise<string> {
    if (typeof pass === 'string') return pass;
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    pass.late = false; // a callback after this point is ignored
    if (pass.error) throw pass.error;
    throw new AsyncTemplateError(
      `template ${this.relative((tmpl as unknown as { path?: string }).path)} uses an asynchronous filter, extension or loader; fragcache renders synchronously so that no output is lost. Make it synchronous, or compute the value before rendering.`,
    );
  }

  /** One synchronous render; Nunjucks calls back in the same tick unless something async ran. */
  private renderPass(tmpl: nunjucks.Template, context: object): string | PendingPass {
    let done = false;
    let error: unknown;
    let html = '';
    const pending: PendingPass = { late: true };
    // A parent frame makes Nunjucks call back synchronously instead of via setImmediate.
    const frame = new (nunjucks.runtime as unknown as { Frame: new () => unknown }).Frame();
    (tmpl.render as unknown as (ctx: object, frame: unknown, cb: (e: unknown, r: string) => void) => void)(context, frame, (err, res) => {
      if (done) {
        // Called back after the pass: only an error is of use (see `settle`), never output.
        if (pending.late && err) pending.error = err;
        return;
      }
      done = true;
      error = err;
      html = res;
    });
    if (!done) {
      done = true;
      return pending;
    }
    if (error) throw error;
    return html;
  }

  private relative(p: string | undefined): string {
    if (!p) return '(string)';
    for (const v of this.views) if (p.startsWith(v + path.sep)) return path.relative(v, p);
    return p;
  }

  /** Turns a Nunjucks error into a {@link TemplateError} naming the template, line and column where it happened. */
  templateError(err: unknown, fallbackName?: string): FragcacheError {
    if (err instanceof FragcacheError) return err;
    if (err instanceof SharedFailure) {
      // Another render's failure in a fragment this one waited for: where that fragment is.
      const name = this.relative(err.template ?? fallbackName);
      return new TemplateError(`${name}:${err.line}:${err.column}: ${err.message}`, name, err.line, err.column, { cause: err.cause });
    }
    const e = err as Error & { cause?: unknown };
    const message = String(e?.message ?? err);
    let template: string | undefined;
    let line: number | undefined;
    let column: number | undefined;
    // Nunjucks writes "(path) [Line l, Column c]" for the template where the error happened, "(path)" for its includers.
    for (const m of message.matchAll(POSITION)) {
      if (m[2]) {
        template = m[1];
        line = Number(m[2]);
        column = Number(m[3]);
      } else if (!template) template = m[1];
    }
    // Nunjucks counts from 0 for errors raised while rendering (it keeps the original error as `cause`) and from 1
    // for parse errors and for the tag's own argument errors: report what editors show.
    if (line !== undefined && e?.cause instanceof Error && !(e.cause instanceof FragcacheError)) {
      line += 1;
      if (column !== undefined) column += 1;
    }
    // Nunjucks leaves "[Line 0, …]" out of the message (0 is falsy): an error on the first line of a render; but
    // line 0 with column 0 is what it gives when it does not know (an error thrown by a getter, say): say nothing.
    const raw = e as { lineno?: unknown; colno?: unknown };
    if (line === undefined && raw?.lineno === 0 && typeof raw.colno === 'number' && raw.colno > 0 && !/template not found/i.test(message)) {
      line = 1;
      column = raw.colno + 1;
    }
    template = template === 'unknown path' || !template ? fallbackName : template;
    const name = this.relative(template);
    let cause: unknown = e?.cause ?? err;
    const detail = message.replace(POSITION, '').replace(/^\s+/gm, '').trim();
    // (Raised in a cache body, the message is wrapped: "Template render error: (path)\nError: template not found: x".)
    const notFound = /template not found:\s*([^\n]+?)\s*$/i.exec(message);
    if (notFound) return new TemplateError(`template not found: ${notFound[1]}`, name, undefined, undefined, { cause });
    const where = [name, line, column].filter((x) => x !== undefined).join(':');
    if (cause instanceof TemplateError) cause = cause.cause ?? cause;
    if (cause instanceof AsyncTemplateError) return new AsyncTemplateError(`${where}: ${cause.message}`, { cause });
    return new TemplateError(`${where}: ${detail}`, name, line, column, { cause });
  }

  /** Drops every variant of a fragment (or with `vary`, one variant) in every store, and whatever contains it. */
  async invalidate(name: string, vary?: readonly unknown[]): Promise<void> {
    await Promise.all(this.distinctCaches().map((c) => c.invalidate(name, vary)));
  }

  /** Drops every fragment, page and value tagged with any of `tags`, in every store. */
  async invalidateTag(...tags: string[]): Promise<void> {
    await Promise.all(this.distinctCaches().map((c) => c.invalidateTag(...tags)));
  }

  /**
   * Invalidates on app events: when `emitter` emits `event`, drops the fragment names and tags that
   * `what` gives (a fixed list, or a function of the event's arguments). Returns a function that unbinds.
   * Failures are reported through the `error` event.
   *
   * @example engine.invalidateOn(articles, 'saved', (a) => ({ tags: [`article:${a.id}`], names: ['recent'] }))
   */
  invalidateOn(
    emitter: NodeJS.EventEmitter,
    event: string | symbol,
    what: InvalidationTargets | ((...args: any[]) => InvalidationTargets), // eslint-disable-line @typescript-eslint/no-explicit-any
  ): () => void {
    const listener = (...args: unknown[]) => {
      // Never throw into the app's emit(): a bad target is reported like a failed invalidation.
      let jobs: Promise<void>[];
      try {
        const targets = typeof what === 'function' ? what(...args) : what;
        if (typeof targets !== 'object' || targets === null) {
          throw new OptionError('invalidateOn targets', targets, 'expected { names?: [...], tags?: [...] }');
        }
        jobs = [];
        for (const n of targets.names ?? []) jobs.push(typeof n === 'string' ? this.invalidate(n) : this.invalidate(n.name, n.vary));
        if (targets.tags?.length) jobs.push(this.invalidateTag(...targets.tags));
      } catch (err) {
        this.cache.report(err);
        return;
      }
      const done = Promise.all(jobs).then(
        () => undefined,
        (err) => this.cache.report(err),
      );
      this.pending.add(done);
      void done.finally(() => this.pending.delete(done));
    };
    emitter.on(event, listener);
    return () => emitter.off(event, listener);
  }

  private readonly pending = new Set<Promise<unknown>>();

  /**
   * Makes `res.render(view, locals)` render this engine's templates in an Express app (views from the
   * engine's `views`; other view engines keep working), and lets `cachePage`/`cacheMiddleware` of
   * `fragcache/express` store pages in this engine's cache. `options`: see `ExpressViewOptions`.
   */
  express(app: object, options?: { extensions?: string[]; defaultEngine?: boolean }): this {
    // Loaded on demand: Express integration stays out of the core's load path.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    (require('./page/view') as typeof import('./page/view')).useEngine(this, app as import('./page/view').ExpressAppLike, options);
    return this;
  }

  /** Resolves when every invalidation started by {@link invalidateOn} so far has finished. */
  async settled(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  private distinctCaches(): FragmentCache[] {
    return [...new Set(this.caches.values())];
  }

  /** Hits, misses, stores and errors over all stores, overall and per fragment name. */
  stats(): Counters & { fragments: Record<string, Counters> } {
    const sum = { hits: 0, misses: 0, stores: 0, stale: 0, errors: 0, fenced: 0, fragments: {} as Record<string, Counters> };
    for (const c of this.distinctCaches()) {
      const s = c.stats();
      for (const k of COUNTERS) sum[k] += s[k];
      for (const [name, f] of Object.entries(s.fragments)) {
        const t = (sum.fragments[name] ??= { hits: 0, misses: 0, stores: 0, stale: 0, errors: 0, fenced: 0 });
        for (const k of COUNTERS) t[k] += f[k];
      }
    }
    return sum;
  }

  /** Waits for pending invalidations and closes every store. */
  async close(): Promise<void> {
    await this.watcher?.close();
    await this.settled();
    await Promise.all(this.distinctCaches().map((c) => c.close()));
  }
}

/** What an app event invalidates: fragment names (or one variant each) and tags. */
export interface InvalidationTargets {
  names?: (string | { name: string; vary: unknown[] })[];
  tags?: string[];
}

/** Creates an engine. See {@link EngineOptions}. */
export function createEngine(options: EngineOptions = {}): Engine {
  return new Engine(options);
}
