/**
 * One render of one page: the state that lets a synchronous `cache` tag work over asynchronous stores.
 *
 * A render is a series of synchronous passes. In a pass, a fragment whose key is not known yet renders
 * nothing (its body does not run) and is noted; between passes the noted keys are fetched in one batch
 * (`getMany`), with the tag versions that validate them; the next pass serves the hits and renders the
 * misses, which may in turn discover nested fragments. A body's output is stored only when it rendered
 * complete (no unknown fragment inside it). A store that answers in the same tick (memory) resolves keys
 * during the pass, so one pass is enough. Because each pass is plain synchronous Nunjucks, the tag works
 * everywhere a block tag can stand (macros, `set` captures, `call`, `filter`, includes in loops), where
 * Nunjucks' own async extensions drop output.
 * @module
 */
import nunjucks from 'nunjucks';
import type { StoreBudget } from './budget';
import { FragmentCache } from './cache';
import { parseTtl } from './duration';
import { flatten, tagKeysOf, tagPairs, type Entry } from './entry';
import { AsyncTemplateError, FragmentArgumentError, KeyError, describe } from './errors';
import { fence } from './fencing';
import { keyFromParts, namePart, userTag, variantTagFromParts, varyPart } from './keys';
import type { StoreWrite } from './store';
import type { FragcacheWarning } from './warnings';

/** What the parser knows about one `cache` block. */
export interface Block {
  name: string;
  /** The name's key part, computed once at compile time. */
  namePart?: string;
  /** Digest of the block's source, or null with `digest=false`. */
  digest: string | null;
  /** 1-based position of the tag. */
  line: number;
  column: number;
  /** Path of the template the tag is in, when known. */
  template?: string;
}

/** Options given in the tag (`tags=`, `when=`, `using=`, `stale=`). */
export interface TagOptions {
  tags?: unknown;
  when?: unknown;
  using?: unknown;
  stale?: unknown;
}

/** One fragment as `explain` reports it, in the order fragments appear in the output. */
export interface FragmentTrace {
  name: string;
  vary: unknown[];
  key: string;
  status: 'hit' | 'miss' | 'stale' | 'uncached';
  /** Time spent in this fragment (rendering the body on a miss, serving on a hit), ms. */
  ms: number;
  /** Characters of output. */
  size: number;
  /** Seconds until the entry expires; null for no expiry, undefined when not stored. */
  ttlLeft?: number | null;
  tags: string[];
  /** Nesting depth (0 = not inside another fragment). */
  depth: number;
}

/** Resolves the cache a fragment uses (`using=` alias or the fragments default). */
export type CacheResolver = (alias: string | undefined) => FragmentCache | undefined;

interface Spec {
  block: Block;
  cache: FragmentCache;
  key: string;
  ttlMs: number | null;
  staleMs: number;
  /** Key parts of the name and the vary tuple. */
  np: string;
  vp: string;
  /** Store keys of the fragment's own tags (name, variant, user tags), computed when needed. */
  ownTags?: string[];
  userTags: string[];
  vary: unknown[];
}

type Resolution =
  | { kind: 'hit'; entry: Entry; stale?: boolean; fresh?: boolean }
  | { kind: 'miss'; store: boolean };

interface Frame {
  cache: FragmentCache;
  /** Tag key → version of everything rendered or served inside this fragment. */
  deps: Map<string, string>;
  /** False when a fragment inside was unknown in this pass: the output is provisional, another pass follows. */
  complete: boolean;
  /** True when something inside cannot be tracked (rendered without tags, or from another store): do not store. */
  noStore: boolean;
  /** Length of {@link RenderSession.done} when the fragment opened: the fragments that completed before it. */
  mark: number;
  /** {@link RenderSession.valueDepth} when it opened. */
  vd: number;
  /** How long its entry would live (TTL + stale), ms; `null`: no expiry; 0 for an uncached fragment. */
  lifeMs: number | null;
}

/**
 * A fragment that completed in this pass (served, rendered, or rendered uncached), with what its output depends on.
 * Its output may reach a cached body that opens later (see {@link RenderSession.tieEarlier}).
 */
interface Done {
  /** The output as the tag returned it. */
  out: string;
  /** Its forms, computed on first use (see {@link mayContain}). */
  forms?: Forms;
  cache: FragmentCache;
  /** Tag pairs of everything in it. */
  tags: readonly string[] | undefined;
  /** For an uncached fragment: its own tags, whose versions may still have to be read. */
  own?: Spec;
  /** Something inside it cannot be tracked. */
  noStore?: boolean;
}

/** Most earlier fragments one body may be tied to by {@link RenderSession.tieEarlier}; past it, the body is not stored. */
const MAX_TIED = 256;

const escapeHtml = (nunjucks.lib as unknown as { escape(s: string): string }).escape;

/** The forms in which a fragment's output may appear in a body: as it is, HTML-escaped, trimmed (computed once). */
interface Forms {
  raw: string;
  esc: string | undefined;
  trimmed: string | undefined;
  trimmedEsc: string | undefined;
  /** Length of the shortest form: a body shorter than it cannot hold it. */
  min: number;
}

function formsOf(o: string): Forms {
  const e = escapeHtml(o);
  const t = o.trim();
  const te = t === o ? undefined : escapeHtml(t);
  return { raw: o, esc: e === o ? undefined : e, trimmed: t === o ? undefined : t, trimmedEsc: te === t ? undefined : te, min: t.length };
}

/**
 * Whether output with forms `f` may be part of `out`: as it is, HTML-escaped (a `set` capture is text, escaped when
 * output) or trimmed. (Empty output is in everything: the caller handles it.)
 */
function mayContain(out: string, f: Forms): boolean {
  if (f.min > out.length) return false;
  return out.includes(f.raw) || (f.esc !== undefined && out.includes(f.esc)) || (f.trimmed !== undefined && out.includes(f.trimmed)) || (f.trimmedEsc !== undefined && out.includes(f.trimmedEsc));
}

const SafeString = nunjucks.runtime.SafeString;

/**
 * The error of a fragment that failed in a concurrent render this one waited for (single-flight shares it).
 * Thrown outside any template, so it names the fragment and its line itself.
 */
export class SharedFailure extends Error {
  readonly template: string | undefined;
  readonly line: number;
  readonly column: number;
  constructor(cause: unknown, block: Block) {
    super(`cache "${block.name}": ${String((cause as Error)?.message ?? cause).replace(/^[\s\S]*\n\s*/, '')} (the same fragment failed in a concurrent render)`, { cause });
    this.name = 'Error';
    this.template = block.template;
    this.line = block.line;
    this.column = block.column;
  }
}

/** One frozen `{ name }` per fragment name, shared by all its entries (names are template literals: few). */
/**
 * A short readable form of vary values whose key part is a hash (long values, spaces, non-ASCII), stored with the
 * entry so that the CLI can show which variant it is: each value as JSON, cut to 40 characters.
 */
