/**
 * The cache: keys, tag versions, the low-level API (`get/set/delete/has/clear/wrap`), invalidation,
 * stats and events, over one {@link Store}.
 *
 * Invalidation is by tag versions (as Symfony's TagAwareAdapter): every entry records, for each of its
 * tags, the tag's version read *before* its body was produced; invalidating a tag writes a new random
 * version, so every entry stamped with the old one is a miss from then on. A tag whose version record is
 * missing (never written, or evicted) invalidates every entry that carries it, so eviction can never make
 * an old entry valid again. Every fragment carries a tag for its name and one for its variant, and
 * inherits the tags of the fragments rendered inside it: that is how invalidating an inner fragment also
 * drops every fragment that contains it.
 * @module
 */
import { EventEmitter } from 'node:events';
import type { StoreBudget } from './budget';
import { parseTtl, type Ttl } from './duration';
import { flatten, tagKeysOf, tagPairs, type Entry } from './entry';
import { FragcacheError, OptionError, StoreError } from './errors';
import { createdVersion, invalidationVersion, StoreClock } from './fencing';
import { StoreGuard, type GuardOptions } from './guard';
import { encodeValue, hash, nameTag, userTag, variantTag } from './keys';
import type { Store, StoreWrite } from './store';
import type { FragcacheWarning } from './warnings';

/** How long the record written by an invalidation lives (7 days): see {@link FragmentCache.bumpTags}. */
export const BUMP_TTL_MS = 7 * 24 * 60 * 60 * 1000;

/** Options of {@link FragmentCache}. */
export interface CacheOptions {
  /**
   * Namespace of every key this cache writes (default `"fc"`; letters, digits, `_ - .`). Caches with different
   * prefixes never see each other's entries, and `clear()` removes only its own prefix.
   */
  prefix?: string;
  /** Default version (default 1). Entries written under one version are invisible under another. */
  version?: number | string;
  /** Time budget and circuit breaker of store calls. */
  guard?: GuardOptions;
  /** Report a repeated store error at most once per this many ms through the `error` event (default 10000). */
  errorInterval?: number;
  /** Where events go (default: this cache). The engine passes itself, so `engine.on(…)` sees every store's events. */
  events?: EventEmitter<CacheEvents>;
  /**
   * Pages stored through this cache whose request start is not known in the store's clock: how long output of a
   * tag invalidated (or created) just before may live, ms (default 1000; the engine passes its own
   * `unknownSinceWindow`).
   */
  unknownSinceWindow?: number;
}

/** Counters returned by {@link FragmentCache.stats}. */
export interface Counters {
  hits: number;
  misses: number;
  stores: number;
  stale: number;
  errors: number;
  /**
   * Fragments rendered but not stored because their data was loaded before one of their tags was invalidated
   * (the render's `since` is older than the invalidation): storing them would bring old content back.
   */
  fenced: number;
}

/** Options of the low-level `set`/`wrap`. */
export interface SetOptions {
  /** Seconds, a duration string, or `null` for no expiry (default: no expiry). `0` stores nothing. */
  ttl?: Ttl;
  /** Key version (default: the cache's version). */
  version?: number | string;
  /** Tags for {@link FragmentCache.invalidateTag}. */
  tags?: readonly string[];
}

/** Payload of the `hit`, `miss`, `stale` and `store` events. */
export interface FragmentEvent {
  /** Fragment name, or the low-level key. */
  name: string;
  key: string;
  /** Age of the served entry in ms (hits). */
  age?: number;
}

/** Events a cache emits. */
export interface CacheEvents {
  hit: [FragmentEvent];
  miss: [FragmentEvent];
  stale: [FragmentEvent];
  store: [FragmentEvent];
  /** A fragment was shown but not stored: its data was loaded before one of its tags was invalidated. */
  fenced: [FragmentEvent];
  invalidate: [{ kind: 'name' | 'variant' | 'tag' | 'key' | 'clear'; target: string }];
  error: [FragcacheError];
  /** Something wrong with a template that does not fail renders: see {@link FragcacheWarning}. */
  warning: [FragcacheWarning];
}

