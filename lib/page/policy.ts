/**
 * The rules that decide whether a response may be stored in a shared page cache (Django's
 * `UpdateCacheMiddleware` and its 2026 security fixes), as pure functions of headers.
 * @module
 */

/** Parsed `Cache-Control`: directive name (lower case) → value (`true` when it has none). */
export type CacheControl = Map<string, string | true>;

/** Header value as Node gives it (`getHeader`, `req.headers`). */
export type HeaderValue = string | number | readonly string[] | undefined;

function text(v: HeaderValue): string {
  if (v === undefined) return '';
  return Array.isArray(v) ? v.join(', ') : String(v);
}

/** Freshness directives whose value must be one number: two different values make the response stale (RFC 9111 §4.2.1). */
const FRESHNESS = new Set(['max-age', 's-maxage']);

/**
 * Parses `Cache-Control`; directive names are case-insensitive (Django GHSA-8cjm-8mp7-r2xf). A `max-age` or
 * `s-maxage` given twice with different values is kept as an invalid value (`""`): the response is not stored.
 */
export function parseCacheControl(value: HeaderValue): CacheControl {
  const out: CacheControl = new Map();
  for (const part of text(value).split(',')) {
    const m = /^\s*([^=\s]+)\s*(?:=\s*"?([^"]*)"?)?\s*$/.exec(part);
    if (!m) continue;
    const name = m[1].toLowerCase();
    const v = m[2] ?? true;
    if (FRESHNESS.has(name) && out.has(name) && out.get(name) !== v) out.set(name, '');
    else out.set(name, v);
  }
  return out;
}

/** Serialises a {@link CacheControl} (names in lower case; values quoted when needed). */
export function formatCacheControl(cc: CacheControl): string {
  return [...cc].map(([k, v]) => (v === true ? k : /^[\w.-]*$/.test(v) && v !== '' ? `${k}=${v}` : `${k}="${v}"`)).join(', ');
}

/** The longest lifetime a response may ask for: one year (larger `max-age` values are clamped to it). */
export const MAX_AGE_LIMIT = 31_536_000;

/**
 * A delta-seconds directive (`max-age`, `s-maxage`) in whole seconds: `undefined` when absent, `null` when
 * invalid (negative, fractional, empty, not a number, or given twice with different values: RFC 9111 says such
 * a response is stale, so it is never stored), and at most {@link MAX_AGE_LIMIT} (huge values are clamped, as
 * RFC 9111 §1.2.2 asks for values too large to represent).
 */
export function deltaSeconds(cc: CacheControl, directive: 'max-age' | 's-maxage'): number | null | undefined {
  if (!cc.has(directive)) return undefined;
  const v = cc.get(directive);
  if (typeof v !== 'string' || !/^\d+$/.test(v)) return null;
  return Math.min(Number(v), MAX_AGE_LIMIT);
}

/** `max-age` in whole seconds (clamped to one year), or undefined when absent or invalid. */
export function maxAge(cc: CacheControl): number | undefined {
  return deltaSeconds(cc, 'max-age') ?? undefined;
}

/** The header names listed in `Vary`, lower case, without duplicates, sorted (the order never matters). `*` is kept. */
export function parseVary(value: HeaderValue): string[] {
  const names = text(value)
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  return [...new Set(names)].sort();
}

/** Why a response is not stored (undefined: it may be). */
export type Refusal =
  | 'method'
  | 'status'
  | 'cache-control'
  | 'set-cookie'
  | 'authorization'
  | 'vary-star'
  | 'cookie'
  | 'streamed'
  | 'expires'
  | 'store';

/** What {@link refusal} looks at. */
export interface ResponseFacts {
  method: string;
  status: number;
  /** The request's `Authorization` header is present. */
  authorization: boolean;
  /** The request's `Cookie` header is present. */
  cookie: boolean;
  /** The route accepts sharing a page between requests with different cookies (option `allowCookies`). */
  allowCookies: boolean;
  cacheControl: CacheControl;
  setCookie: boolean;
  vary: readonly string[];
}

/**
 * The first rule that forbids storing the response, or undefined. Order: method, status, Cache-Control
 * (`private`, `no-cache`, `no-store`, `max-age=0`, `s-maxage=0`, or an invalid `max-age`/`s-maxage`),
 * Set-Cookie, Authorization without `public`, `Vary: *`, and a request with cookies whose response neither
 * varies on `Cookie` nor was declared cookie-independent.
 */
export function refusal(f: ResponseFacts): Refusal | undefined {
  if (f.method !== 'GET') return 'method';
  if (f.status !== 200) return 'status';
  const cc = f.cacheControl;
  if (cc.has('private') || cc.has('no-cache') || cc.has('no-store')) return 'cache-control';
  // 0 or invalid (null): stale at once for a shared cache (RFC 9111 §4.2.1, §5.2.2.10).
  const age = deltaSeconds(cc, 'max-age');
  const shared = deltaSeconds(cc, 's-maxage');
  if (age === 0 || age === null || shared === 0 || shared === null) return 'cache-control';
  if (f.setCookie) return 'set-cookie';
  if (f.authorization && !cc.has('public')) return 'authorization';
  if (f.vary.includes('*')) return 'vary-star';
  if (f.cookie && !f.allowCookies && !f.vary.includes('cookie')) return 'cookie';
  return undefined;
}

/** Splits an `If-None-Match` list and compares weakly (RFC 9110 §13.1.2): `W/"x"` matches `"x"`, `*` matches any. */
export function etagMatches(ifNoneMatch: HeaderValue, etag: string): boolean {
  const header = text(ifNoneMatch).trim();
  if (!header) return false;
  if (header === '*') return true;
  const opaque = (t: string) => t.trim().replace(/^W\//, '');
  const mine = opaque(etag);
  return header.split(',').some((t) => opaque(t) === mine);
}