function varyPreview(vary: readonly unknown[]): string {
  return vary
    .map((v) => {
      let s: string;
      try {
        s = v instanceof Date ? v.toISOString() : (JSON.stringify(v) ?? String(v));
      } catch {
        s = String(v);
      }
      return s.length > 40 ? `${s.slice(0, 39)}…` : s;
    })
    .join(', ');
}

const metas = new Map<string, Readonly<Record<string, unknown>>>();
function metaOf(name: string): Readonly<Record<string, unknown>> {
  let m = metas.get(name);
  if (!m) metas.set(name, (m = Object.freeze({ name })));
  return m;
}

let current: RenderSession | undefined;

/** The session of the pass running now, if any. Passes are synchronous, so one at a time. */
export function currentSession(): RenderSession | undefined {
  return current;
}

/**
 * Runs a block body and checks it finished in this tick: with an async filter inside, Nunjucks returns a
 * partial buffer and calls back later, which would silently store and show truncated output.
 */
export function renderBody(block: Block, body: (cb?: (err: unknown, out: string) => void) => string): string {
  let done = false;
  let error: unknown;
  let out = '';
  const late: { error?: unknown } = {};
  body((err, res) => {
    if (done) {
      if (err) late.error = err; // an error Nunjucks reports a tick later (see AsyncTemplateError.late)
      return;
    }
    done = true;
    error = err;
    out = res;
  });
  if (!done) {
    done = true;
    const e = new AsyncTemplateError(`cache "${block.name}" (line ${block.line}): its body uses an asynchronous filter or extension; fragcache renders synchronously so that no output is lost. Make it synchronous, or compute the value before rendering.`);
    e.late = late;
    throw e;
  }
  if (error) throw error;
  return out;
}

const MARKER = /<fragcache-fragment data-fragcache="1"[^>]*>|<\/fragcache-fragment>/g;
const attr = (s: string) => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Wraps a fragment's output in the debug marker: name, hit/miss/stale/uncached and age in seconds. */
export function annotate(name: string, status: FragmentTrace['status'], created: number, html: string): string {
  const age = Math.max(0, Math.round((Date.now() - created) / 1000));
  return `<fragcache-fragment data-fragcache="1" data-name="${attr(name)}" data-status="${status}" data-age="${age}">${html}</fragcache-fragment>`;
}

/** Removes debug markers, so what an annotated render stores is what a normal render would have stored. */
export function unannotate(html: string): string {
  return html.replace(MARKER, '');
}

/** Raises a render-time argument error at the tag's position (Nunjucks adds the template name). */
function argError(block: Block, message: string): Error {
  const cause = new FragmentArgumentError(`cache "${block.name}": ${message}`);
  const err = new nunjucks.lib.TemplateError(cause as unknown as string, block.line, block.column);
  return err;
}

/** State of one render across its passes. */
export class RenderSession {
  private readonly resolved = new Map<string, Resolution>();
  private readonly versions = new Map<string, string>();
  private readonly wanted = new Map<string, Spec>();
  private readonly stack: Frame[] = [];
  /** Fragments completed in the current pass whose output was kept in a value, in order (see {@link tieEarlier}). */
  private readonly done: Done[] = [];
  /**
   * How many constructs whose output becomes a value (a macro or `call` body, a `set` capture or filter block,
   * `super()`) are being evaluated now; the extension marks their start and end.
   */
  private valueDepth = 0;
  /** Tag versions of uncached fragments' own tags, to read before the next pass (remote stores). */
  private readonly wantedTags = new Map<FragmentCache, Map<string, number | null>>();
  /** Tag versions that could not be read (store down): fragments depending on them are not stored. */
  private readonly unreadableTags = new Set<string>();
  /** Nesting depth of fragments being rendered (cached or not), for `explain`. */
  private depth = 0;
  private readonly writes = new Map<FragmentCache, StoreWrite[]>();
  private readonly claims = new Map<string, FragmentCache>();
  private readonly writtenKeys = new Set<string>();
  /** What this render wrote to same-tick stores at once: taken back if the render fails (see {@link fail}). */
  private readonly syncWritten = new Map<string, FragmentCache>();
  /** For explain: the fragments traced inside each fragment this render produced (listed again when later passes serve it). */
  private readonly freshTraces = new Map<string, { pass: number; traces: FragmentTrace[] }>();
  /** Passes started by this session (for {@link freshTraces}). */
  private passCount = 0;
  /** Fragments of the current pass, when tracing. */
  trace: FragmentTrace[] | undefined;
  private tracing: boolean;
  /** Wrap each fragment's output in a `<fragcache-fragment>` marker (the CLI's debug view); stored bodies stay clean. */
  private readonly annotating: boolean;

  /** Longest wait for a fragment another render in this process is producing, in ms. */
  private readonly waitMs: number;

  /** Cross-process lock of a missed fragment on a shared store: its lifetime, and how long others wait for it (ms). */
  private readonly lockMs: number;
  private readonly lockWaitMs: number;
  /** Cross-process locks this render holds: key → cache and token. */
  private readonly locks = new Map<string, { cache: FragmentCache; token: string }>();
  /** Expired entries still within `stale=`, by key: served when another process is refreshing them. */
  private readonly staleFound = new Map<string, Entry>();
  /** XFetch β (0: off): how eagerly a hit close to expiry is refreshed early by one renderer. */
  private readonly beta: number;
  /** Share of hits sampled for `verify` (0: off), and the hits sampled in this render (key → what was served). */
  private readonly verifyRate: number;
  sampled: Map<string, { cache: FragmentCache; entry: Entry; block: Block }> | undefined;
  /** For the `verify` re-render: the cache each fragment really uses instead of its own (a shadow). */
  private readonly redirect: ((cache: FragmentCache) => FragmentCache) | undefined;
  /** Local epoch ms at which this render started (again at each {@link reset}: the implicit session is reused). */
  private started = Date.now();
  /** Local epoch ms before which the render's data was not loaded, when known (see `fencing.ts`). */
  private readonly since: number | undefined;
  /** Without `since`: how long output of a tag invalidated just before the render may live, ms. */
  private readonly sinceWindow: number;

  /** False only in the specs that prove the fencing is what keeps old output out. */
  private readonly fencing: boolean;

  /** Where warnings about the templates go (a fragment that is never stored, and why). */
  private readonly onWarning: ((w: FragcacheWarning) => void) | undefined;

  /** The request's store-time budget (`requestBudget`), shared with the page cache around it; none: unbounded. */
  private readonly budget: StoreBudget | undefined;

