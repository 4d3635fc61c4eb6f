/**
 * Whole-page caching middleware for Express: capture of the response on a miss, replay on a hit.
 * @module
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Request } from 'express';
import { FragmentCache } from '../cache';
import { parseTtl, type Ttl } from '../duration';
import type { Engine } from '../engine';
import { OptionError } from '../errors';
import { createStore, type StoreSpec } from '../stores';
import { MemoryStore } from '../stores/memory';
import { normalPath, PageCache, type PageEntry, type PageMeta, type PageRequest, type PageTags } from './cache';
import { etagMatches, formatCacheControl, maxAge, parseCacheControl, parseVary, refusal, type Refusal } from './policy';
import { ENGINE_SETTING } from './view';

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
   * `engine.express(app)`, else one in-process memory store shared by every middleware without a store.
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

const NOT_REPLAYED = new Set([
  'connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authenticate',
  'proxy-connection', 'date', 'age', 'set-cookie', 'content-length', 'x-cache', 'cache-status',
]);

let sharedMemory: FragmentCache | undefined;
/** The in-process cache used by middlewares that have no store and no engine. */
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
  if (inUse.size > 64) caches(); // drops the dead ones
}

/** The distinct caches behind the page caches in use (and the shared memory cache). */
function caches(): FragmentCache[] {
  const out = new Set<FragmentCache>([defaultPageCache()]);
  for (const ref of inUse) {
    const pages = ref.deref();
    if (pages && !pages.cache.closed) out.add(pages.cache);
    else inUse.delete(ref); // collected, or its cache (an engine's, say) was closed
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
  /** Page TTL wins over the response's `max-age` (cachePage); else `max-age` wins over `ttlMs` (cacheMiddleware). */
  pageTtlWins: boolean;
  allowCookies: boolean;
  /** The route has a `key` option (the page may differ per user). */
  keyed: boolean;
}

/** What to do with a response once its body is known: store it (with its TTL, status and vary), or not. */
type Plan = { store: false } | { store: true; ttlMs: number; status: number; vary: string[]; headers: Record<string, string | string[]>; etag?: string };

/**
 * Wraps `writeHead`, `write`, `end`, `flushHeaders` and `sendFile` of one response. The decision is taken when
 * the route calls `writeHead`, or when Node sends the headers from inside `end` (a body sent in one piece: known,
 * so its ETag is set) or from the first `write` / `flushHeaders` (streamed: never stored, and its headers are
 * left as the route set them; so are those of `res.sendFile` / `res.download`). After an explicit `writeHead` the
 * body is not known yet: the caching headers are set, and the page is stored if the body then comes in one
 * `end` (its ETag is kept for the hits, this response goes without). `writeHead` itself behaves as Node's (it
 * sends the headers; a second one throws), so middleware that hooks it (compression, sessions) keeps working.
 */
function capture(req: PageReq, res: PageRes, c: Capture): void {
  const writeHead = res.writeHead;
  const write = res.write;
  const end = res.end;
  const flushHeaders = res.flushHeaders;
  let streamed = false;
  let inEnd = false;
  let endBody: Buffer | undefined;
  let plan: Plan | undefined;

  const decide = (): void => {
    const status = res.statusCode;
    const cc = parseCacheControl(res.getHeader('cache-control'));
    const vary = parseVary(res.getHeader('vary'));
    const facts = {
      method: 'GET', // a HEAD is decided as its GET (headers), but never stored: it has no body
      status: status === 304 ? 200 : status,
      authorization: req.headers.authorization !== undefined,
      cookie: req.headers.cookie !== undefined,
      allowCookies: c.allowCookies,
      cacheControl: cc,
      setCookie: res.hasHeader('set-cookie'),
      vary,
    };
    // Streamed (or a file): decided before anything else, and its headers are left as the route set them.
    const body = streamed ? undefined : inEnd ? endBody : 'later';
    let why: Refusal | undefined = body === undefined ? 'streamed' : refusal(facts);
    const headersOk = why === undefined;
    if (!why && req.method !== 'GET') why = 'method';
    if (!why && status !== 200) why = 'status';
    // Headers of a cacheable response (and of a 304 or HEAD that would have been one): as Django's patch_response_headers.
    const viewAge = maxAge(cc);
    const ttlMs = c.pageTtlWins || viewAge === undefined ? c.ttlMs : viewAge * 1000;
    if (headersOk) {
      cc.set('max-age', String(Math.floor(ttlMs / 1000)));
      // Keyed by `key`, or shared across cookies on the route's word: right for this cache, which keys on
      // those values, but a proxy or CDN would not; unless the route said `public`, only browsers may keep it.
      if ((c.keyed || (facts.cookie && c.allowCookies)) && !cc.has('public')) cc.set('private', true);
      res.setHeader('Cache-Control', formatCacheControl(cc));
      res.setHeader('Expires', new Date(Date.now() + ttlMs).toUTCString());
    }
    if (why || body === undefined) {
      res.setHeader('Cache-Status', `fragcache; fwd=uri-miss; stored=?0; detail=${why}`);
      plan = { store: false };
      return;
    }
    let etag = res.getHeader('etag');
    if (typeof etag !== 'string' && body !== 'later') res.setHeader('ETag', (etag = etagOf(body)));
    res.setHeader('Cache-Status', 'fragcache; fwd=uri-miss; stored');
    // The headers as this layer sends them: what middleware mounted before it adds later (compression's
    // Content-Encoding) belongs to its own handling of the body, and it adds it again on every hit.
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(res.getHeaders())) {
      if (value !== undefined && !NOT_REPLAYED.has(name)) headers[name] = typeof value === 'number' ? String(value) : value;
    }
    plan = { store: true, ttlMs, status, vary, headers, etag: typeof etag === 'string' ? etag : undefined };
  };

  const call = (fn: (...a: unknown[]) => unknown, args: unknown[]) => fn.apply(res, args);

  res.writeHead = function (this: PageRes, status: number, ...rest: unknown[]) {
    // Already decided, a raw header array (passed through, never stored), or a status Node will refuse.
    if (plan !== undefined || !Number.isInteger(status) || status < 100 || status > 999) return call(writeHead as never, [status, ...rest]) as PageRes;
    const reason = typeof rest[0] === 'string' ? rest[0] : undefined;
    const headers = reason === undefined ? rest[0] : rest[1];
    if (Array.isArray(headers)) {
      plan = { store: false };
      return call(writeHead as never, [status, ...rest]) as PageRes;
    }
    // The decision must see the headers and status given here; Node merges them the same way.
    if (headers && typeof headers === 'object') for (const [k, v] of Object.entries(headers)) if (v !== undefined) res.setHeader(k, v as string);
    res.statusCode = status;
    decide();
    const out = call(writeHead as never, reason === undefined ? [res.statusCode] : [res.statusCode, reason]) as PageRes;
    // Hooks that run inside writeHead (a session middleware mounted before this one) may have set a cookie.
    if ((plan as Plan | undefined)?.store && res.hasHeader('set-cookie')) plan = { store: false };
    return out;
  } as typeof res.writeHead;

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
    if (p?.store && !streamed && endBody !== undefined && !res.hasHeader('set-cookie')) {
      plan = { store: false };
      const etag = p.etag ?? etagOf(endBody);
      void finish(res, c, { ttlMs: p.ttlMs, body: endBody, meta: { status: p.status, headers: { ...p.headers, etag }, vary: p.vary, etag } });
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

function makeMiddleware(ttlMs: number, pageTtlWins: boolean, o: PageCacheOptions): PageMiddleware {
  checkOptions(o);
  // A store spec: this middleware's own cache, under `prefix`; else `prefix` is a part of every page key.
  const own = o.store !== undefined && !(o.store instanceof FragmentCache) && !isEngine(o.store);
  const fixed = o.store === undefined ? undefined : pageCacheOf(o.store, 'store', own ? o.prefix : undefined);
  const prefix = own ? '' : (o.prefix ?? '');
  const byCache = new WeakMap<FragmentCache, PageCache>();
  /** The page caches this middleware has used (one per engine it served, usually one). */
  const mine = new Set<WeakRef<PageCache>>();
  const pagesFor = (app: { get(s: string): unknown } | undefined): PageCache => {
    const engine = app?.get?.(ENGINE_SETTING) as Engine | undefined;
    const cache = fixed ?? (engine ? pageCacheOf(engine) : defaultPageCache());
    let pages = byCache.get(cache);
    if (!pages) {
      byCache.set(cache, (pages = new PageCache(cache, prefix)));
      mine.add(new WeakRef(pages));
      remember(pages);
    }
    return pages;
  };

  const middleware = ((req: PageReq, res: PageRes, next: (err?: unknown) => void) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return next();
    let pages: PageCache;
    let request: PageRequest;
    try {
      pages = pagesFor(req.app);
      request = {
        protocol: req.protocol ?? ((req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http'),
        host: String(req.host ?? req.headers.host ?? '').toLowerCase(),
        url: req.originalUrl ?? req.url ?? '/',
        headers: req.headers,
        extra: o.key ? o.key(req as Request) : undefined,
      };
      // Validate the key now: a bad key value is the route's bug, reported as its error.
      pages.pageKey(request, []);
    } catch (err) {
      return next(err);
    }
    res.setHeader('X-Cache', 'MISS');
    pages.lookup(request).then(
      async (hit) => {
        if (hit) return serveHit(req, res, hit);
        let userTags: unknown;
        try {
          userTags = typeof o.tags === 'function' ? o.tags(req as Request) : o.tags;
          pages.tagKeys(request.url, userTags, 'tags'); // validates them: a bad list is the route's error
        } catch (err) {
          return next(err);
        }
        let tags: PageTags;
        try {
          // Read before the route runs: an invalidation during the render then makes this entry stale at once.
          // The URL's tag is only read: it is written when (if) the page is stored.
          tags = await pages.startTags(request.url, userTags, 'tags');
        } catch (err) {
          pages.cache.report(err); // store down: serve uncached
          return next();
        }
        capture(req, res, { pages, request, tags, ttlMs, pageTtlWins, allowCookies: o.allowCookies ?? false, keyed: o.key !== undefined });
        next();
      },
      (err) => {
        pages.cache.report(err);
        next();
      },
    ).catch(next);
  }) as PageMiddleware;

  middleware.invalidatePage = async (url: string, app?: { get(setting: string): unknown }) => {
    checkUrl(url);
    if (app) return pagesFor(app).invalidatePage(url);
    // Every cache this middleware has served pages from (the engine's, when it has run under engine.express).
    const list = new Set<FragmentCache>(fixed ? [fixed] : []);
    for (const ref of mine) {
      const pages = ref.deref();
      if (pages) list.add(pages.cache);
      else mine.delete(ref);
    }
    if (!list.size) list.add(defaultPageCache());
    await onEvery([...list], (c) => new PageCache(c).invalidatePage(url));
  };
  middleware.close = async () => {
    if (!own) return;
    for (const ref of inUse) if (ref.deref()?.cache === fixed) inUse.delete(ref); // no longer reached by invalidatePage(url)
    await fixed!.close();
  };
  return middleware;
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
  return makeMiddleware(ttlMsOf(ttl, 'ttl'), true, options);
}

/**
 * Caches every eligible response of the app (Django's `UpdateCacheMiddleware` + `FetchFromCacheMiddleware`
 * in one). A `max-age` set by the route wins over `ttl` (default 600 s).
 */
export function cacheMiddleware(options: SiteCacheOptions = {}): PageMiddleware {
  if (typeof options !== 'object' || options === null) throw new OptionError('options', options, 'expected an object');
  const { ttl = 600, ...rest } = options;
  return makeMiddleware(ttlMsOf(ttl, 'ttl'), false, rest);
}

/**
 * Drops every cached variant of a page (path with query, or an absolute URL: every host is dropped) in
 * `target`: an engine (every store it has), a cache, or by default every cache the page middlewares of this
 * process use (their engines' caches, their own stores, the shared memory cache). Rejects if any store failed.
 */
export async function invalidatePage(url: string, target?: Engine | FragmentCache): Promise<void> {
  checkUrl(url);
  const list = target === undefined ? caches() : isEngine(target) ? [...new Set(target.caches.values())] : [pageCacheOf(target)];
  await onEvery(list, (c) => new PageCache(c).invalidatePage(url));
}

/**
 * Drops pages (and fragments and values) tagged with any of `tags` in `target`: an engine, a cache, or by
 * default every cache the page middlewares of this process use. Rejects if any store failed.
 */
export async function invalidatePageTag(tags: string | readonly string[], target?: Engine | FragmentCache): Promise<void> {
  const list = typeof tags === 'string' ? [tags] : [...tags];
  if (isEngine(target)) return target.invalidateTag(...list);
  await onEvery(target === undefined ? caches() : [pageCacheOf(target)], (c) => c.invalidateTag(...list));
}
