/**
 * Memcached as a fragcache store (`memcache://host:port[,host:port]`), on the memjs client that
 * `@keyv/memcache` uses. Fixes the adapter's traps:
 * - `clear()` never flushes the server: every key is folded with a generation of its namespace (the
 *   cache prefix), and clearing writes a new random generation, so old entries become unreachable and
 *   age out by LRU. Other data on the server is untouched.
 * - A sub-second TTL is rounded up to 1 s instead of becoming "never" (entries still carry their own
 *   expiry, checked on read); TTLs over 30 days are sent as absolute times, as memcached requires.
 * - Keys longer than 250 bytes or with spaces/control characters are hashed.
 * - memjs' console logging is routed to `onError`.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { hash } from '../keys';
import KeyvMemcache from '@keyv/memcache';
import { decodeEntries, encodeEntry, type Entry } from '../entry';
import { OptionError } from '../errors';
import type { Store, StoreWrite } from '../store';
import { checkParams, numberParam } from './params';

/** Options of {@link MemcacheStore}. */
export interface MemcacheStoreOptions {
  /** memjs per-operation timeout, ms (default 500; the cache's own budget is usually shorter). */
  timeoutMs?: number;
  /** Called with what memjs would have logged (server failures). */
  onError?: (err: Error) => void;
}

/** The memjs client calls this store uses (promise forms). */
interface MemjsClient {
  servers: { error(err: Error): void }[];
  get(key: string): Promise<{ value: Buffer | null }>;
  set(key: string, value: string, options: { expires?: number }): Promise<boolean>;
  add(key: string, value: string, options: { expires?: number }): Promise<boolean>;
  delete(key: string): Promise<boolean>;
  close(): void;
}

const THIRTY_DAYS_S = 30 * 24 * 3600;

/** Memcached expiry for a TTL: whole seconds, at least 1; absolute unix time beyond 30 days; 0 = never. */
export function memcacheExpiry(ttlMs: number | null, now = Date.now()): number {
  if (ttlMs === null) return 0;
  const s = Math.max(1, Math.ceil(ttlMs / 1000));
  return s > THIRTY_DAYS_S ? Math.ceil(now / 1000) + s : s;
}

/** A Memcached store. Reads of many keys go out together on one connection (pipelined), one reply each. */
export class MemcacheStore implements Store {
  readonly kind = 'memcache';
  readonly shared = true;
  readonly client: MemjsClient;
  /** Last known generation per namespace (verified on every read, see {@link getMany}). */
  private readonly generations = new Map<string, string>();

  constructor(servers: string, options: MemcacheStoreOptions = {}) {
    const timeoutMs = options.timeoutMs ?? 500;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new OptionError('timeoutMs', timeoutMs, 'expected a positive number of milliseconds');
    const logger = { log: (msg: unknown) => options.onError?.(new Error(String(msg))) };
    const adapter = new KeyvMemcache(servers, { logger, retries: 1, failover: false, timeout: timeoutMs / 1000, keepAlive: true } as never);
    this.client = adapter.client as unknown as MemjsClient;
  }

  /** Namespace of a key: what comes before its first ":" (the cache prefix). */
  private static namespace(key: string): string {
    const i = key.indexOf(':');
    return i < 0 ? '' : key.slice(0, i);
  }

  private static genKey(ns: string): string {
    return `${ns}:__gen`;
  }

  /** The current generation of a namespace, creating it when missing (or evicted: a new one hides old entries). */
  private async generation(ns: string): Promise<string> {
    const got = await this.client.get(MemcacheStore.genKey(ns));
    if (got.value) {
      const g = got.value.toString();
      this.generations.set(ns, g);
      return g;
    }
    const fresh = randomBytes(6).toString('base64url');
    if (await this.client.add(MemcacheStore.genKey(ns), fresh, { expires: 0 })) {
      this.generations.set(ns, fresh);
      return fresh;
    }
    return this.generation(ns);
  }

  /** The memcached key: namespace generation folded in; hashed when too long or not plain ASCII. */
  private realKey(key: string, gen: string): string {
    const k = `${gen}/${key}`;
    if (k.length <= 240 && /^[\x21-\x7e]+$/.test(k)) return k;
    return `${gen}/#${hash(key)}`; // injective on any string (lone surrogates too)
  }

  private async gens(keys: readonly string[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const namespaces = [...new Set(keys.map(MemcacheStore.namespace))];
    await Promise.all(namespaces.map(async (ns) => out.set(ns, await this.generation(ns))));
    return out;
  }

  /**
   * Reads the keys under the last known generation and, in the same pipeline, the generation itself; if a
   * clear() elsewhere changed it, reads again under the new one. One round trip in the common case.
   */
  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    if (!keys.length) return [];
    const namespaces = [...new Set(keys.map(MemcacheStore.namespace))];
    const known = namespaces.every((ns) => this.generations.has(ns));
    if (known) {
      const before = new Map(this.generations);
      const [gens, values] = await Promise.all([this.gens(keys), this.fetch(keys, before)]);
      if (namespaces.every((ns) => gens.get(ns) === before.get(ns))) return values;
      return this.fetch(keys, gens);
    }
    return this.fetch(keys, await this.gens(keys));
  }

