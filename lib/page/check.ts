/**
 * Checks a page entry read from a shared store before it is replayed: another process, an older version or
 * anyone with write access to the store may have put anything there, and a replayed header goes to a user.
 * @module
 */
import { validateHeaderName, validateHeaderValue } from 'node:http';
import type { Entry } from '../entry';

/** Response headers the page cache never stores, so never replays (hop-by-hop, per-response, cookies). */
export const NOT_REPLAYED: ReadonlySet<string> = new Set([
  'connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authenticate',
  'proxy-connection', 'date', 'age', 'set-cookie', 'content-length', 'x-cache', 'cache-status',
]);

/** Statuses the page cache stores. */
export const STORED_STATUSES: ReadonlySet<number> = new Set([200]);

const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;
/** A body is kept as latin1 (one char per byte): a char above 0xff cannot come from a real response. */
const NOT_LATIN1 = /[^\x00-\xff]/;

function headerOk(name: string, value: unknown): boolean {
  if (!TOKEN.test(name) || NOT_REPLAYED.has(name)) return false;
  const values = Array.isArray(value) ? value : [value];
  if (!values.length) return false;
  try {
    validateHeaderName(name);
    for (const v of values) {
      if (typeof v !== 'string') return false;
      validateHeaderValue(name, v);
    }
  } catch {
    return false;
  }
  return true;
}

/** Why the header-list entry of a URL cannot be used (undefined: it can). */
export function badHead(e: Entry): string | undefined {
  const vary = e.meta?.vary;
  if (!Array.isArray(vary) || !vary.every((v) => typeof v === 'string' && TOKEN.test(v) && v !== '*')) return 'its Vary list is malformed';
  return undefined;
}

/** Why a page entry cannot be replayed (undefined: it can). */
export function badPage(e: Entry): string | undefined {
  const m = e.meta as Record<string, unknown> | undefined;
  if (!m || typeof m !== 'object') return 'it has no page metadata';
  if (typeof m.status !== 'number' || !STORED_STATUSES.has(m.status)) return `status ${String(m.status)} is never stored`;
  const h = m.headers;
  if (!h || typeof h !== 'object' || Array.isArray(h)) return 'its headers are malformed';
  for (const [name, value] of Object.entries(h)) if (!headerOk(name, value)) return `header "${name.slice(0, 40)}" is not one the page cache stores, or is malformed`;
  if (typeof m.etag !== 'string' || !/^(W\/)?"[\x21\x23-\x7e\x80-\xff]*"$/.test(m.etag)) return 'its ETag is malformed';
  const bad = badHead(e);
  if (bad) return bad;
  if (typeof e.body !== 'string' || NOT_LATIN1.test(e.body)) return 'its body is not bytes';
  return undefined;
}
