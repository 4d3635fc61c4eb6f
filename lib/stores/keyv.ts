/**
 * Any Keyv instance (or Keyv storage adapter) as a fragcache store.
 * Entries are written as strings in fragcache's own format (no JSON of the body), and Keyv's own
 * serializer is bypassed, so what the backend holds is exactly {@link encodeEntry}'s output.
 * @module
 */
import path from 'node:path';
import Keyv, { type KeyvStoreAdapter } from 'keyv';
import { decodeEntry, encodeEntry, type Entry } from '../entry';
import { OptionError } from '../errors';
import type { Store, StoreWrite } from '../store';

/** Options of {@link KeyvStore}. */
export interface KeyvStoreOptions {
  /** Name in messages and events (default `keyv`). */
  kind?: string;
  /** True when several processes may share the backend (default: true unless it is Keyv's in-memory Map). */
  shared?: boolean;
}

/**
 * keyv-file adapters by file, in this process: two adapters on one file each keep their own copy of the data and
 * overwrite each other's writes, so a second one is refused (the same adapter may be shared).
 */
const keyvFiles = new Map<string, WeakRef<object>>();
function claimKeyvFile(adapter: unknown): void {
  const file = (adapter as { opts?: { filename?: unknown } } | undefined)?.opts?.filename;
  if (typeof file !== 'string' || (adapter as object).constructor?.name !== 'KeyvFile') return;
  const resolved = path.resolve(file);
  const holder = keyvFiles.get(resolved)?.deref();
  if (holder && holder !== adapter) {
    throw new OptionError('store', file, 'another keyv-file adapter in this process already uses this file, and the two would overwrite each other\'s data: share one adapter, or use sqlite://');
  }
  keyvFiles.set(resolved, new WeakRef(adapter as object));
}

/**
 * True for a Keyv instance, recognised by its shape: `instanceof` fails when the app imports keyv as an ES module
 * and fragcache requires it as CommonJS (two copies of the class), or when the app has its own keyv version.
 */
export function isKeyv(x: unknown): x is Keyv {
  if (typeof x !== 'object' || x === null) return false;
  if (x instanceof Keyv) return true;
  const k = x as Record<string, unknown>;
  return (
    typeof k.get === 'function' &&
    typeof k.set === 'function' &&
    typeof k.delete === 'function' &&
    typeof k.getMany === 'function' &&
    'store' in k &&
    typeof k.store === 'object' &&
    k.store !== null &&
    typeof k.hooks === 'object' &&
    k.hooks !== null
  );
}

/**
 * Wraps a Keyv. Atomic `add` and locks need backend support, which generic Keyv lacks: `add` here is a
 * read then a write (a race only costs an extra miss, never a stale hit; see the README).
 */
export class KeyvStore implements Store {
  readonly kind: string;
  readonly shared: boolean;
  readonly keyv: Keyv;

  constructor(keyvOrAdapter: Keyv | KeyvStoreAdapter | Map<unknown, unknown>, options: KeyvStoreOptions = {}) {
    this.keyv =
      isKeyv(keyvOrAdapter)
        ? keyvOrAdapter
        : new Keyv({ store: keyvOrAdapter as KeyvStoreAdapter, namespace: 'fragcache' });
    claimKeyvFile(this.keyv.store);
    // fragcache writes strings in its own format, so an in-process Map needs no JSON envelope around them.
    // Adapters (Redis, SQLite…) need a string from Keyv: keep Keyv's serializer for them.
    if (this.keyv.store instanceof Map) {
      this.keyv.serialize = undefined;
      this.keyv.deserialize = undefined;
    }
    this.kind = options.kind ?? 'keyv';
    this.shared = options.shared ?? !(this.keyv.store instanceof Map);
  }

  /**
   * Keyv 5 namespaces a single key unless it already starts with `namespace:`, but always namespaces the keys of
   * its array methods: with a namespace equal to the cache's prefix, the two would address different keys. Then
   * use the single-key methods only (as `set` and `add` do).
   */
  private clash(keys: readonly string[]): boolean {
    const ns = (this.keyv as { namespace?: string }).namespace;
    return !!ns && keys.some((k) => k.startsWith(`${ns}:`));
  }

  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    if (!keys.length) return [];
    const raw = (this.clash(keys) ? await Promise.all(keys.map((k) => this.keyv.get(k))) : await this.keyv.getMany([...keys])) as unknown[];
    return raw.map((r) => (r === undefined || r === null ? undefined : decodeEntry(r)));
  }

  async setMany(writes: readonly StoreWrite[]): Promise<void> {
    const results = await Promise.all(writes.map((w) => this.keyv.set(w.key, encodeEntry(w.entry), w.ttlMs ?? undefined)));
    if (results.some((ok) => ok === false)) throw new Error('the store refused a write');
  }

  /** Adds in progress, by key: chained so that `add` is atomic within this process at least. */
  private readonly adding = new Map<string, Promise<boolean>>();

  async add(key: string, entry: Entry, ttlMs: number | null): Promise<boolean> {
    const previous = this.adding.get(key);
    const attempt = (async () => {
      if (previous) await previous.catch(() => undefined);
      if ((await this.keyv.get(key)) !== undefined) return false;
      await this.setMany([{ key, entry, ttlMs }]);
      return true;
    })();
    this.adding.set(key, attempt);
    try {
      return await attempt;
    } finally {
      if (this.adding.get(key) === attempt) this.adding.delete(key);
    }
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    if (!keys.length) return;
    if (this.clash(keys)) await Promise.all(keys.map((k) => this.keyv.delete(k)));
    else await this.keyv.delete([...keys]);
  }

  async clear(prefix: string): Promise<number | undefined> {
    const keys: string[] = [];
    for await (const k of this.keys(prefix)) keys.push(k);
    await this.deleteMany(keys);
    return keys.length;
  }

  async *keys(prefix: string): AsyncIterable<string> {
    if (!this.keyv.iterator) throw new Error(`this Keyv store cannot list its keys`);
    for await (const [k] of this.keyv.iterator(undefined) as AsyncIterable<[string, unknown]>) {
      if (typeof k === 'string' && k.startsWith(prefix)) yield k;
    }
  }

  async close(): Promise<void> {
    await this.keyv.disconnect?.();
  }
}
