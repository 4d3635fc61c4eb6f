/**
 * What a store holds under a key, and its wire format for stores that hold strings.
 * @module
 */

/** One stored entry: a fragment, a page, a low-level value, or a tag version. */
export interface Entry {
  /** The payload: fragment HTML, a page body, a tag version, or JSON when `json` is set. */
  body: string;
  /** Epoch ms at which it was written. */
  created: number;
  /** Epoch ms after which it is stale (`null`: never). */
  expires: number | null;
  /** Epoch ms until which a stale entry may still be served while one renderer refreshes it. */
  staleUntil?: number | null;
  /** How long the body took to produce, in ms (used by early refresh). */
  cost?: number;
  /** Tag key → the tag's version when the body started rendering. Any mismatch makes the entry invalid. */
  tags?: Record<string, string>;
  /** `body` is JSON (a low-level `set` of a non-string value). */
  json?: boolean;
  /** Free metadata for inspection and page caching (fragment name, vary, status, headers…). */
  meta?: Record<string, unknown>;
  /** In-process only (never serialised): the store generation at which the tags were last found valid. */
  checked?: number;
}

/** Format marker; an entry written by another format version is a miss. */
export const FORMAT = 'fc1';

/**
 * Serialises an entry as `fc1` + JSON header + newline + body. The body is not JSON-escaped, so a 43 kB
 * fragment costs one slice on read, not a `JSON.parse` of the whole thing.
 */
export function encodeEntry(entry: Entry): string {
  const { body, checked: _checked, ...head } = entry;
  return `${FORMAT}${JSON.stringify(head)}\n${body}`;
}

/** Parses {@link encodeEntry}'s output; returns `undefined` for anything else (other versions, garbage). */
export function decodeEntry(raw: unknown): Entry | undefined {
  if (typeof raw !== 'string' || !raw.startsWith(FORMAT)) return undefined;
  const nl = raw.indexOf('\n');
  if (nl < 0) return undefined;
  let head: unknown;
  try {
    head = JSON.parse(raw.slice(FORMAT.length, nl));
  } catch {
    return undefined;
  }
  if (!isHead(head)) return undefined;
  return { ...head, body: raw.slice(nl + 1) };
}

function isHead(h: unknown): h is Omit<Entry, 'body'> {
  if (typeof h !== 'object' || h === null || Array.isArray(h)) return false;
  const o = h as Record<string, unknown>;
  return (
    typeof o.created === 'number' &&
    (o.expires === null || typeof o.expires === 'number') &&
    (o.tags === undefined || (typeof o.tags === 'object' && o.tags !== null && !Array.isArray(o.tags) &&
      Object.values(o.tags).every((v) => typeof v === 'string')))
  );
}

/**
 * Copies a string into a flat one. Nunjucks builds its output by `+=`, giving V8 "cons strings" (ropes)
 * that take ~2.6× the memory of the flat string when kept; `s | 0` makes V8 flatten it in place.
 */
export function flatten(s: string): string {
  // The result must be used: once hot, the optimiser drops an unused conversion, and the flattening with it.
  flatSink ^= (s as unknown as number) | 0;
  return s;
}

let flatSink = 0;
