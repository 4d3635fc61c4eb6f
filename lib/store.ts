/**
 * The contract every backend implements (Django's `BaseCache`, reduced to what fragments need).
 * Stores see only full keys and {@link Entry} objects; keys, tags and expiry rules live in the cache.
 * @module
 */
import type { Entry } from './entry';

/** One write. `ttlMs: null` keeps the entry until it is evicted or deleted. */
export interface StoreWrite {
  key: string;
  entry: Entry;
  ttlMs: number | null;
}

/**
 * A cache backend. Implementations: {@link MemoryStore} (default), `KeyvStore` (any Keyv, SQLite),
 * `RedisStore`, `MemcacheStore`. Methods may reject; the cache puts every call under a time budget and a
 * circuit breaker, so a store need not defend itself against slowness.
 */
export interface Store {
  /** Short name for messages and events: `memory`, `redis`, `memcache`, `sqlite`, `keyv`. */
  readonly kind: string;
  /**
   * Present when the store answers in the same tick (the memory store). A render then needs a single
   * pass, and plain synchronous `env.render()` works.
   */
  readonly sync?: SyncStore;
  /** True when several processes can share this store (Redis, Memcached, SQLite). */
  readonly shared: boolean;
  /** Reads many keys in one round trip where the backend allows; `undefined` for a miss. */
  getMany(keys: readonly string[]): Promise<(Entry | undefined)[]>;
  setMany(writes: readonly StoreWrite[]): Promise<void>;
  /** Writes only if the key is absent; true when written. Atomic where the backend allows (Redis, Memcached). */
  add(key: string, entry: Entry, ttlMs: number | null): Promise<boolean>;
  deleteMany(keys: readonly string[]): Promise<void>;
  /** Deletes every key that starts with `prefix` (and nothing else); returns how many, when known. */
  clear(prefix: string): Promise<number | undefined>;
  /**
   * Optional: makes each key live at least `ttlMs` from now, never shorter than it already does and never
   * changing its value (a tag record that an entry written now depends on). Keys that are missing or have no
   * expiry are left alone.
   */
  extend?(keys: readonly { key: string; ttlMs: number }[]): Promise<void>;
  /** Lists keys that start with `prefix`. */
  keys?(prefix: string): AsyncIterable<string>;
  /** Takes a cross-process lock; resolves to a token when taken, `undefined` when someone holds it. */
  lock?(key: string, ttlMs: number): Promise<string | undefined>;
  /** Releases a lock, only if `token` still owns it. */
  unlock?(key: string, token: string): Promise<void>;
  /**
   * Optional: the store's own clock, epoch ms (Redis `TIME`). Invalidation times are stamped in it, through an
   * offset each process measures, so that hosts whose clocks disagree still agree on which came first. A store
   * without it is judged by this host's clock (right for the memory store and SQLite, which share the host).
   */
  time?(): Promise<number>;
  /** Optional: which of these lock keys are held now (lets a waiter stop as soon as the owner let go). */
  locked?(keys: readonly string[]): Promise<boolean[]>;
  /**
   * Optional: the cache hands the store its error reporter here. A store whose same-tick calls must not throw
   * (they run inside a render) reports their failures through it, so they reach the `error` event.
   */
  reportTo?(report: (err: unknown) => void): void;
  close(): Promise<void>;
}

/** Same-tick access to an in-process store. */
export interface SyncStore {
  /**
   * Optional: a number that changes whenever any tag version may have changed (written, deleted, evicted).
   * Lets a hit skip re-validating an entry already validated at the same generation.
   */
  generation?(): number;
  get(key: string): Entry | undefined;
  set(key: string, entry: Entry, ttlMs: number | null): void;
  add(key: string, entry: Entry, ttlMs: number | null): boolean;
  delete(key: string): void;
}
