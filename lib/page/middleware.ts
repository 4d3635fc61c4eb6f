/**
 * Whole-page caching middleware for Express: capture of the response on a miss, replay on a hit.
 * @module
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Request } from 'express';
import { STORE_BUDGET, StoreBudget } from '../budget';
import { FragmentCache } from '../cache';
import { parseTtl, type Ttl } from '../duration';
import type { Engine } from '../engine';
import { OptionError, PageCacheError, StoreError } from '../errors';
import { encodeValue, hash } from '../keys';
import { createStore, type StoreSpec } from '../stores';
import { MemoryStore } from '../stores/memory';
import { normalPath, PageCache, type PageEntry, type PageMeta, type PageRequest, type PageTags } from './cache';
import { NOT_REPLAYED } from './check';
import { deltaSeconds, etagMatches, formatCacheControl, maxAge, parseCacheControl, parseVary, refusal, type Refusal } from './policy';
import { ENGINE_SETTING, REQUEST_START } from './view';

/** When the request started, as `engine.express(app)` stamps it (before any middleware loaded data), if known. */
function requestStart(res: ServerResponse): number | undefined {
  const t = (res as { locals?: Record<symbol, unknown> }).locals?.[REQUEST_START];
  return typeof t === 'number' ? t : undefined;
}

/**
 * The request's store budget (`requestBudget`): the one on `res.locals` when an earlier page middleware made it,
 * else a new one put there, so that the page look-up, the lock, the tags and the render share it.
 */
function storeBudget(res: ServerResponse, ms: number): StoreBudget {
  const locals = (res as { locals?: Record<symbol, unknown> }).locals;
  const b = locals?.[STORE_BUDGET];
  if (b instanceof StoreBudget) return b;
  const made = new StoreBudget(ms);
  if (locals) locals[STORE_BUDGET] = made;
  return made;
}

/** The request as the middleware reads it (an Express request). */
export interface PageReq extends IncomingMessage {
  originalUrl?: string;
  protocol?: string;
  host?: string;
  app?: { get(setting: string): unknown };
}

/** The response as the middleware uses it (an Express response). */
export interface PageRes extends ServerResponse {
  locals?: Record<string, unknown>;
}

/** Options shared by {@link cachePage} and {@link cacheMiddleware}. */
export interface PageCacheOptions {
  /**
   * Where pages go: a store spec (`"memory"`, a URL, a Keyv, a `Store`), a `FragmentCache`, or an `Engine`
   * (its `pages` store if it has one, else its default store). Default: the engine registered on the app with
   * `engine.express(app)`, else an in-process memory store of the app's own (apps never share pages unless
   * given the same store).
   */
  store?: StoreSpec | FragmentCache | Engine;
  /** Key prefix (Django's `key_prefix`): pages under different prefixes never see each other. Default `""`. */
  prefix?: string;
  /**
   * Extra values the page varies on, besides host, URL and `Vary` headers (e.g. `(req) => req.user?.id`).
   * Any value fragcache can key on (strings, numbers, arrays, plain objects); encoded without collisions.
   */
  key?: (req: Request) => unknown;
  /**
   * Tags of the page, known before the route runs: `engine.invalidateTag(tag)` (or {@link invalidatePageTag})
   * drops it. A route can add tags while it runs with `res.locals.cacheTags = [...]`.
   */
  tags?: readonly string[] | ((req: Request) => readonly string[]);
  /**
   * Store responses to requests that carry a `Cookie` header even when the response has no `Vary: Cookie`.
   * Only for pages that do not depend on cookies, or whose `key` covers what they read from cookies.
   * Default false.
   */
  allowCookies?: boolean;
  /**
   * Query parameters left out of the page key (names, or patterns such as `/^utm_/`): `?utm_source=x` then
   * serves and stores the same page as no query at all. Only for parameters the page never reads. Default none.
   */
  ignoreParams?: readonly (string | RegExp)[];
  /**
   * Longest wait, in ms, of a request that misses while the same page is being produced (by this process, or
   * by another one on a shared store with locks): it then looks again, and produces the page itself if it is
   * still missing (at once when the other producer lets go without storing it). Default 5000.
   */
  waitMs?: number;
}

/** Options of {@link cacheMiddleware}. */
export interface SiteCacheOptions extends PageCacheOptions {
  /** Seconds (or a duration string) a page is kept when the response sets no `max-age` (default 600). */
  ttl?: Ttl;
}