interface Deferred {
  promise: Promise<Entry | undefined>;
  resolve(e: Entry | undefined): void;
  reject(err: unknown): void;
}

function deferred(): Deferred {
  let resolve!: (e: Entry | undefined) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<Entry | undefined>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // a claim nobody waits on must not be an unhandled rejection
  return { promise, resolve, reject };
}

/** The cache over one store. Created by `createEngine` (as `engine.cache`) or directly. */
export class FragmentCache extends EventEmitter<CacheEvents> {
  readonly store: Store;
  readonly guard: StoreGuard;
  readonly prefix: string;
  readonly version: string;
  /** Start of every key of this cache and version: `prefix:version:`. */
  readonly base: string;
  /** Fragments and values being produced in this process right now (single-flight). */
  readonly inflight = new Map<string, Deferred>();
  private readonly counters = new Map<string, Counters>();
  private readonly total: Counters = { hits: 0, misses: 0, stores: 0, stale: 0, errors: 0, fenced: 0 };
  private readonly errorInterval: number;
  private readonly lastReported = new Map<string, number>();
  /** The emitter events go to (this cache, or the engine that owns it). */
  readonly events: EventEmitter<CacheEvents>;
  /** @internal Offset to the store's clock, in which invalidation times are stamped (see `fencing.ts`). */
  readonly clock: StoreClock;

  /** See {@link CacheOptions.unknownSinceWindow}. */
  readonly unknownSinceWindow: number;

  constructor(store: Store, options: CacheOptions = {}) {
    super();
    this.store = store;
    const prefix = options.prefix ?? 'fc';
    // No ":" in a prefix: then no prefix's keys can start with another prefix's "prefix:", and clear() stays exact.
    if (typeof prefix !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(prefix)) {
      throw new OptionError('prefix', prefix, 'expected 1 to 64 letters, digits, "_", "-" or "."');
    }
    const version = FragmentCache.checkVersion(options.version ?? 1);
    this.prefix = prefix;
    this.version = String(version);
    this.base = `${prefix}:${this.version}:`;
    this.guard = new StoreGuard(store, options.guard);
    store.reportTo?.((err) => this.report(err));
    this.errorInterval = options.errorInterval ?? 10_000;
    this.unknownSinceWindow = options.unknownSinceWindow ?? 1000;
    this.events = options.events ?? this;
    this.clock = new StoreClock(store.time ? () => store.time!() : undefined);
  }

  /**
   * Store key of the time of the latest invalidation of this prefix (any tag). A tag record found missing may
   * have been evicted after an invalidation: the version that replaces it carries this time, which is not
   * earlier than any invalidation it may hide (see `fencing.ts`). Missing itself: no invalidation known (the
   * record is the most used of all, read with every new tag and written with every invalidation, so an LRU
   * store evicts it last).
   */
  get lastInvalidationKey(): string {
    return `${this.prefix}:tag:last`;
  }

  private static lastTime(e: Entry | undefined): number {
    const n = e ? Number(e.body) : 0;
    return Number.isFinite(n) ? n : 0;
  }

  // ---------------------------------------------------------------- keys and tags

  /** A version must not contain ":" (else it could forge another key's prefix). */
  private static checkVersion(version: unknown): string | number {
    if (!['number', 'string'].includes(typeof version) || !/^[A-Za-z0-9_.-]{1,32}$/.test(String(version))) {
      throw new OptionError('version', version, 'expected a number or up to 32 letters, digits, "_", "-" or "."');
    }
    return version as string | number;
  }

  /** Store key of a tag's version record. Tag versions live outside the cache version, so they survive a version bump. */
  tagKey(tagId: string): string {
    return `${this.prefix}:tag:${tagId}`;
  }