  constructor(
    private readonly resolveCache: CacheResolver,
    options: {
      trace?: boolean;
      annotate?: boolean;
      waitMs?: number;
      lockMs?: number;
      lockWaitMs?: number;
      earlyRefresh?: number;
      since?: number;
      unknownSinceWindow?: number;
      fencing?: boolean;
      budget?: StoreBudget;
      onWarning?: (w: FragcacheWarning) => void;
      verify?: number;
      redirect?: (cache: FragmentCache) => FragmentCache;
    } = {},
  ) {
    this.since = options.since;
    this.sinceWindow = options.unknownSinceWindow ?? 1000;
    this.fencing = options.fencing ?? true;
    this.budget = options.budget;
    this.onWarning = options.onWarning;
    this.waitMs = options.waitMs ?? 5000;
    this.beta = options.earlyRefresh ?? 0;
    this.lockMs = options.lockMs ?? 5000;
    this.lockWaitMs = options.lockWaitMs ?? 3000;
    this.tracing = options.trace ?? false;
    this.annotating = options.annotate ?? false;
    this.verifyRate = options.verify ?? 0;
    this.redirect = options.redirect;
  }

  /** Set for a render's last allowed pass: unknown keys then render uncached instead of waiting for a batch. */
  lastPass = false;

  /** True when the last pass met fragments whose keys must be fetched first. */
  get incomplete(): boolean {
    return this.wanted.size > 0 || this.wantedTags.size > 0;
  }

  /**
   * True when this render's data may predate an invalidation of one of `entry`'s tags (by the rule of `write`): then
   * its own output of that fragment may be older than the entry, and a difference says nothing (`verify`).
   */
  dataPredates(entry: Entry, cache: FragmentCache): boolean {
    const f = fence(entry.tags, this.since, this.started, cache.clock, this.sinceWindow);
    return !f.store || f.expiresBy !== undefined;
  }

  /** Forgets everything, for reuse by another render (the extension keeps one for plain `env.render()`). */
  reset(): void {
    this.started = Date.now();
    this.resolved.clear();
    this.versions.clear();
    this.wanted.clear();
    this.writes.clear();
    this.writtenKeys.clear();
    this.syncWritten.clear();
    this.freshTraces.clear();
    this.done.length = 0;
    this.wantedTags.clear();
    this.unreadableTags.clear();
    this.abandon();
  }

  /** Runs one synchronous pass with this session current. */
  pass<T>(fn: () => T): T {
    const previous = current;
    current = this;
    this.passCount++;
    this.wanted.clear();
    this.done.length = 0;
    this.valueDepth = 0;
    this.trace = this.tracing ? [] : undefined;
    try {
      return fn();
    } finally {
      current = previous;
      this.stack.length = 0;
    }
  }

  /** Evaluates a tag's arguments into a spec; throws a template error on bad values. */
  private spec(block: Block, ttl: unknown, vary: unknown[], opts: TagOptions): Spec | undefined {
    const t = parseTtl(ttl);
    if ('error' in t) throw argError(block, `${t.error}, got ${describe(ttl)}`);
    let staleMs = 0;
    if (opts.stale !== undefined) {
      const s = parseTtl(opts.stale);
      if ('error' in s || s.ms === null) throw argError(block, `stale must be seconds or a duration, got ${describe(opts.stale)}`);
      staleMs = s.ms;
    }
    if (opts.using !== undefined && typeof opts.using !== 'string') {
      throw argError(block, `using must be a store alias (a string), got ${describe(opts.using)}`);
    }
    const found = this.resolveCache(opts.using as string | undefined);
    if (!found) throw argError(block, `unknown store alias ${describe(opts.using)} in using=`);
    const cache = this.redirect ? this.redirect(found) : found;
    const tags = opts.tags;
    if (tags !== undefined && (!Array.isArray(tags) || !tags.every((x) => typeof x === 'string' && x.length > 0))) {
      throw argError(block, `tags must be a list of non-empty strings, got ${describe(tags)}`);
    }
    let vp: string;
    try {
      vp = varyPart(vary);
    } catch (err) {
      if (err instanceof KeyError) throw argError(block, err.message);
      throw err;
    }
    const np = block.namePart ?? namePart(block.name);
    const key = keyFromParts(cache.base, np, block.digest, vp);
    return { block, cache, key, ttlMs: t.ms, staleMs, np, vp, userTags: (tags as string[] | undefined) ?? [], vary };
  }

  /** Store keys of a fragment's own tags (name, variant, user tags); only needed to write or to batch-validate. */
  private ownTags(spec: Spec): string[] {
    if (!spec.ownTags) {
      const c = spec.cache;
      spec.ownTags = [c.nameTagKey(spec.np), c.tagKey(variantTagFromParts(spec.np, spec.vp))];
      for (const t of spec.userTags) spec.ownTags.push(c.tagKey(userTag(t)));
    }
    return spec.ownTags;
  }

  /** The resolver this session was made with (a session serves only its own engine's tags). */
  get resolver(): CacheResolver {
    return this.resolveCache;
  }