/** A page caching middleware, with the invalidation of the cache it uses. */
export interface PageMiddleware {
  (req: PageReq, res: PageRes, next: (err?: unknown) => void): void;
  /**
   * Drops every cached variant of a URL (a path with its query, or an absolute URL) from the cache(s) this
   * middleware uses: its `store`, or the engine's cache of each app it has served (give `app` to name one
   * before any request was served). Rejects if a store failed.
   */
  invalidatePage(url: string, app?: { get(setting: string): unknown }): Promise<void>;
  /** Closes the store this middleware made from a `store` spec (URL, Keyv, `Store`); nothing otherwise. */
  close(): Promise<void>;
}

let sharedMemory: FragmentCache | undefined;
/**
 * One process-wide memory cache, for apps that are meant to share pages: pass it as `store`. (Middlewares
 * without a store or engine use a memory cache of their app's own.)
 */
export function defaultPageCache(): FragmentCache {
  return (sharedMemory ??= new FragmentCache(createStore('memory')));
}

function isEngine(x: unknown): x is Engine {
  return typeof x === 'object' && x !== null && (x as Engine).caches instanceof Map && typeof (x as Engine).invalidateTag === 'function' && 'env' in x;
}

/**
 * The cache pages go to for a store option value / engine. A store spec gets a cache of its own, whose key
 * prefix is `prefix` when one is given (default `fc`, as every cache).
 */
export function pageCacheOf(target: StoreSpec | FragmentCache | Engine | undefined, option = 'store', prefix?: string): FragmentCache {
  if (target === undefined) return defaultPageCache();
  if (target instanceof FragmentCache) return target;
  if (isEngine(target)) return target.caches.get('pages') ?? target.cache;
  const options = prefix ? { prefix } : {};
  // Check the prefix (FragmentCache's rule: no ":") before a store (maybe a connection) is made for nothing.
  if (prefix) new FragmentCache(new MemoryStore({ maxBytes: 1 }), options);
  return new FragmentCache(createStore(target, {}, option), options);
}

/**
 * Every page cache a middleware of this process has used (weakly held): `invalidatePage(url)` and
 * `invalidatePageTag(tags)` without a target reach all of them.
 */
const inUse = new Set<WeakRef<PageCache>>();

function remember(pages: PageCache): void {
  inUse.add(new WeakRef(pages));
  if (inUse.size > 64) for (const ref of inUse) if (!ref.deref()) inUse.delete(ref);
}

/**
 * The distinct caches behind the page caches in use: every shared store a middleware was configured with (from
 * its creation), and the in-process caches that served pages. Rejects when there is none: resolving would
 * claim an invalidation that reached nothing.
 */
function caches(what: string): FragmentCache[] {
  const out = new Set<FragmentCache>();
  if (sharedMemory) out.add(sharedMemory);
  for (const ref of inUse) {
    const pages = ref.deref();
    if (pages && !pages.cache.closed) {
      if (pages.served || pages.cache.store.shared) out.add(pages.cache);
    } else inUse.delete(ref); // collected, or its cache (an engine's, say) was closed
  }
  if (!out.size) {
    throw new PageCacheError(`${what}: no page cache of this process can be reached (no middleware with a shared \`store\` exists, and none has served a page yet). Give the middleware its store (e.g. cachePage(ttl, { store: "redis://…" })) or pass the target: ${what.replace(/\(.*/, '')}(…, engine)`);
  }
  return [...out];
}

