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
  /**
   * The tags the entry depends on, as flat pairs `[tagKey, version, tagKey, version, …]`: each tag's version
   * when the body started rendering. Any mismatch makes the entry invalid. (Pairs, not an object: each
   * fragment's own variant tag makes its key set unique, and V8 would give every entry its own hidden class;
   * an array costs less than half as much per entry.)
   */
  tags?: readonly string[];
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
  // One fixed shape (a spread would copy field by field into a fresh dictionary-like object: 2× slower here).
  return {
    body: raw.slice(nl + 1),
    created: head.created,
    expires: head.expires,
    staleUntil: head.staleUntil,
    cost: head.cost,
    tags: head.tags,
    json: head.json,
    meta: head.meta,
    checked: undefined,
  };
}

function isHead(h: unknown): h is Omit<Entry, 'body'> {
  if (typeof h !== 'object' || h === null || Array.isArray(h)) return false;
  const o = h as Record<string, unknown>;
  return (
    typeof o.created === 'number' &&
    (o.expires === null || typeof o.expires === 'number') &&
    (o.tags === undefined || isPairs(o.tags))
  );
}

function isPairs(tags: unknown): boolean {
  if (!Array.isArray(tags) || tags.length % 2 !== 0) return false;
  for (let i = 0; i < tags.length; i++) if (typeof tags[i] !== 'string') return false;
  return true;
}

/** The tag keys of an entry (every other element of its `tags` pairs). */
export function tagKeysOf(entry: Entry): string[] {
  const tags = entry.tags;
  const keys: string[] = [];
  if (tags) for (let i = 0; i < tags.length; i += 2) keys.push(tags[i]);
  return keys;
}

/** Flat `[key, version, …]` pairs of a map of tag versions (the form `Entry.tags` takes). */
export function tagPairs(versions: ReadonlyMap<string, string>): string[] {
  // Sized up front: an array grown by push() keeps ~17 slots of spare capacity, in every stored entry.
  const out = new Array<string>(versions.size * 2);
  let i = 0;
  for (const [k, v] of versions) {
    out[i++] = k;
    out[i++] = v;
  }
  return out;
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
