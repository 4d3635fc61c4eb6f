/**
 * What a store holds under a key, and its wire format for stores that hold strings.
 * @module
 */
import { describe, StoreIntegrityError } from './errors';

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

/**
 * Format marker; an entry written by another format version is a miss. `fc2` added the key digest (an `fc1`
 * entry, which cannot prove its key, reads as a miss).
 */
export const FORMAT = 'fc2';

/**
 * A 64-bit digest of a key (16 hex digits), written in every entry's header and checked on every read, so a
 * reply that answers another key's request (a connection out of step) is never served. Not a security
 * measure: a fast, stable, non-cryptographic hash (cyrb53's two 32-bit lanes), ~0.1 µs for a typical key.
 * Part of the wire format: changing it needs a new {@link FORMAT}.
 */
export function keyDigest(key: string): string {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return hex8(h2) + hex8(h1);
}

function hex8(n: number): string {
  const s = (n >>> 0).toString(16);
  return s.length === 8 ? s : '00000000'.slice(s.length) + s;
}

const DIGEST_LEN = 16;
const HEAD_AT = FORMAT.length + DIGEST_LEN;

/**
 * Serialises an entry stored under `key` as `fc2` + the key's digest + JSON header + newline + body. The body
 * is not JSON-escaped, so a 43 kB fragment costs one slice on read, not a `JSON.parse` of the whole thing.
 */
export function encodeEntry(entry: Entry, key: string): string {
  const { body, checked: _checked, ...head } = entry;
  return `${FORMAT}${keyDigest(key)}${JSON.stringify(head)}\n${body}`;
}

/** What {@link decodeEntry} returns for a well-formed entry written under another key. */
export const WRONG_KEY: unique symbol = Symbol('fragcache.wrongKey');

/**
 * Parses {@link encodeEntry}'s output read under `key`: `undefined` for anything else (other versions,
 * garbage), {@link WRONG_KEY} for an entry written under another key (never to be served).
 */
export function decodeEntry(raw: unknown, key: string): Entry | undefined | typeof WRONG_KEY {
  if (typeof raw !== 'string' || !raw.startsWith(FORMAT)) return undefined;
  const nl = raw.indexOf('\n', HEAD_AT);
  if (nl < 0) return undefined;
  let head: unknown;
  try {
    head = JSON.parse(raw.slice(HEAD_AT, nl));
  } catch {
    return undefined;
  }
  if (!isHead(head)) return undefined;
  // Checked after parsing: garbage is a miss, a well-formed entry of another key is a fault.
  if (!raw.startsWith(keyDigest(key), FORMAT.length)) return WRONG_KEY;
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

/**
 * Decodes the replies of a read of `keys` (`null`/`undefined`: a miss). Throws {@link StoreIntegrityError}
 * when any reply holds another key's entry: the whole batch is then suspect (a connection out of step
 * answers every later request with the reply meant for an earlier one), so none of it is served.
 */
export function decodeEntries(
  raws: readonly unknown[],
  keys: readonly string[],
  store: string,
  /** Asked about a reply under another key's digest: true reads it as a miss (a value misplaced in the store). */
  misplaced?: (key: string) => boolean,
): (Entry | undefined)[] {
  if (raws.length !== keys.length) {
    throw new StoreIntegrityError(`${store} store: ${raws.length} replies for ${keys.length} keys (the connection is out of step)`, store, 'getMany');
  }
  const out = new Array<Entry | undefined>(raws.length);
  for (let i = 0; i < raws.length; i++) {
    const r = raws[i];
    const e = r === null || r === undefined ? undefined : decodeEntry(r, keys[i]);
    if (e === WRONG_KEY) {
      if (misplaced?.(keys[i])) {
        out[i] = undefined;
        continue;
      }
      throw new StoreIntegrityError(
        `${store} store: the reply for ${describe(keys[i])} holds an entry written under another key (the connection is out of step; not served, reconnecting)`,
        store,
        'getMany',
      );
    }
    out[i] = e;
  }
  return out;
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