  /** Memo of name-tag keys: every entry of a fragment holds its name tag's key, so they share one string. */
  private readonly nameTagKeys = new Map<string, string>();

  /** Store key of the tag every variant of a fragment name carries (`np`: the name's key part). */
  nameTagKey(np: string): string {
    let k = this.nameTagKeys.get(np);
    if (k === undefined) this.nameTagKeys.set(np, (k = this.tagKey(`n/${np}`)));
    return k;
  }

  /** Store key of a low-level value. */
  valueKey(key: string, version?: number | string): string {
    if (typeof key !== 'string' || key === '') throw new OptionError('key', key, 'expected a non-empty string');
    const base = version === undefined ? this.base : `${this.prefix}:${String(FragmentCache.checkVersion(version))}:`;
    const enc = encodeValue(key);
    return `${base}k:${enc.length <= 80 && /^[\x21-\x7e]*$/.test(enc) ? '=' + enc : '#' + hash(enc)}`;
  }

  /** Tag ids (not yet store keys) for user tags; validates them. */
  userTags(tags: unknown, where = 'tags'): string[] {
    if (tags === undefined || tags === null) return [];
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string' && t.length > 0)) {
      throw new OptionError(where, tags, 'expected a list of non-empty strings');
    }
    return tags.map(userTag);
  }

  /**
   * Reads tag versions; creates the missing ones (with `add`, so a concurrent invalidation wins). A created
   * record lives `ttlMs` (`null`: until evicted): give the longest lifetime of the entries that will carry it,
   * so that traffic leaves no permanent key (a record that expires only makes its entries misses).
   */
  async tagVersions(tagKeys: readonly string[], ttlMs: number | null = null, budget?: StoreBudget): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    if (!tagKeys.length) return out;
    const sync = this.store.sync;
    if (sync) {
      // In-process: bounded by the store's LRU, so the records need no TTL (and keep their compact form).
      for (const k of tagKeys) out.set(k, this.tagVersionSync(k));
      return out;
    }
    // The store's TTL bounds the record, not `expires`: writes of longer-lived entries extend it (writeMany). A store
    // that cannot extend a record (Memcached, a plain Keyv) keeps it until evicted, as it evicts by LRU anyway: else
    // a tag shared by a short-lived and a long-lived fragment would drop the long one with the short one's record.
    if (!this.store.extend) ttlMs = null;
    const record = (body: string): Entry => ({ body, created: Date.now(), expires: null });
    const found = await this.guard.run('getMany', () => this.store.getMany([...tagKeys, this.lastInvalidationKey]), undefined, budget);
    const missing: string[] = [];
    tagKeys.forEach((k, i) => (found[i] ? out.set(k, found[i]!.body) : missing.push(k)));
    const last = FragmentCache.lastTime(found[tagKeys.length]);
    await Promise.all(
      missing.map(async (k) => {
        const v = createdVersion(last);
        const added = await this.guard.run('add', () => this.store.add(k, record(v), ttlMs), undefined, budget);
        if (added) out.set(k, v);
        else {
          // Someone created it first (maybe an invalidation): use theirs.
          const [again] = await this.guard.run('getMany', () => this.store.getMany([k]), undefined, budget);
          if (again) out.set(k, again.body);
          else {
            // The key holds something unreadable (garbage, another format version) or vanished since: replace it
            // with a new version. Safe: no entry carries a version that was never readable, so none revives.
            await this.guard.run('setMany', () => this.store.setMany([{ key: k, entry: record(v), ttlMs }]), undefined, budget);
            out.set(k, v);
          }
        }
      }),
    );
    return out;
  }

  /** Same-tick tag version (memory store). */
  tagVersionSync(tagKey: string): string {
    const sync = this.store.sync!;
    const e = sync.get(tagKey);
    if (e) return e.body;
    const v = createdVersion(FragmentCache.lastTime(sync.get(this.lastInvalidationKey)));
    sync.set(tagKey, { body: v, created: Date.now(), expires: null }, null);
    return v;
  }

  /** True when every tag the entry was stamped with still has the same version. */
  static tagsMatch(entry: Entry, versions: { get(k: string): string | undefined }): boolean {
    const tags = entry.tags;
    if (!tags) return true;
    for (let i = 0; i < tags.length; i += 2) if (versions.get(tags[i]) !== tags[i + 1]) return false;
    return true;
  }

  // ---------------------------------------------------------------- guarded store access

  /** Reads entries; a store failure (or a spent request `budget`) is reported and reads as all-miss. */
  async readMany(keys: readonly string[], budget?: StoreBudget): Promise<(Entry | undefined)[]> {
    if (this.store.sync) return keys.map((k) => this.store.sync!.get(k));
    try {
      return await this.guard.run('getMany', () => this.store.getMany(keys), undefined, budget);
    } catch (err) {
      this.report(err);
      return keys.map(() => undefined);
    }
  }

  /** Writes entries; a store failure is reported, never thrown. True when written. */
  async writeMany(writes: readonly StoreWrite[]): Promise<boolean> {
    if (!writes.length) return true;
    if (this.store.sync) {
      for (const w of writes) this.store.sync.set(w.key, w.entry, w.ttlMs);
      return true;
    }
    const extend = this.store.extend && this.tagExtensions(writes);
    try {
      // The tag records the entries depend on live at least as long as they do (a record that expires first
      // only makes them misses, but early). Failing to extend is reported, never fails the write.
      const extended = extend?.length ? this.guard.run('extend', () => this.store.extend!(extend)).catch((err) => this.report(err)) : undefined;
      await Promise.all([this.guard.run('setMany', () => this.store.setMany(writes)), extended]);
      return true;
    } catch (err) {
      this.report(err);
      return false;
    }
  }

  /** The tag records of the written entries, with the longest TTL of the entries carrying each (none: no expiry). */
  private tagExtensions(writes: readonly StoreWrite[]): { key: string; ttlMs: number }[] {
    const longest = new Map<string, number>();
    // Page URL records carry their own expiry and are kept by the page cache itself: never extended here.
    const urlRecords = [this.tagKey('p/'), this.tagKey('q/')];
    for (const w of writes) {
      const tags = w.entry.tags;
      if (!tags || w.ttlMs === null) continue;
      for (let i = 0; i < tags.length; i += 2) {
        if (!urlRecords.some((u) => tags[i].startsWith(u))) longest.set(tags[i], Math.max(longest.get(tags[i]) ?? 0, w.ttlMs));
      }
    }
    return [...longest].map(([key, ttlMs]) => ({ key, ttlMs }));
  }

  /** Reports a store error through the `error` event, at most once per `errorInterval` for the same message. */
  report(err: unknown): void {
    this.count('', 'errors');
    const error = err instanceof FragcacheError ? err : new StoreError(String((err as Error)?.message ?? err), this.store.kind, 'unknown', { cause: err });
    const now = Date.now();
    const last = this.lastReported.get(error.message);
    if (last !== undefined && now - last < this.errorInterval) return;
    this.lastReported.set(error.message, now);
    if (this.lastReported.size > 100) this.lastReported.clear();
    if (this.events.listenerCount('error') > 0) this.events.emit('error', error);
    else process.emitWarning(`fragcache: ${error.message}`, { code: 'FRAGCACHE_STORE' });
  }

  // ---------------------------------------------------------------- stats

  /** Counts an outcome for a fragment name ('' counts only in the total). */
  count(name: string, what: keyof Counters): void {
    this.total[what]++;
    if (!name) return;
    let c = this.counters.get(name);
    if (!c) this.counters.set(name, (c = { hits: 0, misses: 0, stores: 0, stale: 0, errors: 0, fenced: 0 }));
    c[what]++;
  }

  /** Hits, misses, stores, stale serves and errors, overall and per fragment name, since creation. */
  stats(): Counters & { fragments: Record<string, Counters> } {
    const fragments: Record<string, Counters> = {};
    for (const [name, c] of this.counters) fragments[name] = { ...c };
    return { ...this.total, fragments };
  }

  // ---------------------------------------------------------------- low-level API

  /** Builds the entry for a value: strings are kept as they are, anything else as JSON. */
  private entryFor(value: unknown, ttlMs: number | null, tags: readonly string[] | undefined): Entry {
    const now = Date.now();
    const json = typeof value !== 'string';
    let body: string;
    if (json) {
      const s = JSON.stringify(value);
      if (s === undefined) throw new OptionError('value', value, 'expected a value JSON can hold');
      body = s;
    } else body = flatten(value as string);
    return { body, created: now, expires: ttlMs === null ? null : now + ttlMs, tags, json: json || undefined };
  }

  private ttlMs(ttl: Ttl | undefined): number | null {
    if (ttl === undefined) return null;
    const r = parseTtl(ttl);
    if ('error' in r) throw new OptionError('ttl', ttl, r.error.replace(/^ttl /, ''));
    return r.ms;
  }

  /** A valid (unexpired, not invalidated) entry for a full store key, or undefined. */
  private async readValid(storeKey: string): Promise<Entry | undefined> {
    const [entry] = await this.readMany([storeKey]);
    if (!entry || (entry.expires !== null && entry.expires <= Date.now())) return undefined;
    return (await this.stillValid(entry)) ? entry : undefined;
  }

  /** True when every tag of the entry still has the version it was stamped with (read from the store now). */
  private async stillValid(entry: Entry): Promise<boolean> {
    if (!entry.tags) return true;
    try {
      return FragmentCache.tagsMatch(entry, await this.tagVersions(tagKeysOf(entry)));
    } catch (err) {
      this.report(err);
      return false;
    }
  }

  private static valueOf(entry: Entry): unknown {
    return entry.json ? JSON.parse(entry.body) : entry.body;
  }

  /** The value stored under `key`, or `undefined`. A store failure reads as a miss (and is reported). */
  async get<T = unknown>(key: string, options: { version?: number | string } = {}): Promise<T | undefined> {
    const k = this.valueKey(key, options.version);
    const entry = await this.readValid(k);
    this.count('', entry ? 'hits' : 'misses');
    this.events.emit(entry ? 'hit' : 'miss', { name: key, key: k });
    return entry ? (FragmentCache.valueOf(entry) as T) : undefined;
  }

  /** True when a valid value is stored under `key`. */
  async has(key: string, options: { version?: number | string } = {}): Promise<boolean> {
    return (await this.readValid(this.valueKey(key, options.version))) !== undefined;
  }

  /**
   * Stores a value (strings as they are, anything else as JSON). Resolves false when the store failed
   * (the failure is reported through `error`) or `ttl` is 0.
   */
  async set(key: string, value: unknown, options: SetOptions = {}): Promise<boolean> {
    const k = this.valueKey(key, options.version);
    const ttlMs = this.ttlMs(options.ttl);
    if (ttlMs === 0) return false;
    const tagIds = this.userTags(options.tags);
    let versions: Map<string, string> | undefined;
    if (tagIds.length) {
      try {
        versions = await this.tagVersions(tagIds.map((t) => this.tagKey(t)));
      } catch (err) {
        this.report(err);
        return false;
      }
    }
    return this.put(k, this.entryFor(value, ttlMs, versions && tagPairs(versions)), ttlMs, key);
  }

  private async put(k: string, entry: Entry, ttlMs: number | null, name: string): Promise<boolean> {
    if (this.store.sync) this.store.sync.set(k, entry, ttlMs);
    else {
      try {
        await this.guard.run('setMany', () => this.store.setMany([{ key: k, entry, ttlMs }]));
      } catch (err) {
        this.report(err);
        return false;
      }
    }
    this.count('', 'stores');
    this.events.emit('store', { name, key: k });
    return true;
  }

  /** Deletes one value. Rejects when the store fails: the caller must know the value may still be there. */
  async delete(key: string, options: { version?: number | string } = {}): Promise<void> {
    const k = this.valueKey(key, options.version);
    await this.guard.run('deleteMany', () => this.store.deleteMany([k]));
    this.events.emit('invalidate', { kind: 'key', target: key });
  }

  /**
   * Removes every entry this cache wrote (its prefix), and nothing else in the store. Rejects when the
   * store fails.
   */
  async clear(): Promise<void> {
    // Clearing is slow on a large remote store: give it a generous budget.
    await this.guard.run('clear', () => this.store.clear(`${this.prefix}:`), Math.max(this.guard.timeout, 60_000));
    this.events.emit('invalidate', { kind: 'clear', target: this.prefix });
  }

  /**
   * Returns the value under `key`, or runs `fn`, stores its result and returns it. Concurrent calls in this
   * process for the same key run `fn` once and share its result or its error; an error is not stored.
   */
  async wrap<T>(key: string, fn: () => T | Promise<T>, options: SetOptions = {}): Promise<T> {
    const k = this.valueKey(key, options.version);
    const ttlMs = this.ttlMs(options.ttl);
    const tagIds = this.userTags(options.tags);
    const hit = await this.readValid(k);
    if (hit) {
      this.count('', 'hits');
      this.events.emit('hit', { name: key, key: k, age: Date.now() - hit.created });
      return FragmentCache.valueOf(hit) as T;
    }
    const running = this.inflight.get(k);
    if (running) {
      const e = await running.promise;
      // Check it against the tag versions as they are now: an invalidation may have resolved meanwhile.
      if (e && (await this.stillValid(e))) return FragmentCache.valueOf(e) as T;
    }
    const d = deferred();
    this.inflight.set(k, d);
    this.count('', 'misses');
    this.events.emit('miss', { name: key, key: k });
    try {
      let versions: Map<string, string> | undefined;
      if (tagIds.length) {
        try {
          versions = await this.tagVersions(tagIds.map((t) => this.tagKey(t)));
        } catch (err) {
          this.report(err); // store down: compute, do not store
        }
      }
      const value = await fn();
      const entry = this.entryFor(value, ttlMs, versions && tagPairs(versions));
      if (ttlMs !== 0 && (versions || !tagIds.length)) await this.put(k, entry, ttlMs, key);
      d.resolve(entry);
      // Everyone (this caller, waiters, later hits) gets the stored form: strings as they are, else a JSON copy.
      return FragmentCache.valueOf(entry) as T;
    } catch (err) {
      d.reject(err);
      throw err;
    } finally {
      this.inflight.delete(k);
    }
  }

  // ---------------------------------------------------------------- invalidation

  /** Writes new versions for tags: every entry stamped with an old one becomes a miss. Rejects on store failure. */
  async bumpTags(tagIds: readonly string[]): Promise<void> {
    // Stamped with an upper bound of the store's time: renders whose data was loaded before it do not store. If
    // the store cannot tell its time within the budget, this host's clock stands in (the invalidation matters more).
    // Invalidations are rare: a process that has not measured the clock yet (a worker, a cron job) waits for it.
    await this.clock.ready(this.guard.isOpen ? this.guard.timeout : Math.max(this.guard.timeout, 3000));
    const at = this.clock.upperSync();
    // A TTL, so that invalidating a name never stored leaves no permanent key. Safe whatever its length: once
    // the record is gone, every entry stamped with any version of the tag reads as invalid.
    const writes: StoreWrite[] = tagIds.map((t) => ({ key: this.tagKey(t), entry: { body: invalidationVersion(at), created: Date.now(), expires: Date.now() + BUMP_TTL_MS }, ttlMs: BUMP_TTL_MS }));
    // No TTL: it must outlive every tag record (one key per prefix). Not a compare-and-set: two invalidators racing
    // may leave the earlier time; see lastInvalidationKey.
    writes.push({ key: this.lastInvalidationKey, entry: { body: String(Math.ceil(at)), created: Date.now(), expires: null }, ttlMs: null });
    // Never the same-tick path, even on a same-tick store: its writes report failures instead of throwing, and an
    // invalidation that did not happen must reject.
    await this.guard.run('setMany', () => this.store.setMany(writes));
  }

  /**
   * Drops every variant of fragment `name` (in every template, whatever its digest), or with `vary` the one
   * variant, and every cached fragment that contains them. Resolves once no render can serve the old output;
   * rejects when the store failed.
   */
  async invalidate(name: string, vary?: readonly unknown[]): Promise<void> {
    if (typeof name !== 'string' || !name) throw new OptionError('name', name, 'expected a fragment name');
    if (vary !== undefined && !Array.isArray(vary)) throw new OptionError('vary', vary, 'expected an array of vary values');
    await this.bumpTags([vary ? variantTag(name, vary) : nameTag(name)]);
    this.events.emit('invalidate', { kind: vary ? 'variant' : 'name', target: name });
  }

  /** Drops every fragment, page and value tagged with any of `tags` (and what contains them). Rejects on store failure. */
  async invalidateTag(...tags: string[]): Promise<void> {
    const ids = this.userTags(tags.flat(), 'tag');
    await this.bumpTags(ids);
    for (const t of tags.flat()) this.events.emit('invalidate', { kind: 'tag', target: t });
  }

  /** Claims a key for producing in this process; returns the running claim when another caller holds it. */
  claim(key: string): { mine: true; done: Deferred } | { mine: false; running: Promise<Entry | undefined> } {
    const running = this.inflight.get(key);
    if (running) return { mine: false, running: running.promise };
    const d = deferred();
    this.inflight.set(key, d);
    return { mine: true, done: d };
  }

  /**
   * Fragments produced in this process in the last second, by key: a render that read "miss" just before another
   * render released the fragment finds it here instead of rendering it again (each render still checks the
   * entry's tag versions before using it).
   */
  private readonly recent = new Map<string, { entry?: Entry; error?: unknown; at: number }>();

  /**
   * What this process produced for a key in the last second: the entry, or the error of a render that failed
   * after `since`, a `performance.now()` time (a render that missed concurrently shares that error, as a waiter would).
   */
  recentOutcome(key: string, since: number): { entry?: Entry; error?: unknown } | undefined {
    const r = this.recent.get(key);
    if (!r || performance.now() - r.at >= 1000) return undefined;
    if (r.entry) return { entry: r.entry };
    // Strictly after this render's read started (monotonic clock): a render that failed before is not concurrent.
    return r.at > since ? { error: r.error } : undefined;
  }

  /** Releases a claim made with {@link claim}: with the entry, with an error, or with nothing (not produced). */
  release(key: string, outcome: { entry?: Entry; error?: unknown }): void {
    if (outcome.entry || outcome.error !== undefined) {
      const now = performance.now();
      this.recent.delete(key);
      this.recent.set(key, { ...outcome, at: now });
      // Oldest first (insertion order): drop what is over a second old.
      for (const [k, r] of this.recent) {
        if (now - r.at < 1000) break;
        this.recent.delete(k);
      }
    }
    const d = this.inflight.get(key);
    if (!d) return;
    this.inflight.delete(key);
    if (outcome.error !== undefined) d.reject(outcome.error);
    else d.resolve(outcome.entry);
  }

  /** True once {@link close} was called. */
  closed = false;

  /** Closes the store. */
  async close(): Promise<void> {
    this.closed = true;
    await this.store.close();
  }
}
