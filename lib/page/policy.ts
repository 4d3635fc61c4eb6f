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

/** Parses `Cache-Control`; directive names are case-insensitive (Django GHSA-8cjm-8mp7-r2xf). */
export function parseCacheControl(value: HeaderValue): CacheControl {
  const out: CacheControl = new Map();
  for (const part of text(value).split(',')) {
    const m = /^\s*([^=\s]+)\s*(?:=\s*"?([^"]*)"?)?\s*$/.exec(part);
    if (m) out.set(m[1].toLowerCase(), m[2] ?? true);
  }
  return out;
}

/** Serialises a {@link CacheControl} (names in lower case; values quoted when needed). */
export function formatCacheControl(cc: CacheControl): string {
  return [...cc].map(([k, v]) => (v === true ? k : /^[\w.-]*$/.test(v) && v !== '' ? `${k}=${v}` : `${k}="${v}"`)).join(', ');
}

/** `max-age` in whole seconds, or undefined when absent or not a number. */
export function maxAge(cc: CacheControl): number | undefined {
  const v = cc.get('max-age');
  if (typeof v !== 'string' || !/^\d+$/.test(v.trim())) return undefined;
  return Number(v);
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
 * (`private`, `no-cache`, `no-store`, `max-age=0`), Set-Cookie, Authorization without `public`, `Vary: *`,
 * and a request with cookies whose response neither varies on `Cookie` nor was declared cookie-independent.
 */
export function refusal(f: ResponseFacts): Refusal | undefined {
  if (f.method !== 'GET') return 'method';
  if (f.status !== 200) return 'status';
  const cc = f.cacheControl;
  if (cc.has('private') || cc.has('no-cache') || cc.has('no-store') || maxAge(cc) === 0) return 'cache-control';
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