  /** The tag's work: serve a hit, render a miss, or note an unknown key. */
  fragment(block: Block, ttl: unknown, vary: unknown[], opts: TagOptions, body: () => string): unknown {
    // Arguments are checked even when the fragment is not cached, so a bad one fails for every user alike.
    const spec = this.spec(block, ttl, vary, opts)!;
    if (('when' in opts && !opts.when) || spec.ttlMs === 0) return this.uncached(spec, body);
    const started = this.trace ? performance.now() : 0;
    const r = this.lookup(spec);
    if (!r) {
      for (const f of this.stack) f.complete = false;
      this.wanted.set(spec.key, spec);
      return '';
    }
    const depth = this.depth;
    // Traced in the order fragments open, so nested ones follow their parent.
    const traced = this.trace ? this.traceOpen(spec, depth) : undefined;
    if (r.kind === 'hit') {
      // verify: a share of stored hits is re-rendered after the response and compared (see lib/verify.ts).
      if (this.verifyRate && !r.fresh && !r.stale && Math.random() < this.verifyRate) (this.sampled ??= new Map()).set(spec.key, { cache: spec.cache, entry: r.entry, block });
      this.inherit(spec.cache, r.entry.tags);
      if (this.inValue()) this.done.push({ out: r.entry.body, cache: spec.cache, tags: r.entry.tags });
      if (traced) {
        // Rendered by this render in an earlier pass: a miss, with what was rendered inside it then. Rendered
        // earlier in this same pass (the fragment repeats): served from that, a hit, as on a same-tick store.
        const fresh = r.fresh ? this.freshTraces.get(spec.key) : undefined;
        const earlier = fresh !== undefined && fresh.pass < this.passCount;
        this.traceClose(traced, earlier ? 'miss' : r.stale ? 'stale' : 'hit', started, r.entry);
        if (earlier) for (const t of fresh.traces) this.trace!.push({ ...t, depth: depth + t.depth });
      }
      return new SafeString(this.annotating ? annotate(block.name, r.fresh ? 'miss' : r.stale ? 'stale' : 'hit', r.entry.created, r.entry.body) : r.entry.body);
    }
    const frame: Frame = { cache: spec.cache, deps: new Map(), complete: true, noStore: !r.store, mark: this.done.length, vd: this.valueDepth, lifeMs: spec.ttlMs === null ? null : spec.ttlMs + spec.staleMs };
    // Values computed earlier in this pass (a `set` capture, a macro's result) may hold the empty output of a
    // fragment that was still unknown: then this body's output is provisional too.
    const tainted = this.wanted.size > 0;
    this.stack.push(frame);
    this.depth++;
    const renderStart = performance.now();
    let out: string;
    try {
      out = renderBody(block, body);
    } catch (err) {
      // Waiters for this fragment get this error; claims of fragments that did not fail are released later.
      this.releaseClaim(spec.key, { error: err });
      throw err;
    } finally {
      this.stack.pop();
      this.depth--;
    }
    const cost = performance.now() - renderStart;
    const parent = this.stack[this.stack.length - 1];
    if (!frame.complete || tainted) {
      for (const f of this.stack) f.complete = false;
      return new SafeString(this.annotating ? annotate(block.name, 'miss', Date.now(), out) : out);
    }
    // Output of fragments that completed before this body began (`super()`, `caller()`, a `set` capture) may be in it.
    this.tieEarlier(frame, out, block);
    if (!frame.complete) {
      for (const f of this.stack) f.complete = false;
      return new SafeString(this.annotating ? annotate(block.name, 'miss', Date.now(), out) : out);
    }
    if (frame.noStore && parent) parent.noStore = true;
    const own = new Map<string, string>();
    if (!frame.noStore) for (const k of this.ownTags(spec)) own.set(k, this.versions.get(k)!);
    for (const [k, v] of frame.deps) own.set(k, v);
    const tags = tagPairs(own);
    this.inherit(spec.cache, tags);
    if (this.inValue()) this.done.push({ out: this.annotating ? annotate(block.name, 'miss', Date.now(), out) : out, cache: spec.cache, tags, noStore: frame.noStore });
    const now = Date.now();
    const entry: Entry = {
      body: flatten(this.annotating ? unannotate(out) : out),
      created: now,
      expires: spec.ttlMs === null ? null : now + spec.ttlMs,
      cost: Math.round(cost),
      tags,
      meta: spec.vp.charCodeAt(0) === 35 /* '#': hashed vary */ ? { name: block.name, vary: varyPreview(spec.vary) } : metaOf(block.name),
      // Declared now (a memory-store hit sets it): adding a property later costs every entry an extra array.
      checked: undefined,
    };
    if (spec.ttlMs !== null && spec.staleMs) entry.staleUntil = now + spec.ttlMs + spec.staleMs;
    // Later passes (and repeats of the same fragment in this page) reuse this output.
    this.resolved.set(spec.key, { kind: 'hit', entry, fresh: true });
    // Output that cannot be tracked (no tag versions) is neither stored nor handed to waiters.
    if (frame.noStore) this.releaseClaim(spec.key, {});
    else this.write(spec, entry);
    if (traced) {
      this.traceClose(traced, 'miss', started, entry);
      const at = this.trace!.indexOf(traced);
      const traces = this.trace!.slice(at + 1).map((t) => ({ ...t, depth: t.depth - depth })); // depths relative to it
      this.freshTraces.set(spec.key, { pass: this.passCount, traces });
    }
    return new SafeString(this.annotating ? annotate(block.name, 'miss', now, out) : out);
  }

  /**
   * `when` false or ttl 0: the body renders every time. The fragment is still a dependency of the cached fragment
   * around it: its own tags (name, variant, `tags=`) and everything rendered inside it are inherited, so invalidating
   * it drops the fragment that contains its output.
   */
  private uncached(spec: Spec, body: () => string): unknown {
    const block = spec.block;
    const started = this.trace ? performance.now() : 0;
    const traced = this.trace ? { name: block.name, vary: spec.vary, key: '', status: 'uncached' as const, ms: 0, size: 0, tags: [], depth: this.depth } : undefined;
    if (traced) this.trace!.push(traced);
    // A frame of its own collects what renders inside it, for the fragment around it and for later ones (see tieEarlier).
    const frame: Frame = { cache: spec.cache, deps: new Map(), complete: true, noStore: false, mark: this.done.length, vd: this.valueDepth, lifeMs: 0 };
    this.stack.push(frame);
    this.depth++;
    let out: string;
    try {
      out = renderBody(block, body);
    } finally {
      this.stack.pop();
      this.depth--;
    }
    const parent = this.stack[this.stack.length - 1];
    if (parent) {
      if (!frame.complete) parent.complete = false;
      if (frame.noStore) parent.noStore = true;
      const deps = tagPairs(frame.deps);
      const own = this.ownPairs(spec, parent);
      if (parent.cache !== spec.cache) parent.noStore = true;
      else {
        for (let i = 0; i < deps.length; i += 2) parent.deps.set(deps[i], deps[i + 1]);
        if (own) for (let i = 0; i < own.length; i += 2) parent.deps.set(own[i], own[i + 1]);
      }
    }
    if (traced) Object.assign(traced, { ms: performance.now() - started, size: out.length });
    const html = this.annotating ? annotate(block.name, 'uncached', Date.now(), out) : out;
    if (this.inValue()) this.done.push({ out: html, cache: spec.cache, tags: tagPairs(frame.deps), own: spec, noStore: frame.noStore });
    return new SafeString(html);
  }

  /** The start and the end of a construct whose output becomes a value (see {@link valueDepth}). */
  enterValue(): void {
    this.valueDepth++;
  }
  leaveValue(): void {
    if (this.valueDepth > 0) this.valueDepth--;
  }

  /**
   * True when output completed now is kept in a value started inside the innermost open fragment (or outside any):
   * it may be printed later, elsewhere. Output printed in place goes into the fragment around it, which inherits it.
   */
  private inValue(): boolean {
    const top = this.stack[this.stack.length - 1];
    return this.valueDepth > (top ? top.vd : 0);
  }

  /**
   * Tag pairs (key, version) of a fragment's own tags, for the frame `into` that depends on it. On a same-tick store
   * they are read now; on another store a version not read yet is fetched before the next pass (the frame's output is
   * then provisional), and on the last pass the frame is not stored.
   */
  private ownPairs(spec: Spec, into: Frame): string[] | undefined {
    const sync = spec.cache.store.sync;
    const out: string[] = [];
    let missing = false;
    for (const k of this.ownTags(spec)) {
      let v = this.versions.get(k);
      if (v === undefined && sync) this.versions.set(k, (v = spec.cache.tagVersionSync(k)));
      if (v !== undefined) out.push(k, v);
      else if (this.lastPass || this.unreadableTags.has(k)) {
        into.noStore = true;
        missing = true;
      } else {
        missing = true;
        let set = this.wantedTags.get(spec.cache);
        if (!set) this.wantedTags.set(spec.cache, (set = new Map()));
        // A record created for it lives as long as the longest entry around that will carry it (traffic creates one
        // per vary value: none may be permanent unless such an entry is).
        let life: number | null = set.get(k) ?? 0;
        for (const f of this.stack) if (life !== null) life = f.lifeMs === null ? null : Math.max(life, f.lifeMs);
        set.set(k, life);
        for (const f of this.stack) f.complete = false;
        into.complete = false;
      }
    }
    return missing ? undefined : out;
  }

