/**
 * The default store: in-process, bounded by bytes, least-recently-used eviction (isaacs' lru-cache).
 * Entries are kept as objects (no JSON on the hot path) with flattened strings.
 * @module
 */
import { LRUCache } from 'lru-cache';
import type { Entry } from '../entry';
import { OptionError } from '../errors';
import type { Store, StoreWrite, SyncStore } from '../store';

/** Options of {@link MemoryStore}. */
export interface MemoryStoreOptions {
  /**
   * Upper bound of the memory the entries take, in bytes (default 64 MiB). An entry is counted as
   * 2 bytes per character (V8's worst case) of everything it keeps (key, body, tags, metadata) plus 200
   * bytes; the least recently used entries are evicted to stay under it. An entry larger than the whole
   * bound is not stored.
   */
  maxBytes?: number;
}

const ENTRY_OVERHEAD = 200;

/**
 * Where {@link keepFlat} puts its result. The result of `s | 0` must be used: once hot, an optimising
 * compiler drops an unused conversion, and with it the flattening (measured: ropes then stay, ~2.3× the memory).
 */
let flatSink = 0;

/** Makes V8 flatten a rope body in place before it is kept (idempotent and cheap on a flat string). */
function keepFlat(s: string): void {
  flatSink ^= (s as unknown as number) | 0;
}

/**
 * A fragment variant's tag version (`prefix:tag:v/…`, one per variant ever rendered) is kept as its bare
 * version string, which the variant's entries share: an Entry object and a boxed timestamp around it would
 * cost more than the string (measured: 70 B per cached fragment). Reads wrap it again, with `created` 0:
 * nothing reads the age of a variant tag (page caching checks `created` of user tags, kept whole).
 */
type Slot = Entry | string;

function isVariantTagKey(key: string): boolean {
  const i = key.indexOf(':');
  return i >= 0 && key.startsWith(':tag:v/', i);
}

function pack(key: string, e: Entry): Slot {
  const plain = e.expires === null && e.tags === undefined && e.meta === undefined && !e.json;
  return plain && isVariantTagKey(key) ? e.body : e;
}

function unpack(slot: Slot | undefined): Entry | undefined {
  return typeof slot === 'string' ? { body: slot, created: 0, expires: null } : slot;
}

/** Bytes of a JSON-like value (strings 2 bytes a character at worst, 16 per other slot). */
function sizeOf(v: unknown, depth = 0): number {
  if (typeof v === 'string') return 2 * v.length + 16;
  if (typeof v !== 'object' || v === null || depth > 8) return 16;
  let n = 32;
  if (Array.isArray(v)) for (const x of v) n += sizeOf(x, depth + 1);
  else for (const k in v) n += 2 * k.length + 16 + sizeOf((v as Record<string, unknown>)[k], depth + 1);
  return n;
}

/**
 * Bytes an entry is counted for: everything it keeps (its key, body, tags, metadata: a page's URL and
 * headers) at 2 bytes a character at worst, and a fixed overhead. A bound that left any of them out could
 * be blown by traffic (long URLs, big headers).
 */
function entrySize(slot: Slot, key: string): number {
  const k = 2 * key.length;
  if (typeof slot === 'string') return 2 * slot.length + k + ENTRY_OVERHEAD;
  const e = slot;
  let n = 2 * e.body.length + k + ENTRY_OVERHEAD;
  // An outer fragment inherits the tags of everything inside it: they can outweigh the body.
  if (e.tags) for (const t of e.tags) n += 2 * t.length + 20;
  if (e.meta) n += sizeOf(e.meta);
  return n;
}

/** In-process store. Not shared between processes: use Redis or Memcached for that. */
export class MemoryStore implements Store {
  readonly kind = 'memory';
  readonly shared = false;
  /** Same-tick access (used by renders, so they need one pass). */
  readonly sync: SyncStore;
  private readonly lru: LRUCache<string, Slot>;
  /**
   * Grows whenever a tag version may have changed (a tag key written, anything deleted or evicted). An entry
   * validated against the tag versions at generation g is still valid while the generation is g, so a hit
   * needs no tag look-ups at all.
   */
  private generation = 0;

  constructor(options: MemoryStoreOptions = {}) {
    const maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) {
      throw new OptionError('maxBytes', maxBytes, 'expected a positive whole number of bytes');
    }
    this.lru = new LRUCache<string, Slot>({
      maxSize: maxBytes,
      sizeCalculation: entrySize,
      // Anything leaving the store (deleted, evicted, replaced, expired) may be a tag version: see `generation`.
      dispose: () => void this.generation++,
    });
    const lru = this.lru;
    const set = (key: string, entry: Entry, ttlMs: number | null) => {
      if (ttlMs === null || ttlMs > 0) {
        keepFlat(entry.body);
        if (key.includes(':tag:')) this.generation++;
        lru.set(key, pack(key, entry), ttlMs ? { ttl: ttlMs } : undefined);
      }
    };
    this.sync = {
      generation: () => this.generation,
      get: (key) => unpack(lru.get(key)),
      set,
      add: (key, entry, ttlMs) => {
        if (lru.has(key)) return false;
        set(key, entry, ttlMs);
        return true;
      },
      delete: (key) => void lru.delete(key),
    };
  }

  /** Bytes currently counted against `maxBytes`. */
  get bytes(): number {
    return this.lru.calculatedSize;
  }

  async add(key: string, entry: Entry, ttlMs: number | null): Promise<boolean> {
    return this.sync.add(key, entry, ttlMs);
  }

  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    return keys.map((k) => unpack(this.lru.get(k)));
  }

  async setMany(writes: readonly StoreWrite[]): Promise<void> {
    for (const w of writes) this.sync.set(w.key, w.entry, w.ttlMs);
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const k of keys) this.lru.delete(k);
  }

  async clear(prefix: string): Promise<number> {
    let n = 0;
    for (const k of [...this.lru.keys()]) {
      if (k.startsWith(prefix)) {
        this.lru.delete(k);
        n++;
      }
    }
    return n;
  }

  async *keys(prefix: string): AsyncIterable<string> {
    for (const k of [...this.lru.keys()]) if (k.startsWith(prefix)) yield k;
  }

  async close(): Promise<void> {}
}