/** Runs `fn` on every cache; rejects (with the first error) if any failed, once all have finished. */
async function onEvery(list: readonly FragmentCache[], fn: (c: FragmentCache) => Promise<void>): Promise<void> {
  const results = await Promise.allSettled(list.map(fn));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

function ttlMsOf(ttl: unknown, option: string): number {
  const r = parseTtl(ttl);
  if ('error' in r || r.ms === null || r.ms < 1000) throw new OptionError(option, ttl, 'expected a page lifetime of at least 1 second (seconds or a duration like "15m")');
  return r.ms;
}

function checkOptions(o: PageCacheOptions): void {
  if (typeof o !== 'object' || o === null) throw new OptionError('options', o, 'expected an object');
  if (o.prefix !== undefined && typeof o.prefix !== 'string') throw new OptionError('prefix', o.prefix, 'expected a string');
  if (o.key !== undefined && typeof o.key !== 'function') throw new OptionError('key', o.key, 'expected a function of the request');
  if (o.tags !== undefined && typeof o.tags !== 'function' && !(Array.isArray(o.tags) && o.tags.every((t) => typeof t === 'string' && t))) {
    throw new OptionError('tags', o.tags, 'expected a list of non-empty strings or a function of the request');
  }
  if (o.allowCookies !== undefined && typeof o.allowCookies !== 'boolean') throw new OptionError('allowCookies', o.allowCookies, 'expected true or false');
  if (o.ignoreParams !== undefined && !(Array.isArray(o.ignoreParams) && o.ignoreParams.every((p) => (typeof p === 'string' && p) || p instanceof RegExp))) {
    throw new OptionError('ignoreParams', o.ignoreParams, 'expected a list of query parameter names or regular expressions');
  }
  if (o.waitMs !== undefined && !(Number.isSafeInteger(o.waitMs) && o.waitMs >= 0)) throw new OptionError('waitMs', o.waitMs, 'expected a whole number of milliseconds');
}

/** Replays a stored page: its headers, `Age`, `X-Cache: HIT`, `Cache-Status`; a 304 when `If-None-Match` matches. */
function serveHit(req: PageReq, res: PageRes, entry: PageEntry): void {
  const meta = entry.meta;
  const now = Date.now();
  res.statusCode = meta.status;
  for (const name in meta.headers) res.setHeader(name, meta.headers[name]);
  res.setHeader('Age', String(Math.max(0, Math.floor((now - entry.created) / 1000))));
  res.setHeader('X-Cache', 'HIT');
  const left = entry.expires === null ? undefined : Math.max(0, Math.floor((entry.expires - now) / 1000));
  res.setHeader('Cache-Status', left === undefined ? 'fragcache; hit' : `fragcache; hit; ttl=${left}`);
  if (etagMatches(req.headers['if-none-match'], meta.etag)) {
    res.statusCode = 304;
    for (const h of ['content-type', 'content-length', 'content-encoding']) res.removeHeader(h);
    res.end();
    return;
  }
  // The body is kept as latin1 (one char per byte): its length is its byte length, and writing it is a copy.
  res.setHeader('Content-Length', entry.body.length);
  if (req.method === 'HEAD') res.end();
  else res.end(entry.body, 'latin1');
}

function etagOf(body: Buffer): string {
  return `"${createHash('sha1').update(body).digest('base64url')}"`;
}

function toBuffer(chunk: unknown, encoding: unknown): Buffer | undefined {
  if (chunk === undefined || chunk === null) return Buffer.alloc(0);
  if (typeof chunk === 'string') return Buffer.from(chunk, (typeof encoding === 'string' ? encoding : 'utf8') as BufferEncoding);
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return undefined;
}

interface Capture {
  pages: PageCache;
  request: PageRequest;
  /** The page's tags as read before the route ran. */
  tags: PageTags;
  ttlMs: number;
  /** Page TTL wins over the response's `max-age` (cachePage); else `s-maxage`/`max-age`/`Expires` win over `ttlMs` (cacheMiddleware). */
  pageTtlWins: boolean;
  allowCookies: boolean;
  /** The route has a `key` option (the page may differ per user). */
  keyed: boolean;
  /** Called once the response is over and the page stored or not (releases the waiting requests). */
  done(): void;
}

/** What to do with a response once its body is known: store it (with its TTL, status and vary), or not. */
type Plan = { store: false } | { store: true; ttlMs: number; status: number; vary: string[]; headers: Record<string, string | string[]>; etag?: string };

type HeaderMap = Record<string, number | string | string[] | undefined>;

/** `Expires` as a freshness lifetime from now in ms: undefined when absent, null when invalid or past (stale at once). */
function expiresMs(value: unknown, now: number): number | null | undefined {
  if (value === undefined) return undefined;
  const t = typeof value === 'string' ? Date.parse(value) : NaN;
  return Number.isNaN(t) || t <= now ? null : t - now;
}

/**
 * Wraps `writeHead`, `write`, `end`, `flushHeaders` and `sendFile` of one response, and hooks the moment Node
 * serialises the headers. The store decision is taken there, on the headers exactly as they go out: after the
 * `writeHead` hooks of every middleware mounted before the cache (on-headers: sessions adding `Set-Cookie`,
 * auth adding `Cache-Control: private` or `Vary`) have run. A body sent in one piece with `end` is known then
 * (its ETag is set); one streamed with `write` / `flushHeaders` / `sendFile` is never stored and its headers are
 * left as the route set them. After an explicit `writeHead` the body is not known yet: the caching headers are
 * set, and the page is stored if the body then comes in one `end`.
 *
 * What is stored is the response as this layer produced it (its headers as the route and the middleware after
 * the cache set them, and its body), keyed by every `Vary` of the final response: a middleware mounted before
 * the cache runs again on every hit and adds its own headers (compression its encoding) again.
 */
function capture(req: PageReq, res: PageRes, c: Capture): void {
  const writeHead = res.writeHead;
  const write = res.write;
  const end = res.end;
  const flushHeaders = res.flushHeaders;
  let streamed = false;
  let inEnd = false;
  let rawHeaders = false;
  let endBody: Buffer | undefined;
  let plan: Plan | undefined;
  /** The headers as this layer set them (before the hooks of the middleware mounted before it). */
  let layer: HeaderMap | undefined;

  const decide = (): void => {
    const status = res.statusCode;
    const final = res.getHeaders() as HeaderMap;
    const cc = parseCacheControl(final['cache-control']);
    const vary = parseVary(final.vary);
    const facts = {
      method: 'GET', // a HEAD is decided as its GET (headers), but never stored: it has no body
      status: status === 304 ? 200 : status,
      authorization: req.headers.authorization !== undefined,
      cookie: req.headers.cookie !== undefined,
      allowCookies: c.allowCookies,
      cacheControl: cc,
      setCookie: final['set-cookie'] !== undefined,
      vary,
    };
    // Streamed (or a file): decided before anything else, and its headers are left as the route set them.
    const body = streamed || rawHeaders ? undefined : inEnd ? endBody : 'later';
    const now = Date.now();
    let why: Refusal | undefined = body === undefined ? 'streamed' : refusal(facts);
    // A shared cache's freshness: s-maxage, else max-age, else the route's own Expires (RFC 9111 §4.2.1).
    const shared = deltaSeconds(cc, 's-maxage') ?? undefined;
    const age = maxAge(cc);
    const routeExpires = expiresMs(final.expires, now);
    if (!why && shared === undefined && age === undefined && routeExpires === null) why = 'expires';
    // Our caching headers only on what is (or, for a HEAD or a 304, would be as a GET) stored: never on a 404 or
    // a 500 that a proxy could then keep.
    const headersOk = why === undefined && (status === 200 || status === 304);
    if (!why && req.method !== 'GET') why = 'method';
    if (!why && status !== 200) why = 'status';
    const viewMs = shared !== undefined ? shared * 1000 : age !== undefined ? age * 1000 : routeExpires ?? undefined;
    const ttlMs = c.pageTtlWins || viewMs === undefined ? c.ttlMs : viewMs;
    let ours: Record<string, string> = {};
    if (headersOk) {
      // Headers of a cacheable response (and of a 304 or HEAD that would have been one): as Django's
      // patch_response_headers, but a route's own s-maxage and Expires are kept.
      if (shared === undefined) cc.set('max-age', String(Math.floor(ttlMs / 1000)));
      // Keyed by `key`, or shared across cookies on the route's word: right for this cache, which keys on
      // those values, but a proxy or CDN would not; unless the route said `public`, only browsers may keep it.
      if ((c.keyed || (facts.cookie && c.allowCookies)) && !cc.has('public')) cc.set('private', true);
      ours = { 'cache-control': formatCacheControl(cc) };
      if (final.expires === undefined) ours.expires = new Date(now + ttlMs).toUTCString();
      for (const [k, v] of Object.entries(ours)) res.setHeader(k, v);
    }
    if (why || body === undefined) {
      res.setHeader('Cache-Status', `fragcache; fwd=uri-miss; stored=?0; detail=${why}`);
      plan = { store: false };
      return;
    }
    let etag = final.etag;
    if (typeof etag !== 'string' && body !== 'later') res.setHeader('ETag', (etag = etagOf(body)));
    // `stored` only with the whole body in hand; after an explicit writeHead it is not known yet, nor with late tags
    // (`res.locals.cacheTags`), whose versions are read after the response: an invalidation may still keep it out.
    const late = (res as { locals?: { cacheTags?: unknown } }).locals?.cacheTags !== undefined;
    res.setHeader('Cache-Status', body === 'later' || late ? 'fragcache; fwd=uri-miss' : 'fragcache; fwd=uri-miss; stored');
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries({ ...(layer ?? final), ...ours })) {
      if (value !== undefined && !NOT_REPLAYED.has(name)) headers[name] = typeof value === 'number' ? String(value) : value;
    }
    if (typeof etag === 'string') headers.etag = etag;
    plan = { store: true, ttlMs, status, vary, headers, etag: typeof etag === 'string' ? etag : undefined };
  };

  const call = (fn: (...a: unknown[]) => unknown, args: unknown[]) => fn.apply(res, args);

  res.writeHead = function (this: PageRes, status: number, ...rest: unknown[]) {
    if (layer === undefined) {
      const reason = typeof rest[0] === 'string' ? rest[0] : undefined;
      const headers = reason === undefined ? rest[0] : rest[1];
      if (Array.isArray(headers)) rawHeaders = true; // a raw header list: passed through, never stored
      // Node merges the headers given here over those already set: so does this snapshot.
      layer = { ...(res.getHeaders() as HeaderMap) };
      if (headers && typeof headers === 'object' && !Array.isArray(headers)) {
        for (const [k, v] of Object.entries(headers)) if (v !== undefined) layer[k.toLowerCase()] = v as string;
      }
    }
    return call(writeHead as never, [status, ...rest]) as PageRes;
  } as typeof res.writeHead;

  // Node serialises the headers here, after every writeHead hook: the one place where they are final and can
  // still be changed. (An own property of this response only; Node's own method does the work.)
  const target = res as unknown as { _storeHeader?: (...a: unknown[]) => unknown };
  const storeHeader = target._storeHeader;
  if (typeof storeHeader === 'function') {
    target._storeHeader = function (this: PageRes, ...args: unknown[]) {
      if (plan === undefined) {
        try {
          decide();
        } catch (err) {
          plan = { store: false };
          c.pages.cache.report(err);
        }
      }
      return storeHeader.apply(this, args);
    };
  } else {
    plan = { store: false }; // a Node without it: never store rather than decide on headers that may still change
  }

  res.write = function (this: PageRes, ...args: unknown[]) {
    streamed = true; // Node sends the headers from inside this call
    return call(write as never, args) as boolean;
  } as typeof res.write;

  res.flushHeaders = function (this: PageRes) {
    streamed = true;
    return flushHeaders.call(res);
  };

  const sendFile = (res as { sendFile?: unknown }).sendFile;
  if (typeof sendFile === 'function') {
    // A file is streamed (or answered 304 / HEAD by `send`): never stored, and its own headers are kept.
    (res as { sendFile?: unknown }).sendFile = function (this: PageRes, ...args: unknown[]) {
      streamed = true;
      return sendFile.apply(this, args);
    };
  }

  let stored = false;
  res.on('close', () => void (stored || c.done()));

  res.end = function (this: PageRes, ...args: unknown[]) {
    const [chunk, encoding] = typeof args[0] === 'function' ? [undefined, undefined] : [args[0], typeof args[1] === 'function' ? undefined : args[1]];
    if (!streamed && plan?.store !== false) endBody = toBuffer(chunk, encoding);
    inEnd = true;
    let out: PageRes;
    try {
      out = call(end as never, args) as PageRes;
    } finally {
      inEnd = false;
    }
    const p = plan;
    // The final headers decided it; a Set-Cookie added after them (it cannot be sent) is checked anyway.
    if (p?.store && !streamed && endBody !== undefined && !res.hasHeader('set-cookie')) {
      plan = { store: false };
      stored = true;
      const etag = p.etag ?? etagOf(endBody);
      void finish(res, c, { ttlMs: p.ttlMs, body: endBody, meta: { status: p.status, headers: { ...p.headers, etag }, vary: p.vary, etag } }).finally(c.done);
    }
    return out;
  } as typeof res.end;
}