  /**
   * Ties a cached body to the fragments that completed in this pass before it began and whose output may be in it.
   * Nunjucks evaluates some content ahead of where it is output: `super()` before the block body, a `set` capture or a
   * macro's or `caller()`'s result before the body that prints it. Those fragments did not render inside this frame,
   * so they were not inherited. Rule: every such fragment that completed inside a value (see {@link inValue}) and whose
   * output occurs in this body's output (as it is, HTML-escaped or trimmed; empty output always) is a dependency. Output that reaches the body transformed otherwise
   * (`| upper`, `| truncate`…) is not recognised: see docs/russian-doll.md.
   */
  private tieEarlier(frame: Frame, out: string, block: Block): void {
    let tied = 0;
    for (let i = 0; i < frame.mark; i++) {
      const d = this.done[i];
      // Empty output may stand anywhere (it is tied, but costs nothing to find and does not count against the cap).
      const f = (d.forms ??= formsOf(d.out));
      const empty = f.min === 0;
      if (!empty && !mayContain(out, f)) continue;
      if (!empty && ++tied > MAX_TIED) {
        frame.noStore = true; // bounded work and entry size: rendered every time rather than tied to hundreds
        this.notStored(block, `its output holds the output of more than ${MAX_TIED} fragments that completed before it began (in a capture, a macro or caller() result, super()), and is not tied to that many: render those inside it, or cache them without this one around them`);
        return;
      }
      if (d.cache !== frame.cache) {
        frame.noStore = true;
        this.notStored(block, 'its output holds the output of a fragment from another store (using=), that completed before it began: an invalidation there could not reach this entry');
        continue;
      }
      if (d.noStore) frame.noStore = true;
      const tags = d.tags;
      if (tags) for (let j = 0; j < tags.length; j += 2) frame.deps.set(tags[j], tags[j + 1]);
      if (d.own) {
        const own = this.ownPairs(d.own, frame);
        if (own) for (let j = 0; j < own.length; j += 2) frame.deps.set(own[j], own[j + 1]);
      }
    }
  }

  private traceOpen(spec: Spec, depth: number): FragmentTrace {
    const t: FragmentTrace = { name: spec.block.name, vary: spec.vary, key: spec.key, status: 'miss', ms: 0, size: 0, tags: spec.userTags, depth };
    this.trace!.push(t);
    return t;
  }

  private traceClose(t: FragmentTrace, status: FragmentTrace['status'], started: number, entry: Entry): void {
    t.status = status;
    t.ms = performance.now() - started;
    t.size = entry.body.length;
    t.ttlLeft = entry.expires === null ? null : Math.max(0, Math.round((entry.expires - Date.now()) / 1000));
  }

  /** Adds a served or rendered fragment's tags to the fragment that contains it. */
  private inherit(cache: FragmentCache, tags: readonly string[] | undefined): void {
    const parent = this.stack[this.stack.length - 1];
    if (!parent) return;
    // Tags of another store cannot be checked against the parent's store: such a parent is not stored.
    if (parent.cache !== cache) parent.noStore = true;
    else if (tags) for (let i = 0; i < tags.length; i += 2) parent.deps.set(tags[i], tags[i + 1]);
  }

  /** Resolution of a spec's key, resolving synchronously on a same-tick store; undefined when unknown yet. */
  private lookup(spec: Spec): Resolution | undefined {
    const sync = spec.cache.store.sync;
    if (sync) {
      // Same-tick store: ask it every time (what this render wrote is already in it), no memo needed.
      const entry = sync.get(spec.key);
      let r: Resolution;
      // (Early refresh, when due, makes this render the one that refreshes it: same-tick renders never overlap.)
      if (entry && this.valid(entry, spec.cache) && !(this.beta && this.refreshNow(entry, Date.now()))) r = { kind: 'hit', entry };
      else {
        // Read (or create) the own tag versions before the body renders, so the entry is stamped with them.
        for (const k of this.ownTags(spec)) if (!this.versions.has(k)) this.versions.set(k, spec.cache.tagVersionSync(k));
        r = { kind: 'miss', store: true };
      }
      this.count(spec, r);
      return r;
    }
    const known = this.resolved.get(spec.key);
    if (known) return known;
    if (!this.lastPass) return undefined;
    // Keys that keep changing between passes (vary on a clock, say): render them, store nothing.
    const r: Resolution = { kind: 'miss', store: false };
    this.record(spec, r);
    return r;
  }

  /**
   * XFetch (probabilistic early refresh, β = `earlyRefresh`): true, with a probability that grows as expiry nears
   * and with the cost of the body, when this render should refresh a still-valid entry now.
   */
  private refreshNow(entry: Entry, now: number): boolean {
    return this.beta > 0 && entry.expires !== null && !!entry.cost && now - entry.cost * this.beta * Math.log(Math.random()) >= entry.expires;
  }

  /** Unexpired and stamped with the current version of every tag. */
  private valid(entry: Entry, cache: FragmentCache): boolean {
    if (entry.expires !== null && entry.expires <= Date.now()) return false;
    const tags = entry.tags;
    if (!tags) return true;
    const sync = cache.store.sync;
    const generation = sync?.generation?.();
    if (generation !== undefined && entry.checked === generation) return true; // no tag changed since the last check
    for (let i = 0; i < tags.length; i += 2) {
      const k = tags[i];
      let v = this.versions.get(k);
      if (v === undefined && sync) {
        // Dependency tags are read, never created: a missing version means the entry is invalid.
        v = sync.get(k)?.body;
        if (v !== undefined) this.versions.set(k, v);
      }
      if (v !== tags[i + 1]) return false;
    }
    if (generation !== undefined) entry.checked = generation;
    return true;
  }

  private record(spec: Spec, r: Resolution): void {
    this.resolved.set(spec.key, r);
    this.count(spec, r);
  }

  /** Stats and the hit/miss event of a resolution. */
  private count(spec: Spec, r: Resolution): void {
    const name = spec.block.name;
    const kind = r.kind === 'hit' ? 'hits' : 'misses';
    spec.cache.count(name, kind);
    const ev = r.kind === 'hit' ? 'hit' : 'miss';
    const events = spec.cache.events;
    if (events.listenerCount(ev)) events.emit(ev, { name, key: spec.key, age: r.kind === 'hit' ? Date.now() - r.entry.created : undefined });
  }