  private async fetch(keys: readonly string[], gens: Map<string, string>): Promise<(Entry | undefined)[]> {
    const real = keys.map((k) => this.realKey(k, gens.get(MemcacheStore.namespace(k))!));
    const got = await Promise.allSettled(real.map((k) => this.client.get(k)));
    // With several servers, one that is down costs its own keys only: they read as misses (and are reported).
    const failed = got.find((g): g is PromiseRejectedResult => g.status === 'rejected');
    if (failed && got.every((g) => g.status === 'rejected')) throw failed.reason;
    if (failed) this.reporter?.(failed.reason);
    const raws = got.map((g) => (g.status === 'fulfilled' && g.value.value ? g.value.value.toString('utf8') : undefined));
    try {
      return decodeEntries(raws, real, 'memcache');
    } catch (err) {
      this.reset(err);
      throw err;
    }
  }

  /**
   * Drops every server connection (memjs reconnects on the next request): called when a reply cannot be trusted
   * (a reply for another key, a call abandoned over the cache's time budget). Pending requests are rejected.
   */
  reset(_reason?: unknown): void {
    this.resets++;
    for (const server of this.client.servers ?? []) {
      try {
        server.error(new Error('fragcache: connection reset (a reply could not be trusted)'));
      } catch {
        // nothing to drop
      }
    }
  }

  /** Connections dropped by {@link reset} so far. */
  resets = 0;

  private reporter: ((err: unknown) => void) | undefined;

  reportTo(report: (err: unknown) => void): void {
    this.reporter = report;
  }

  async setMany(writes: readonly StoreWrite[]): Promise<void> {
    if (!writes.length) return;
    const gens = await this.gens(writes.map((w) => w.key));
    const ok = await Promise.all(
      writes.map((w) => {
        const real = this.realKey(w.key, gens.get(MemcacheStore.namespace(w.key))!);
        return this.client.set(real, encodeEntry(w.entry, real), { expires: memcacheExpiry(w.ttlMs) });
      }),
    );
    if (ok.some((x) => !x)) throw new Error('memcached refused a write');
  }

  /** Native ADD: atomic across processes. */
  async add(key: string, entry: Entry, ttlMs: number | null): Promise<boolean> {
    const gens = await this.gens([key]);
    const real = this.realKey(key, gens.get(MemcacheStore.namespace(key))!);
    return this.client.add(real, encodeEntry(entry, real), { expires: memcacheExpiry(ttlMs) });
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    if (!keys.length) return;
    const gens = await this.gens(keys);
    await Promise.all(keys.map((k) => this.client.delete(this.realKey(k, gens.get(MemcacheStore.namespace(k))!))));
  }

  /**
   * Clears a whole namespace (`prefix` must be `"name:"`) by writing a new generation: never a server flush.
   * Returns `undefined` (memcached cannot count keys).
   */
  async clear(prefix: string): Promise<undefined> {
    const m = /^([^:]*):$/.exec(prefix);
    if (!m) throw new OptionError('prefix', prefix, 'memcached can only clear a whole namespace ("name:")');
    const fresh = randomBytes(6).toString('base64url');
    if (!(await this.client.set(MemcacheStore.genKey(m[1]), fresh, { expires: 0 }))) throw new Error('memcached refused a write');
    this.generations.set(m[1], fresh);
    return undefined;
  }

  /** ADD of a token: whoever adds first holds the lock until it expires (rounded up to whole seconds). */
  async lock(key: string, ttlMs: number): Promise<string | undefined> {
    const token = randomBytes(12).toString('base64url');
    const ok = await this.client.add(`lock/${this.realKey(key, '')}`, token, { expires: memcacheExpiry(ttlMs) });
    return ok ? token : undefined;
  }

  /** Which locks are held (one get each, in parallel). */
  async locked(keys: readonly string[]): Promise<boolean[]> {
    return Promise.all(keys.map(async (key) => (await this.client.get(`lock/${this.realKey(key, '')}`)).value != null));
  }

  /** Deletes the lock if `token` still owns it (read then delete: memjs has no CAS delete; the window is one round trip). */
  async unlock(key: string, token: string): Promise<void> {
    const k = `lock/${this.realKey(key, '')}`;
    const got = await this.client.get(k);
    if (got.value?.toString() === token) await this.client.delete(k);
  }

  async close(): Promise<void> {
    this.client.close();
  }
}

/** `memcache://host:port[,host:port]` factory for {@link createStore}. */
export function memcacheFromUrl(url: string, options: Record<string, unknown> = {}): MemcacheStore {
  const m = /^memcache:\/\/([^/?#]+)\/?(?:\?(.*))?$/i.exec(url);
  if (!m) throw new OptionError('store', url, 'expected memcache://host:port[,host:port]');
  for (const server of m[1].split(',')) {
    const port = /:(\d*)$/.exec(server)?.[1];
    if (port !== undefined && !(Number(port) > 0 && Number(port) < 65536)) throw new OptionError('store', url, `bad port in "${server}": expected host:port with a port from 1 to 65535`);
    if (port === undefined && /:/.test(server.replace(/^\[.*\]/, ''))) throw new OptionError('store', url, `bad server "${server}": expected host:port`);
  }
  const q = new URLSearchParams(m[2] ?? '');
  checkParams(url, q, ['timeout']);
  const timeoutMs = options.timeoutMs ?? numberParam(q, 'timeout', 'milliseconds');
  return new MemcacheStore(m[1], { ...(options as MemcacheStoreOptions), timeoutMs: timeoutMs as number | undefined });
}