/** Stores a captured page. Never throws: the response is already sent. */
async function finish(res: PageRes, c: Capture, plan: { meta: PageMeta; ttlMs: number; body: Buffer }): Promise<void> {
  try {
    const tags = { ...c.tags, late: res.locals?.cacheTags };
    await c.pages.store(c.request, { body: plan.body.toString('latin1'), meta: plan.meta, ttlMs: plan.ttlMs, tags });
  } catch (err) {
    c.pages.cache.report(err);
  }
}

/** A page entry from a shared store that failed its check: a miss, reported once per key. */
const reportedBad = new Set<string>();
function rejectBad(pages: PageCache, key: string, why: string): void {
  if (reportedBad.has(key)) return;
  if (reportedBad.size > 1000) reportedBad.clear();
  reportedBad.add(key);
  pages.cache.report(new StoreError(`page cache: ignored the entry ${key.slice(0, 120)}: ${why}`, pages.cache.store.kind, 'getMany'));
}

/** Path and query with the listed query parameters left out (tracking parameters: `utm_*`, `fbclid`…). */
export function withoutParams(url: string, ignore: readonly (string | RegExp)[]): string {
  const q = url.indexOf('?');
  if (!ignore.length || q < 0) return url;
  const hash = url.indexOf('#', q);
  const query = url.slice(q + 1, hash < 0 ? undefined : hash);
  const kept = query.split('&').filter((part) => {
    if (!part) return false;
    let name = part.split('=')[0];
    try {
      name = decodeURIComponent(name.replace(/\+/g, ' '));
    } catch {
      // kept as written
    }
    return !ignore.some((p) => (typeof p === 'string' ? p === name : p.test(name)));
  });
  return url.slice(0, q) + (kept.length ? `?${kept.join('&')}` : '');
}