  private write(spec: Spec, entry: Entry): void {
    if (this.writtenKeys.has(spec.key)) return;
    this.writtenKeys.add(spec.key);
    let ttlMs = spec.ttlMs === null ? null : spec.ttlMs + spec.staleMs;
    const cache = spec.cache;
    if (this.fencing) {
      // Checked only when writing: a hit costs nothing. The output is shown either way.
      const f = fence(entry.tags, this.since, this.started, cache.clock, this.sinceWindow);
      const left = f.store && f.expiresBy !== undefined ? f.expiresBy - entry.created : Infinity;
      if (!f.store || left < 1) {
        this.fenced(spec);
        return;
      }
      if (left !== Infinity && (ttlMs === null || left < ttlMs)) {
        ttlMs = Math.ceil(left);
        entry.expires = entry.created + ttlMs;
        entry.staleUntil = undefined; // an old copy must not outlive the cap either
      }
    }
    if (cache.store.sync) {
      cache.store.sync.set(spec.key, entry, ttlMs);
      this.syncWritten.set(spec.key, cache);
      this.stored(cache, spec.block.name, spec.key);
    } else {
      let list = this.writes.get(cache);
      if (!list) this.writes.set(cache, (list = []));
      list.push({ key: spec.key, entry, ttlMs });
    }
    this.releaseClaim(spec.key, { entry });
  }

  /** Output whose data predates an invalidation of one of its tags: not stored, not handed to waiters. */
  private fenced(spec: Spec): void {
    const { cache, block } = spec;
    cache.count(block.name, 'fenced');
    if (cache.events.listenerCount('fenced')) cache.events.emit('fenced', { name: block.name, key: spec.key });
    this.releaseClaim(spec.key, {});
  }

  /** Counts a write that happened, and tells `store` listeners. */
  private stored(cache: FragmentCache, name: string, key: string): void {
    cache.count(name, 'stores');
    if (cache.events.listenerCount('store')) cache.events.emit('store', { name, key });
  }

  private release(key: string, entry: Entry): void {
    this.releaseClaim(key, { entry });
  }

  /** Gives a claimed fragment to the renders waiting for it: its entry, its error, or nothing (they render it). */
  private releaseClaim(key: string, outcome: { entry?: Entry; error?: unknown }): void {
    const cache = this.claims.get(key);
    if (cache) {
      this.claims.delete(key);
      cache.release(key, outcome);
    }
  }