/** The in-process single flight of a page: requests that miss while another renders it wait for it. */
interface Flight {
  done: Promise<void>;
}

/** The two halves of a page cache (Django's `UpdateCacheMiddleware` and `FetchFromCacheMiddleware`). */
export interface PageCachePair {
  /**
   * Mount first (before sessions, authentication, compression). Marks the requests the cache may store; on its
   * own it never serves anything.
   */
  update: (req: PageReq, res: PageRes, next: (err?: unknown) => void) => void;
  /**
   * Mount after access control (IP allow-lists, authentication) and anything `key` reads (sessions, `req.user`):
   * a hit is served only to a request that got that far. Answers hits; captures misses for storing.
   */
  fetch: (req: PageReq, res: PageRes, next: (err?: unknown) => void) => void;
  /** See {@link PageMiddleware.invalidatePage}. */
  invalidatePage(url: string, app?: { get(setting: string): unknown }): Promise<void>;
  /** See {@link PageMiddleware.close}. */
  close(): Promise<void>;
}

const UPDATED = new WeakSet<object>();

/** Per-app default caches: two apps of one process never share pages unless they are given the same store. */
const appCaches = new WeakMap<object, FragmentCache>();

function makePages(ttlMs: number, pageTtlWins: boolean, o: PageCacheOptions): PageCachePair & { simple: PageMiddleware } {
  checkOptions(o);
  // A store spec: this middleware's own cache, under `prefix`; else `prefix` is a part of every page key.
  const own = o.store !== undefined && !(o.store instanceof FragmentCache) && !isEngine(o.store);
  const fixed = o.store === undefined ? undefined : pageCacheOf(o.store, 'store', own ? o.prefix : undefined);
  const prefix = own ? '' : (o.prefix ?? '');
  const ignore = o.ignoreParams ?? [];
  const waitMs = o.waitMs ?? 5000;
  const byCache = new WeakMap<FragmentCache, PageCache>();
  /** The page caches this middleware has used (one per engine it served, usually one). */
  const mine = new Set<WeakRef<PageCache>>();
  /** Middleware without a store or engine, outside an app: a memory cache of its own. */
  let lone: FragmentCache | undefined;
  const pagesFor = (app: { get(s: string): unknown } | undefined): PageCache => {
    const engine = app?.get?.(ENGINE_SETTING) as Engine | undefined;
    let cache = fixed ?? (engine ? pageCacheOf(engine) : undefined);
    if (!cache) {
      if (app && (typeof app === 'object' || typeof app === 'function')) {
        cache = appCaches.get(app);
        if (!cache) appCaches.set(app, (cache = new FragmentCache(createStore('memory'))));
      } else cache = lone ??= new FragmentCache(createStore('memory'));
    }
    let pages = byCache.get(cache);
    if (!pages) {
      byCache.set(cache, (pages = new PageCache(cache, prefix)));
      mine.add(new WeakRef(pages));
      remember(pages);
    }
    return pages;
  };
  // A configured store is reachable by invalidatePage(url) from the moment the middleware exists.
  if (fixed) pagesFor(undefined);
  const flights = new WeakMap<PageCache, Map<string, Flight>>();

  const update = (req: PageReq, res: PageRes, next: (err?: unknown) => void): void => {
    UPDATED.add(res);
    next();
  };

  const fetch = (req: PageReq, res: PageRes, next: (err?: unknown) => void): void => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return next();
    if (!UPDATED.has(res)) {
      return next(new OptionError('pageCache', 'fetch without update', 'mount `pages.update` before `pages.fetch` (update first, then sessions and auth, then fetch)'));
    }
    let pages: PageCache;
    let request: PageRequest;
    try {
      pages = pagesFor(req.app);
      // One snapshot of everything the key reads: the look-up and the store use the same values, whatever a
      // later middleware does to the request.
      request = {
        protocol: req.protocol ?? ((req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http'),
        // As the app sees it (Express: `req.host`, which honours `trust proxy`); no case folding of ours.
        host: String(req.host ?? req.headers.host ?? ''),
        url: withoutParams(req.originalUrl ?? req.url ?? '/', ignore),
        headers: { ...req.headers },
        // A bad key value is the route's bug, reported as its error.
        extra: o.key ? encodeValue(o.key(req as Request)) : undefined,
      };
    } catch (err) {
      return next(err);
    }
    pages.served = true;
    res.setHeader('X-Cache', 'MISS');
    const shared = !pages.cache.store.sync;
    /** The page key that missed, when the URL's Vary list is known (requests for other variants do not wait). */
    let missed: string | undefined;
    const budget = storeBudget(res, pages.cache.guard.requestBudget);
    /** The page, if stored and valid. `polling`: a poll for another process's page, not charged to the budget. */
    const hitOf = async (polling = false): Promise<PageEntry | undefined> => {
      const r = await pages.lookup(request, shared, polling ? undefined : budget);
      if (r && 'bad' in r) {
        rejectBad(pages, r.key, r.bad);
        return undefined;
      }
      if (r && 'missed' in r) missed = r.missed;
      return r && 'entry' in r ? r.entry : undefined;
    };
    (async () => {
      let hit = await hitOf();
      if (hit) return serveHit(req, res, hit);
      // Single flight: while this process renders the page, its other requests for it wait (bounded), then
      // look again; on a shared store a lock does the same across processes.
      let inProcess = flights.get(pages);
      if (!inProcess) flights.set(pages, (inProcess = new Map()));
      const flightKey = missed ?? `${pages.headerKey(request)}/${request.extra ?? ''}`;
      const running = inProcess.get(flightKey);
      // (A request that has spent its store budget could not read the page it waited for: it renders now.)
      if (running && !budget.spentOut) {
        await Promise.race([running.done, new Promise((r) => setTimeout(r, waitMs).unref())]);
        hit = await hitOf();
        if (hit) return serveHit(req, res, hit);
      }
      let release!: () => void;
      const flight: Flight = { done: new Promise<void>((r) => (release = r)) };
      // A HEAD is never stored: it leads no flight (GETs waiting for it would all miss afterwards).
      const mineFlight = !running && req.method === 'GET';
      if (mineFlight) inProcess.set(flightKey, flight);
      let unlock: (() => void) | undefined;
      if (mineFlight && shared && pages.cache.store.lock) {
        const lockKey = `${pages.cache.base}pl:${hash(flightKey)}`;
        let token: string | undefined;
        let failed = false;
        try {
          token = await pages.cache.guard.run('lock', () => pages.cache.store.lock!(lockKey, waitMs), undefined, budget);
        } catch (err) {
          failed = true; // store down or slow: render now, never wait on it
          pages.cache.report(err);
        }
        if (token) unlock = () => void pages.cache.guard.run('unlock', () => pages.cache.store.unlock!(lockKey, token)).catch(() => undefined);
        else if (!failed) {
          // Another process renders it: wait for its page, bounded by `waitMs` (not by the store budget, which
          // cheap polls would use up while a slow page renders: every waiter would then render it), then render here.
          // Poll its lock and the page together, with a short backoff (a page is usually produced in a few ms); the
          // lock is asked first, so a lock found gone usually means its page, if stored, is there to read.
          const store = pages.cache.store;
          const until = Date.now() + waitMs;
          let delay = 1;
          while (Date.now() < until && !pages.cache.guard.isOpen) {
            await new Promise((r) => setTimeout(r, delay));
            delay = Math.min(delay * 1.5, 20);
            const held = store.locked ? pages.cache.guard.run('locked', () => store.locked!([lockKey])).catch((err) => void pages.cache.report(err)) : undefined;
            const [locked, found] = await Promise.all([held, hitOf(true)]);
            if (found) {
              inProcess.delete(flightKey);
              release();
              return serveHit(req, res, found);
            }
            // Released without a usable page (not stored, fenced, or invalidated meanwhile): render it here now,
            // rather than poll until `waitMs` for a page that is not coming.
            if (locked && !locked[0]) break;
          }
        }
      }
      let released = false;
      const done = (): void => {
        if (released) return;
        released = true;
        if (inProcess.get(flightKey) === flight) inProcess.delete(flightKey);
        unlock?.();
        release();
      };
      let userTags: unknown;
      try {
        userTags = typeof o.tags === 'function' ? o.tags(req as Request) : o.tags;
        pages.tagKeys(request.url, userTags, 'tags'); // validates them: a bad list is the route's error
      } catch (err) {
        done();
        return next(err);
      }
      let tags: PageTags;
      try {
        // Read before the route runs: an invalidation during the render then makes this entry stale at once.
        // The URL tags are only read (written when, if, the page is stored); tag records created here expire.
        tags = await pages.startTags(request.url, userTags, 'tags', 2 * ttlMs, requestStart(res), budget);
      } catch (err) {
        done();
        pages.cache.report(err); // store down: serve uncached
        return next();
      }
      capture(req, res, { pages, request, tags, ttlMs, pageTtlWins, allowCookies: o.allowCookies ?? false, keyed: o.key !== undefined, done });
      next();
    })().catch((err) => {
      pages.cache.report(err);
      if (!res.headersSent) next();
    });
  };

  const invalidate = async (url: string, app?: { get(setting: string): unknown }) => {
    checkUrl(url);
    if (app) return pagesFor(app).invalidatePage(url);
    // Every cache this middleware has served pages from (the engine's, when it has run under engine.express).
    const list = new Set<FragmentCache>(fixed ? [fixed] : []);
    for (const ref of mine) {
      const pages = ref.deref();
      if (pages) list.add(pages.cache);
      else mine.delete(ref);
    }
    if (!list.size) throw new PageCacheError(`invalidatePage("${url}"): this middleware has no store and has served no page yet, so there is no cache to reach; give it a \`store\`, or pass the app: mw.invalidatePage(url, app)`);
    await onEvery([...list], (c) => new PageCache(c).invalidatePage(url));
  };
  const close = async () => {
    if (!own) return;
    for (const ref of inUse) if (ref.deref()?.cache === fixed) inUse.delete(ref); // no longer reached by invalidatePage(url)
    await fixed!.close();
  };
  const simple = ((req: PageReq, res: PageRes, next: (err?: unknown) => void) => update(req, res, () => fetch(req, res, next))) as PageMiddleware;
  simple.invalidatePage = invalidate;
  simple.close = close;
  return { update, fetch, invalidatePage: invalidate, close, simple };
}

function checkUrl(url: unknown): asserts url is string {
  if (typeof url !== 'string' || !url) throw new OptionError('url', url, 'expected a URL or a path');
  normalPath(url);
}

/**
 * Caches a route's whole response for `ttl` (Django's `@cache_page(60 * 15)`). The page TTL wins over a
 * `max-age` the route set. See the README for the rules (only GET/HEAD, only 200, never private, …).
 *
 * @example app.get('/articles/:id', cachePage('15m', { tags: (req) => [`article:${req.params.id}`] }), show)
 */
export function cachePage(ttl: Ttl, options: PageCacheOptions = {}): PageMiddleware {
  return makePages(ttlMsOf(ttl, 'ttl'), true, options).simple;
}

/**
 * Caches every eligible response of the app (Django's `UpdateCacheMiddleware` + `FetchFromCacheMiddleware`
 * in one). A `max-age` set by the route wins over `ttl` (default 600 s).
 */
export function cacheMiddleware(options: SiteCacheOptions = {}): PageMiddleware {
  if (typeof options !== 'object' || options === null) throw new OptionError('options', options, 'expected an object');
  const { ttl = 600, ...rest } = options;
  return makePages(ttlMsOf(ttl, 'ttl'), false, rest).simple;
}

/**
 * The page cache as two middlewares, for apps with sessions or access control (Django's
 * `UpdateCacheMiddleware` / `FetchFromCacheMiddleware`):
 *
 * ```
 * const pages = pageCache({ ttl: '10m', key: (req) => req.user?.id });
 * app.use(pages.update);   // 1. first: every request the cache may store passes here
 * app.use(session(…));     // 2. sessions, cookies
 * app.use(authenticate);   // 3. access control: refused requests never reach a hit
 * app.use(pages.fetch);    // 4. hits are served here; misses are captured and stored
 * app.get(…routes…);
 * ```
 *
 * Whatever the order, the store decision is taken on the response headers as they finally go out.
 */
export function pageCache(options: SiteCacheOptions = {}): PageCachePair {
  if (typeof options !== 'object' || options === null) throw new OptionError('options', options, 'expected an object');
  const { ttl = 600, ...rest } = options;
  const { update, fetch, invalidatePage, close } = makePages(ttlMsOf(ttl, 'ttl'), false, rest);
  return { update, fetch, invalidatePage, close };
}

/**
 * Drops every cached variant of a page (path with query, or an absolute URL: every host is dropped) in
 * `target`: an engine (every store it has), a cache, or by default every cache the page middlewares of this
 * process use (their engines' caches, their own stores, the shared memory cache). Rejects if any store failed.
 */
export async function invalidatePage(url: string, target?: Engine | FragmentCache): Promise<void> {
  checkUrl(url);
  const list = target === undefined ? caches(`invalidatePage("${url}")`) : isEngine(target) ? [...new Set(target.caches.values())] : [pageCacheOf(target)];
  await onEvery(list, (c) => new PageCache(c).invalidatePage(url));
}

/**
 * Drops pages (and fragments and values) tagged with any of `tags` in `target`: an engine, a cache, or by
 * default every cache the page middlewares of this process use. Rejects if any store failed.
 */
export async function invalidatePageTag(tags: string | readonly string[], target?: Engine | FragmentCache): Promise<void> {
  const list = typeof tags === 'string' ? [tags] : [...tags];
  if (isEngine(target)) return target.invalidateTag(...list);
  await onEvery(target === undefined ? caches('invalidatePageTag') : [pageCacheOf(target)], (c) => c.invalidateTag(...list));
}