  /** Fetches every key the last pass noted (one batch per store), with the tag versions that validate them. */
  async resolveWanted(): Promise<void> {
    await this.resolveWantedTags();
    const byCache = new Map<FragmentCache, Spec[]>();
    for (const spec of this.wanted.values()) {
      let list = byCache.get(spec.cache);
      if (!list) byCache.set(spec.cache, (list = []));
      list.push(spec);
    }
    this.wanted.clear();
    // Let every store's batch finish before failing, so no batch takes claims after the render gave up.
    const results = await Promise.allSettled([...byCache].map(([cache, specs]) => this.resolveBatch(cache, specs)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Reads (or creates) the tag versions uncached fragments' own tags need (see {@link ownPairs}). */
  private async resolveWantedTags(): Promise<void> {
    const wanted = [...this.wantedTags];
    this.wantedTags.clear();
    await Promise.all(
      wanted.map(async ([cache, set]) => {
        const keys = [...set.keys()].filter((k) => !this.versions.has(k));
        if (!keys.length) return;
        let ttl: number | null = 0;
        for (const k of keys) if (ttl !== null) ttl = set.get(k) === null ? null : Math.max(ttl, set.get(k)!);
        try {
          // (0: no cached fragment around will store it; a short life is then enough, and never permanent.)
          for (const [k, v] of await cache.tagVersions(keys, ttl === 0 ? 60_000 : ttl, this.budget)) this.versions.set(k, v);
        } catch (err) {
          cache.report(err);
          for (const k of keys) this.unreadableTags.add(k);
        }
      }),
    );
  }

  private async resolveBatch(cache: FragmentCache, specs: Spec[]): Promise<void> {
    const ownTags = [...new Set(specs.flatMap((s) => this.ownTags(s)))].filter((k) => !this.versions.has(k));
    const keys = specs.map((s) => s.key);
    const readAt = performance.now(); // monotonic: compared with when other renders released their claims
    // Round trip 1: the entries and the tag versions we already know we need.
    // (The offset to the store's clock is measured with the first batch, waited for no longer than a store call
    // may take, and refreshed now and then. Until it is known, what this render stores lives at most the window.)
    const clockWait = Math.max(0, Math.min(cache.guard.timeout, this.budget?.left() ?? Infinity));
    const [found] = await Promise.all([cache.readMany([...keys, ...ownTags], this.budget), cache.clock.ready(clockWait)]);
    const missingTags: string[] = [];
    ownTags.forEach((k, i) => {
      const e = found[keys.length + i];
      if (e) this.versions.set(k, e.body);
      else missingTags.push(k);
    });
    // Round trip 2 (only when entries carry tags of fragments nested in them): their dependency versions.
    const depTags = new Set<string>();
    for (let i = 0; i < keys.length; i++) {
      const tags = found[i]?.tags;
      if (tags) for (let j = 0; j < tags.length; j += 2) if (!this.versions.has(tags[j]) && !missingTags.includes(tags[j])) depTags.add(tags[j]);
    }
    if (depTags.size) {
      const deps = [...depTags];
      const got = await cache.readMany(deps, this.budget);
      deps.forEach((k, i) => got[i] && this.versions.set(k, got[i]!.body));
    }
    // Own tags never written (or evicted) get a fresh version before any body renders.
    let canStore = true;
    if (missingTags.length) {
      try {
        // Created records live as long as the longest entry of this batch that carries them (one per distinct
        // vary value is created by traffic: none may be permanent unless an entry is).
        let ttl: number | null = 0;
        for (const spec of specs) if (ttl !== null) ttl = spec.ttlMs === null ? null : Math.max(ttl, spec.ttlMs + spec.staleMs);
        for (const [k, v] of await cache.tagVersions(missingTags, ttl || null, this.budget)) this.versions.set(k, v);
      } catch (err) {
        cache.report(err);
        canStore = false;
      }
    }
    const misses: Spec[] = [];
    const now = Date.now();
    specs.forEach((spec, i) => {
      const entry = found[i];
      if (entry && this.valid(entry, cache)) {
        // XFetch (probabilistic early refresh): the closer to expiry and the costlier the body, the likelier one
        // render refreshes it now; it is then handled as a miss whose valid copy is served if another holds the lock.
        if (this.refreshNow(entry, now)) {
          this.staleFound.set(spec.key, entry);
          misses.push(spec);
        } else this.record(spec, { kind: 'hit', entry });
      }
      else {
        // Expired but within its stale= window, and no tag changed: may be served while someone refreshes it.
        if (entry?.staleUntil && entry.staleUntil > now && FragmentCache.tagsMatch(entry, this.versions)) this.staleFound.set(spec.key, entry);
        misses.push(spec);
      }
    });
    await this.claimMisses(misses, (spec) => canStore && this.ownTags(spec).every((k) => this.versions.has(k)), readAt);
  }

  /**
   * Single-flight: the first render that misses a key renders it; the others wait for its output (or its
   * error). A render never waits while it holds claims of its own (two renders could then wait on each
   * other forever, with fragments nested in opposite orders): it then renders the held key itself.
   * A wait lasts at most `waitMs`; after that the waiter renders the fragment itself.
   */
  private async claimMisses(misses: Spec[], canStore: (spec: Spec) => boolean, readAt: number): Promise<void> {
    let pending = misses;
    const gaveUp = new Set<Spec>();
    /** Specs whose recent outcome was already considered (and not usable). */
    const considered = new Set<Spec>();
    while (pending.length) {
      // Produced (or failed) in another render of this process since this one read the store? Then use it (or
      // fail with it) as a waiter would have. Checked again on every round, in the same synchronous stretch as
      // the claims below: another render may release a key while this one waits for something else.
      const recent = pending.filter((s) => !considered.has(s) && !s.cache.inflight.has(s.key) && s.cache.recentOutcome(s.key, readAt));
      if (recent.length) {
        const used = await Promise.all(
          recent.map(async (s) => {
            considered.add(s);
            const r = s.cache.recentOutcome(s.key, readAt);
            if (r?.error !== undefined) throw new SharedFailure(r.error, s.block);
            if (!r?.entry || !(await this.accepts(s, r.entry))) return false;
            this.record(s, { kind: 'hit', entry: r.entry });
            return true;
          }),
        );
        const done = new Set(recent.filter((_, i) => used[i]));
        pending = pending.filter((s) => !done.has(s));
        continue;
      }
      let held = pending.filter((s) => !gaveUp.has(s) && s.cache.inflight.has(s.key) && !this.claims.has(s.key));
      // A stale copy (stale=) is served at once while the other render refreshes it.
      const stale = held.filter((s) => this.staleFound.has(s.key));
      if (stale.length) {
        for (const s of stale) this.serveStale(s, this.staleFound.get(s.key)!);
        pending = pending.filter((s) => !stale.includes(s));
        held = held.filter((s) => !stale.includes(s));
      }
      if (held.length && this.claims.size === 0) {
        const outcomes = await Promise.all(held.map((s) => this.waitFor(s)));
        const done = new Set(held.filter((_, i) => outcomes[i] === 'hit'));
        held.forEach((s, i) => outcomes[i] === 'timeout' && gaveUp.add(s));
        pending = pending.filter((s) => !done.has(s));
        continue;
      }
      const mine: Spec[] = [];
      for (const spec of pending) {
        const c = this.claims.has(spec.key) ? undefined : spec.cache.claim(spec.key);
        if (c?.mine) this.claims.set(spec.key, spec.cache);
        if (c?.mine && canStore(spec) && spec.cache.store.shared && spec.cache.store.lock) mine.push(spec);
        else this.record(spec, { kind: 'miss', store: canStore(spec) });
      }
      if (mine.length) await this.lockMisses(mine);
      return;
    }
  }

  /** Warns that a fragment is rendered every time and never stored, and why (the engine says it once). */
  private notStored(block: Block, why: string): void {
    const where = `${block.template ?? '(template)'}:${block.line}:${block.column}`;
    this.onWarning?.({ kind: 'not-stored', message: `${where}: fragment "${block.name}" is rendered every time, never stored: ${why}.`, fragment: block.name, template: block.template, line: block.line, column: block.column });
  }

  /** Store key of the cross-process lock of a fragment. */
  private static lockKey(key: string): string {
    return `${key}#lock`;
  }

  /**
   * Cross-process single-flight on a shared store: `lock` (SET NX PX on Redis) per missed key. The winner
   * renders and stores; a loser serves the stale copy when it has one, else polls the store until the
   * winner's entry appears (reading the versions of the tags on it it lacks) or the winner's lock is gone
   * without one (then it renders the fragment at once), for at most `lockWaitMs`, then renders the fragment
   * itself. A store failure means no lock: the fragment renders (correct output beats saving work).
   */
  private async lockMisses(specs: Spec[]): Promise<void> {
    const tokens = await Promise.all(
      specs.map((s) =>
        s.cache.guard.run('lock', () => s.cache.store.lock!(RenderSession.lockKey(s.key), this.lockMs), undefined, this.budget).catch((err) => {
          s.cache.report(err);
          return null; // store down: render without a lock
        }),
      ),
    );
    let waiting: Spec[] = [];
    const won: Spec[] = [];
    specs.forEach((spec, i) => {
      const token = tokens[i];
      if (token) {
        this.locks.set(spec.key, { cache: spec.cache, token });
        won.push(spec);
      } else if (token === null) this.record(spec, { kind: 'miss', store: true });
      else if (this.staleFound.has(spec.key)) this.serveStale(spec, this.staleFound.get(spec.key)!);
      else waiting.push(spec);
    });
    // Double-check after winning: the previous owner may have stored it and let go since this render read.
    for (const [cache, list] of RenderSession.byCache(won)) {
      const got = await cache.readMany(list.map((s) => s.key), this.budget);
      await this.learnVersions(cache, got, this.budget);
      list.forEach((spec, i) => {
        const e = got[i];
        // (An early-refresh candidate reads its own old copy again: that one does not count.)
        if (e && e.created !== this.staleFound.get(spec.key)?.created && this.valid(e, cache)) {
          this.record(spec, { kind: 'hit', entry: e });
          this.release(spec.key, e);
        } else this.record(spec, { kind: 'miss', store: true });
      });
    }
    // Wait for the owner: poll its lock and the entry, with a short backoff (the owner's render is usually a few
    // ms). The lock is read before the entry, in one pipeline: a lock found gone means any entry is already written.
    // The polls are bounded by `lockWaitMs`, not by the request's store budget: a slow winner's render would
    // otherwise use that budget up in cheap polls, and every loser would render too (a stampede).
    const deadline = Date.now() + this.lockWaitMs;
    let delay = 1;
    while (waiting.length && Date.now() < deadline) {
      // The store is failing (circuit open): the winner cannot deliver through it, so do not wait for it.
      if (waiting.every((s) => s.cache.guard.isOpen)) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 1.5, 20, Math.max(1, this.lockWaitMs / 100));
      const still: Spec[] = [];
      for (const [cache, list] of RenderSession.byCache(waiting)) {
        const store = cache.store;
        const held = store.locked
          ? cache.guard.run('locked', () => store.locked!(list.map((s) => RenderSession.lockKey(s.key)))).catch((err) => (cache.report(err), undefined))
          : Promise.resolve(undefined);
        const [locked, got] = await Promise.all([held, cache.readMany(list.map((s) => s.key))]);
        // The owner's entry may carry tags of fragments nested in it, which this render has not read yet.
        await this.learnVersions(cache, got);
        list.forEach((spec, i) => {
          const e = got[i];
          if (e && this.valid(e, cache)) {
            this.record(spec, { kind: 'hit', entry: e });
            this.release(spec.key, e);
          } else if (locked && !locked[i]) {
            // Released without a usable entry (failed, not stored, or invalidated meanwhile): render it now.
            this.record(spec, { kind: 'miss', store: true });
          } else still.push(spec);
        });
      }
      waiting = still;
    }
    // The winner did not deliver in time (slow or crashed): render it here.
    for (const spec of waiting) this.record(spec, { kind: 'miss', store: true });
  }

  private static byCache(specs: readonly Spec[]): Map<FragmentCache, Spec[]> {
    const out = new Map<FragmentCache, Spec[]>();
    for (const s of specs) {
      const list = out.get(s.cache);
      if (list) list.push(s);
      else out.set(s.cache, [s]);
    }
    return out;
  }

  /** Reads the versions of tags carried by these entries that this render does not know yet (one round trip). */
  private async learnVersions(cache: FragmentCache, entries: readonly (Entry | undefined)[], budget?: StoreBudget): Promise<void> {
    const unknown = new Set<string>();
    for (const e of entries) {
      const tags = e?.tags;
      if (tags) for (let j = 0; j < tags.length; j += 2) if (!this.versions.has(tags[j])) unknown.add(tags[j]);
    }
    if (!unknown.size || cache.store.sync) return; // (a same-tick store is read during validation)
    const keys = [...unknown];
    const got = await cache.readMany(keys, budget);
    keys.forEach((k, i) => got[i] && this.versions.set(k, got[i]!.body));
  }

  /** Serves an expired entry within its stale= window (another process is refreshing it). */
  private serveStale(spec: Spec, entry: Entry): void {
    if (entry.expires === null || entry.expires > Date.now()) {
      // Not expired (an early-refresh candidate that someone else is refreshing): a plain hit.
      this.record(spec, { kind: 'hit', entry });
      this.release(spec.key, entry);
      return;
    }
    this.resolved.set(spec.key, { kind: 'hit', entry, stale: true });
    const name = spec.block.name;
    spec.cache.count(name, 'stale');
    const events = spec.cache.events;
    if (events.listenerCount('stale')) events.emit('stale', { name, key: spec.key, age: Date.now() - entry.created });
    this.release(spec.key, entry);
  }

  /** Releases this render's cross-process locks (after its writes, so waiters find the entry). */
  private async unlockAll(): Promise<void> {
    const held = [...this.locks];
    this.locks.clear();
    await RenderSession.unlock(held);
  }

  private static async unlock(held: readonly [string, { cache: FragmentCache; token: string }][]): Promise<void> {
    await Promise.all(
      held.map(([key, { cache, token }]) =>
        cache.guard.run('unlock', () => cache.store.unlock!(RenderSession.lockKey(key), token)).catch((err) => cache.report(err)),
      ),
    );
  }

  /**
   * Waits for another render's claim: 'hit' when it delivered output this render may use, 'released' when it
   * gave nothing usable (render it), 'timeout' after `waitMs` (render it, do not wait again).
   */
  private async waitFor(spec: Spec): Promise<'hit' | 'released' | 'timeout'> {
    const running = spec.cache.inflight.get(spec.key);
    if (!running) return 'released';
    let timer: NodeJS.Timeout | undefined;
    const TIMEOUT = Symbol('timeout');
    const timeout = new Promise<typeof TIMEOUT>((resolve) => {
      timer = setTimeout(resolve, this.waitMs, TIMEOUT);
      timer.unref?.();
    });
    let entry: Entry | undefined | typeof TIMEOUT;
    try {
      entry = await Promise.race([running.promise, timeout]);
    } catch (err) {
      throw new SharedFailure(err, spec.block); // the first render's error, said where it comes from
    } finally {
      clearTimeout(timer);
    }
    if (entry === TIMEOUT) return 'timeout';
    if (!entry || !(await this.accepts(spec, entry))) return 'released';
    this.record(spec, { kind: 'hit', entry });
    return 'hit';
  }

  /**
   * Whether output handed over by another render is valid for this one: it must carry this fragment's own tags,
   * stamped with the versions this render read (an invalidation may have resolved while the other render ran).
   */
  private async accepts(spec: Spec, entry: Entry): Promise<boolean> {
    const tags = tagKeysOf(entry);
    if (!this.ownTags(spec).every((k) => tags.includes(k))) return false;
    const missing = tags.filter((k) => !this.versions.has(k));
    if (missing.length) {
      const got = await spec.cache.readMany(missing, this.budget);
      missing.forEach((k, i) => got[i] && this.versions.set(k, got[i]!.body));
    }
    return this.valid(entry, spec.cache);
  }

  /**
   * Stores what this render produced (one batch per store), then releases its locks. Never throws: failures are
   * reported. Waits for the writes at most what is left of the request's store budget: past it, they finish in
   * the background (each under the per-call `timeout`) and the render returns without them.
   */
  async flush(): Promise<void> {
    const pending = [...this.writes];
    this.writes.clear();
    const locks = [...this.locks];
    this.locks.clear();
    const work = (async () => {
      await Promise.all(
        pending.map(async ([cache, writes]) => {
          if (await cache.writeMany(writes)) for (const w of writes) this.stored(cache, String(w.entry.meta?.name ?? ''), w.key);
        }),
      );
      await RenderSession.unlock(locks);
    })();
    if (!this.budget || (!locks.length && pending.every(([cache]) => cache.store.sync))) await work;
    else {
      // (Left to finish alone, a throwing `store` listener must not become an unhandled rejection.)
      work.catch((err) => process.emitWarning(`fragcache: a store listener threw: ${String((err as Error)?.message ?? err)}`, { code: 'FRAGCACHE_LISTENER' }));
      await this.budget.awaitWithin(work);
    }
    this.abandon();
  }

  /**
   * The render failed: nothing it produced stays stored. Fragments written at once to a same-tick store (the
   * memory store, SQLite) are deleted again; writes to other stores were only queued and are dropped.
   */
  fail(): void {
    for (const [key, cache] of this.syncWritten) cache.store.sync?.delete(key);
    this.syncWritten.clear();
    this.writes.clear();
    this.abandon();
  }

  /**
   * Releases the claims this render still holds, with nothing: their waiters render the fragments themselves.
   * (A fragment whose own body failed already passed its error to its waiters.)
   */
  abandon(): void {
    for (const [key, cache] of this.claims) cache.release(key, {});
    this.claims.clear();
    if (this.locks.size) void this.unlockAll(); // a failed render stores nothing; free its locks for others
    this.staleFound.clear();
  }
}

/**
 * For `env.render()` called directly (no engine render around it) with a same-tick store: one pass,
 * served and stored synchronously.
 */
export function implicitSession(resolveCache: CacheResolver): RenderSession {
  return new RenderSession(resolveCache);
}
