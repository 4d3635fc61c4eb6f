/**
 * Redis (standalone, Cluster or Sentinel) as a fragcache store, built on `@keyv/redis`'s `createKeyv`.
 *
 * The node-redis client is configured at creation so that nothing ever hangs: no offline queue (a command
 * sent while disconnected fails at once instead of waiting for a reconnect), a bounded connect timeout, and a
 * reconnect strategy that backs off to at most `maxBackoffMs` and never gives up (so the engine recovers on
 * its own when Redis returns). Client `error` events are always handled (unhandled, they crash the process).
 *
 * Keyv's own get/set are bypassed (its serializer would wrap entries in JSON, and `Keyv.set` reports success
 * for failed writes): commands go to the client directly. Keys are written verbatim (`prefix:version:…`).
 *
 * A connection that may be out of step is replaced, never reused: node-redis matches replies to commands by
 * position, so after one garbled reply (its parser resets but keeps the socket) every reply would answer the
 * command before. A protocol error, a reply for another key (see `decodeEntries`) or a call abandoned by the
 * cache's time budget make the store open a new client and destroy the old one ({@link RedisStore.reset}).
 * @module
 */
import { randomBytes } from 'node:crypto';
import { createKeyv } from '@keyv/redis';
import type Keyv from 'keyv';
import { LRUCache } from 'lru-cache';
import { decodeEntries, encodeEntry, type Entry } from '../entry';
import { OptionError, StoreIntegrityError } from '../errors';
import type { Store, StoreWrite } from '../store';
import { booleanParam, checkParams, numberParam } from './params';

/** Options of {@link RedisStore} (also accepted as query parameters of the URL, e.g. `?connectTimeout=500`). */
export interface RedisStoreOptions {
  /** Longest wait for a TCP connection, ms (default 1000). */
  connectTimeout?: number;
  /** Cap of the reconnect backoff, ms (default 500): the store is back at most this long (plus up to 50 ms of jitter) after Redis is. */
  maxBackoffMs?: number;
  /** Extra node-redis client options (merged over fragcache's; `socket` is merged too). */
  client?: Record<string, unknown>;
  /** Called with connection errors (the cache reports failed calls anyway). */
  onError?: (err: Error) => void;
  /** Keyv namespace given to `createKeyv` (default `fragcache`); also names the L1 invalidation channel. */
  namespace?: string;
  /**
   * An in-process copy (L1) of what this process read, so that a page whose fragments all hit costs no round
   * trip. Every write and delete is published on a Redis channel and every process drops those keys from its
   * L1 when the message arrives. How stale it can be: another process's invalidation is seen here when its
   * message arrives (usually well under a millisecond after the invalidating call resolves, but not at the
   * moment it resolves); while the subscription is down the L1 is emptied and bypassed; and no entry is
   * served from the L1 longer than `ttlMs` after it was read (the bound if a message were lost).
   */
  l1?: boolean | { maxEntries?: number; ttlMs?: number };
}

/** What node-redis clients (standalone, cluster, sentinel) offer that this store uses. */
interface RedisLike {
  isOpen?: boolean;
  isReady?: boolean;
  on(event: string, fn: (...a: unknown[]) => void): unknown;
  connect(): Promise<unknown>;
  mGet(keys: string[]): Promise<(string | null)[]>;
  get(key: string): Promise<string | null>;
  set(key: string, value: string, options?: Record<string, unknown>): Promise<string | null>;
  unlink(keys: string | string[]): Promise<number>;
  eval(script: string, options: { keys: string[]; arguments: string[] }): Promise<unknown>;
  publish(channel: string, message: string): Promise<number>;
  time?(): Promise<[string, string] | string[]>;
  exists(keys: string | string[]): Promise<number>;
  scanIterator?(options: { MATCH: string; COUNT: number }): AsyncIterable<string[] | string>;
  masters?: unknown[];
  destroy?(): void;
  close?(): Promise<void>;
  unref?(): void;
  quit?(): Promise<unknown>;
}

/** Releases a lock only when the caller's token still owns it (never someone else's after expiry). */
const UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/** Lengthens a key's TTL, never shortens it, never touches a key without one (PEXPIRE … GT, before Redis 7 too). */
const EXTEND = "local t = redis.call('pttl', KEYS[1]) if t >= 0 and t < tonumber(ARGV[1]) then redis.call('pexpire', KEYS[1], ARGV[1]) end return t";

/** Longest wait of close() for pending replies before the connection is destroyed. */
const CLOSE_GRACE_MS = 500;

/** Escapes glob characters of SCAN MATCH, so a prefix matches only itself. */
function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, '\\$&');
}

function positive(option: string, v: unknown, fallback: number): number {
  if (v === undefined || v === null || v === '') return fallback;
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) throw new OptionError(option, v, 'expected a positive number of milliseconds');
  return n;
}

/**
 * A Redis store. Give it a URL (`redis://[user:pass@]host:port[/db]`, `rediss://…` for TLS), node-redis client
 * options (`{ url, socket }`), cluster options (`{ rootNodes: [...] }`) or sentinel options
 * (`{ sentinelRootNodes: [...], name }`), as `@keyv/redis` accepts.
 */
export class RedisStore implements Store {
  readonly kind = 'redis';
  readonly shared = true;
  /** The Keyv made by `createKeyv` (for users who want Keyv's API over the same connection); replaced by {@link reset}. */
  get keyv(): Keyv {
    return this.current;
  }
  /** The node-redis client (standalone, cluster or sentinel); replaced by {@link reset}. */
  get client(): RedisLike {
    return this.currentClient;
  }
  private current!: Keyv;
  private currentClient!: RedisLike;
  private readonly cluster: boolean;
  /** Neither Cluster nor Sentinel: one connection, which a reset reconnects in place. */
  private readonly standalone: boolean;
  private closed = false;
  /** How the client is made (kept to open a fresh one on {@link reset}). */
  private readonly spec: Record<string, unknown>;
  private readonly namespace: string;
  private readonly onError: ((err: Error) => void) | undefined;
  /** True from a reset until its new connection is ready or has failed once. */
  private resetting = false;
  /** Connections replaced so far (for tests and inspection). */
  resets = 0;
  private report: ((err: unknown) => void) | undefined;
  /** The cache's error reporter (for a misplaced value, which is not a failed call). */
  reportTo(report: (err: unknown) => void): void {
    this.report = report;
  }

  /** Keys whose reply held another key's entry, with {@link resets} at the time (see {@link misplaced}). */
  private readonly wrongKeys = new LRUCache<string, number>({ max: 1000 });

  /**
   * A reply under another key's digest means a connection out of step, unless the same key does it again on a
   * connection opened since: then the store itself holds a misplaced value (a RENAME, a COPY, a restore under
   * another prefix, tampering). That value is a miss and is deleted, and the connection is left alone (resetting
   * it on every read would never heal, and would fail every other call in flight).
   */
  private misplaced(key: string): boolean {
    const at = this.wrongKeys.get(key);
    if (at !== undefined && at < this.resets) {
      // (Kept: a key misplaced again, e.g. by a recurring job, stays a miss, and is never worth a reset.)
      this.report?.(new StoreIntegrityError(`redis store: ${JSON.stringify(key.slice(0, 120))} holds an entry written under another key (a misplaced or tampered value): read as a miss and deleted`, 'redis', 'getMany'));
      void this.deleteMany([key]).catch(() => undefined);
      return true;
    }
    this.wrongKeys.set(key, this.resets);
    return false;
  }
  private readyListeners: (() => void)[] = [];
  /** Last connection error, for messages. */
  lastError: Error | undefined;
  private readonly l1: LRUCache<string, Entry> | undefined;
  /** True while the invalidation subscription is up (only then is the L1 used). */
  private l1Live = false;
  /** Grows with every invalidation message: a read that overlapped one does not fill the L1. */
  private l1Seq = 0;
  private subscriber: RedisLike | undefined;
  private readonly channel: string;
  /** The connection attempts in flight (close() waits for them, see {@link shutDown}). */
  private attempt: (() => Promise<void>) & { start?(): void } = async () => undefined;
  private subAttempt: () => Promise<void> = async () => undefined;

  constructor(connect: string | Record<string, unknown>, options: RedisStoreOptions = {}) {
    const connectTimeout = positive('connectTimeout', options.connectTimeout, 1000);
    const maxBackoff = positive('maxBackoffMs', options.maxBackoffMs, 500);
    // Never give up: capped exponential backoff with jitter, so a fleet does not reconnect in lockstep.
    const reconnectStrategy = (retries: number) => Math.min(50 * 2 ** Math.min(retries, 10), maxBackoff) + Math.floor(Math.random() * 50);
    const base = { disableOfflineQueue: true, socket: { connectTimeout, reconnectStrategy } };
    let spec: Record<string, unknown>;
    if (typeof connect === 'string') {
      const extra = options.client ?? {};
      spec = { ...base, ...extra, url: connect, socket: { ...base.socket, ...((extra.socket as object) ?? {}) } };
    } else if (connect.rootNodes !== undefined) {
      // Cluster: the options apply to every node.
      const defaults = (connect.defaults as Record<string, unknown>) ?? {};
      spec = { ...connect, defaults: { ...base, ...defaults, socket: { ...base.socket, ...((defaults.socket as object) ?? {}) } } };
    } else if (connect.sentinelRootNodes !== undefined) {
      const node = (connect.nodeClientOptions as Record<string, unknown>) ?? {};
      spec = { ...connect, nodeClientOptions: { ...base, ...node, socket: { ...base.socket, ...((node.socket as object) ?? {}) } } };
    } else {
      spec = { ...base, ...connect, socket: { ...base.socket, ...((connect.socket as object) ?? {}) } };
    }
    this.cluster = connect !== null && typeof connect === 'object' && connect.rootNodes !== undefined;
    this.standalone = !this.cluster && !(typeof connect === 'object' && connect.sentinelRootNodes !== undefined);
    this.spec = spec;
    this.namespace = options.namespace ?? 'fragcache';
    this.onError = options.onError;
    this.open();
    this.channel = `${options.namespace ?? 'fragcache'}:l1`;
    if (options.l1) {
      const o = options.l1 === true ? {} : options.l1;
      const max = o.maxEntries ?? 10_000;
      if (!Number.isSafeInteger(max) || max <= 0) throw new OptionError('l1.maxEntries', max, 'expected a whole number > 0');
      // ttlResolution 0: a render loop whose reads are all L1 hits never yields to the event loop, and lru-cache's
      // clock (refreshed by a timer) would then stand still: the ttlMs bound must hold anyway.
      this.l1 = new LRUCache<string, Entry>({ max, ttl: positive('l1.ttlMs', o.ttlMs, 5000), ttlResolution: 0 });
      this.subscribe(options.onError);
    }
  }

  /** Makes a client, attaches its listeners and starts connecting it (at construction; on a reset of a Cluster or Sentinel). */
  private open(): void {
    const keyv = createKeyv(this.spec as never, { namespace: this.namespace, throwOnConnectError: false });
    // Keyv and the adapter re-emit errors: handle them too, so none is ever unhandled.
    keyv.on('error', () => undefined);
    (keyv.store as { on?: (e: string, f: () => void) => void }).on?.('error', () => undefined);
    const client = (keyv.store as { client: RedisLike }).client;
    this.current = keyv;
    this.currentClient = client;
    this.attempt = trackAttempts(client);
    client.on('error', (err) => {
      if (client !== this.currentClient) return;
      this.lastError = err as Error;
      this.onError?.(err as Error);
      this.settleAttempt?.();
      // A socket error comes with isReady false (node-redis reconnects by itself, with a clean queue); an error
      // while the connection is still "ready" is a reply it could not parse: the queue is out of step now.
      if (client.isReady === true) this.reset(err);
    });
    // Cluster: node clients report through 'node-error'; an unparsable reply leaves that node out of step.
    client.on('node-error', (err) => {
      if (client === this.currentClient && /RESP|pars/i.test((err as Error)?.message ?? '')) this.reset(err);
    });
    client.on('ready', () => {
      if (client !== this.currentClient) return;
      this.settleAttempt?.();
      for (const fn of this.readyListeners) fn();
    });
    this.connect(client);
  }

  /** Ends the current connection attempt (the first one, or a reset's): commands stop waiting for it. */
  private settleAttempt: (() => void) | undefined;

  /**
   * Connects; with reconnectStrategy it keeps trying in the background. Commands meanwhile fail fast, except
   * during this first attempt: they wait for it (under the cache's time budget), so the first render after
   * start-up (or after a reset) is not needlessly uncached.
   */
  private connect(client: RedisLike): void {
    this.attempt.start?.();
    let settle!: () => void;
    const attempt = new Promise<void>((r) => (settle = r));
    this.firstAttempt = attempt;
    this.settleAttempt = settle;
    void attempt.then(() => {
      if (this.firstAttempt === attempt) this.firstAttempt = undefined;
      if (client === this.currentClient) this.resetting = false;
    });
    // A cluster or sentinel client emits no 'ready': its connect() resolving ends the attempt too.
    client.connect().then(
      () => {
        settle();
        if (client === this.currentClient && !this.standalone) for (const fn of this.readyListeners) fn();
      },
      (err: Error) => {
        if (client === this.currentClient) this.lastError = err;
        settle();
      },
    );
  }

  /**
   * Drops the connection and opens a new one: the replies on it can no longer be trusted (a reply it could not
   * parse, a reply for another key, a call abandoned over the time budget). Commands still waiting on the old
   * one are rejected. A no-op while a reset is already under way, or while node-redis is reconnecting by itself
   * (a socket that failed is replaced with a clean queue anyway). Never throws.
   *
   * A standalone client is destroyed and connected again (the same object: making a node-redis client costs
   * hundreds of ms of CPU the first times); a Cluster or Sentinel client is replaced by a new one.
   */
  reset(reason?: unknown): void {
    if (this.closed || this.resetting) return;
    const old = this.currentClient;
    if (old.isReady === false) return;
    this.resetting = true;
    this.resets++;
    if (reason instanceof Error) this.lastError = reason;
    if (this.l1) {
      this.l1.clear(); // filled from a connection that was out of step
      this.l1Seq++;
    }
    try {
      old.destroy?.(); // rejects every command still waiting on it
    } catch {
      // already closed
    }
    if (this.standalone) this.connect(old);
    else this.open();
  }

  /** Calls `fn` whenever a (re)connection becomes ready: the cache's breaker may then probe at once. */
  onReady(fn: () => void): void {
    this.readyListeners.push(fn);
  }

  /** A second connection subscribed to the invalidation channel; the L1 is live only while it is. */
  private subscribe(onError?: (err: Error) => void): void {
    const sub = (this.client as unknown as { duplicate(): RedisLike & { subscribe(ch: string, fn: (m: string) => void): Promise<void> } }).duplicate();
    this.subscriber = sub;
    this.subAttempt = trackAttempts(sub);
    const down = () => {
      if (sub !== this.subscriber) return; // a replaced subscriber's last events
      this.l1Live = false;
      this.l1!.clear();
    };
    sub.on('error', (err) => {
      if (sub !== this.subscriber) return;
      down();
      onError?.(err as Error);
      // A reply it could not parse (still "ready"): messages may be lost or garbled from now on; start afresh.
      if (sub.isReady === true && !this.closed) {
        try {
          sub.destroy?.();
        } catch {
          // already closed
        }
        this.subscribe(onError);
      }
    });
    sub.on('end', down);
    sub.on('reconnecting', down);
    // node-redis resubscribes after a reconnect; messages sent meanwhile were lost, so start from empty.
    sub.on('ready', () => {
      if (sub !== this.subscriber) return;
      this.l1!.clear();
      this.l1Seq++;
      this.l1Live = true;
    });
    const onMessage = (msg: string) => {
      this.l1Seq++;
      let keys: unknown;
      try {
        keys = JSON.parse(msg);
      } catch {
        return this.l1!.clear();
      }
      if (!Array.isArray(keys)) return this.l1!.clear();
      for (const k of keys) {
        if (typeof k !== 'string') continue;
        if (k.endsWith('*')) {
          const prefix = k.slice(0, -1);
          for (const key of [...this.l1!.keys()]) if (key.startsWith(prefix)) this.l1!.delete(key);
        } else this.l1!.delete(k);
      }
    };
    sub
      .connect()
      .then(() => sub.subscribe(this.channel, onMessage))
      .catch((err: Error) => onError?.(err));
  }

  /**
   * Tells every process's L1 (this one's too) that these keys changed. Every store publishes, with an L1 or not
   * (a plain process or the CLI may invalidate what another process holds in its L1); fragment writes are left
   * out when this store has no L1 (an L1 checks entries against tag versions, whose writes are published).
   */
  private async publish(keys: readonly string[], what: 'write' | 'delete' = 'delete'): Promise<void> {
    if (this.l1) {
      this.l1Seq++;
      for (const k of keys) {
        if (k.endsWith('*')) this.l1.clear();
        else this.l1.delete(k);
      }
    }
    const sent = this.l1 || what === 'delete' ? keys : keys.filter((k) => k.includes(':tag:'));
    if (sent.length) await this.client.publish(this.channel, JSON.stringify(sent));
  }

  private firstAttempt: Promise<void> | undefined;

  /** Resolves once the first connection attempt is over (at once after that). */
  private async connected(): Promise<void> {
    if (this.firstAttempt) await this.firstAttempt;
    // Disconnected: fail at once with the reason (a wrong password, a refused connection), not "client is offline".
    if (this.client.isReady === false && this.lastError) throw new Error(`Redis is not connected: ${this.lastError.message}`, { cause: this.lastError });
  }

  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    if (!keys.length) return [];
    const l1 = this.l1Live ? this.l1 : undefined;
    let out: (Entry | undefined)[] | undefined;
    let rest: string[] = keys as string[];
    if (l1) {
      out = keys.map((k) => l1.get(k));
      rest = keys.filter((_, i) => out![i] === undefined);
      if (!rest.length) return out; // every key served from the L1: no round trip
    }
    await this.connected();
    const seq = this.l1Seq;
    const client = this.client;
    const raw = this.cluster ? await Promise.all(rest.map((k) => client.get(k))) : await client.mGet(rest);
    let got: (Entry | undefined)[];
    try {
      if (!Array.isArray(raw)) throw new StoreIntegrityError(`redis store: a read got ${typeof raw} instead of a list (the connection is out of step)`, 'redis', 'getMany');
      got = decodeEntries(raw, rest, 'redis', (k) => this.misplaced(k));
    } catch (err) {
      if (client === this.client) this.reset(err);
      throw err;
    }
    if (!l1 || !out) return got;
    // Fill the L1 only when no invalidation arrived while the read was in flight (it may predate it).
    const fill = seq === this.l1Seq && this.l1Live;
    let j = 0;
    for (let i = 0; i < out.length; i++) {
      if (out[i] !== undefined) continue;
      const e = got[j++];
      out[i] = e;
      if (e && fill) l1.set(keys[i], e);
    }
    return out;
  }

  async setMany(writes: readonly StoreWrite[]): Promise<void> {
    // Commands sent in one tick go out as one pipeline (one round trip), and work across cluster slots.
    await this.connected();
    const client = this.client;
    const replies = await Promise.all(writes.map((w) => client.set(w.key, encodeEntry(w.entry, w.key), w.ttlMs ? { PX: Math.max(1, Math.ceil(w.ttlMs)) } : undefined)));
    for (const r of replies) if (r !== 'OK') this.outOfStep(client, 'setMany', r);
    await this.publish(writes.map((w) => w.key), 'write');
  }

  async add(key: string, entry: Entry, ttlMs: number | null): Promise<boolean> {
    await this.connected();
    const client = this.client;
    const r = await client.set(key, encodeEntry(entry, key), ttlMs ? { NX: true, PX: Math.max(1, Math.ceil(ttlMs)) } : { NX: true });
    if (r !== 'OK' && r !== null) this.outOfStep(client, 'add', r);
    if (r === 'OK') await this.publish([key], 'write');
    return r === 'OK';
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    if (!keys.length) return;
    await this.connected();
    if (this.cluster) await Promise.all(keys.map((k) => this.client.unlink(k)));
    else await this.client.unlink([...keys]);
    await this.publish(keys);
  }

  /** SCAN for `prefix*` and UNLINK in batches: only keys that start with the prefix are touched. */
  async clear(prefix: string): Promise<number> {
    let n = 0;
    let batch: string[] = [];
    for await (const k of this.keys(prefix)) {
      batch.push(k);
      if (batch.length >= 500) {
        await this.deleteMany(batch);
        n += batch.length;
        batch = [];
      }
    }
    await this.deleteMany(batch);
    await this.publish([`${prefix}*`]);
    return n + batch.length;
  }

  async *keys(prefix: string): AsyncIterable<string> {
    await this.connected();
    const nodes: RedisLike[] = this.cluster
      ? ((this.client.masters ?? []) as { client?: RedisLike }[]).map((m) => m.client).filter((c): c is RedisLike => !!c)
      : [this.client];
    for (const node of nodes) {
      if (!node.scanIterator) throw new Error('this Redis client cannot SCAN');
      for await (const chunk of node.scanIterator({ MATCH: `${globEscape(prefix)}*`, COUNT: 1000 })) {
        for (const k of Array.isArray(chunk) ? chunk : [chunk]) if (k.startsWith(prefix)) yield k;
      }
    }
  }

  async extend(keys: readonly { key: string; ttlMs: number }[]): Promise<void> {
    if (!keys.length) return;
    await this.connected();
    // One script per key (sent in one tick: one pipeline; any cluster slot).
    await Promise.all(keys.map((k) => this.client.eval(EXTEND, { keys: [k.key], arguments: [String(Math.max(1, Math.ceil(k.ttlMs)))] })));
  }

  /** `SET key token NX PX ttl`: the lock expires by itself, so a crashed owner blocks nobody for long. */
  async lock(key: string, ttlMs: number): Promise<string | undefined> {
    await this.connected();
    const token = randomBytes(12).toString('base64url');
    const client = this.client;
    const r = await client.set(key, token, { NX: true, PX: Math.max(1, Math.ceil(ttlMs)) });
    if (r !== 'OK' && r !== null) this.outOfStep(client, 'lock', r);
    return r === 'OK' ? token : undefined;
  }

  /** Set when the server refuses `TIME` (a proxy without it, an ACL): this host's clock stands in. */
  private noTime = false;

  /**
   * Redis `TIME` (seconds and microseconds), as epoch ms. A server that refuses the command (some proxies
   * lack it; an ACL may deny it) gets this host's clock instead, as Memcached does: invalidations keep working,
   * judged by the hosts' clocks.
   */
  async time(): Promise<number> {
    if (this.noTime || typeof this.client.time !== 'function') return Date.now();
    await this.connected();
    const client = this.client;
    try {
      const reply = await client.time!();
      const ms = Array.isArray(reply) ? Number(reply[0]) * 1000 + Number(reply[1]) / 1000 : NaN;
      if (!Number.isFinite(ms)) this.outOfStep(client, 'time', reply);
      return ms;
    } catch (err) {
      if (err instanceof StoreIntegrityError) throw err;
      if (!/^(ERR|NOPERM)\b/.test(String((err as Error)?.message))) throw err;
      this.noTime = true;
      return Date.now();
    }
  }

  /** One `EXISTS` per key, sent in one tick (one pipeline). */
  async locked(keys: readonly string[]): Promise<boolean[]> {
    await this.connected();
    const client = this.client;
    const replies = await Promise.all(keys.map((k) => client.exists(k)));
    return replies.map((n) => (typeof n === 'number' ? n > 0 : this.outOfStep(client, 'locked', n)));
  }

  /** Deletes the lock only if `token` still owns it (compare-and-delete in one Lua script). */
  async unlock(key: string, token: string): Promise<void> {
    const client = this.client;
    const r = await client.eval(UNLOCK, { keys: [key], arguments: [token] });
    if (r !== 0 && r !== 1) this.outOfStep(client, 'unlock', r);
  }

  /** A reply of the wrong kind for its command: the connection is out of step. Resets it and throws. */
  private outOfStep(client: RedisLike, operation: string, reply: unknown): never {
    const err = new StoreIntegrityError(`redis store: ${operation} got an unexpected reply (${typeof reply === 'string' ? JSON.stringify(reply.slice(0, 20)) : typeof reply}): the connection is out of step; reconnecting`, 'redis', operation);
    if (client === this.client) this.reset(err);
    throw err;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.l1Live = false;
    await Promise.all([this.subscriber ? shutDown(this.subscriber, this.subAttempt) : undefined, shutDown(this.client, this.attempt)]);
  }
}

/**
 * Watches a client's socket being opened: the returned function resolves once no socket is being opened (at once
 * when none is). Opening runs from `connect()` or `reconnecting` to `connect` (the socket is open: node-redis holds
 * it and can destroy it) or `error`; a connect timeout bounds it.
 */
function trackAttempts(client: RedisLike): (() => Promise<void>) & { start(): void } {
  let done: (() => void) | undefined;
  let inFlight: Promise<void> | undefined;
  const start = () => {
    if (!inFlight) inFlight = new Promise<void>((r) => (done = r));
  };
  const end = () => {
    inFlight = undefined;
    done?.();
  };
  start();
  client.on('reconnecting', start);
  client.on('connect', end);
  client.on('ready', end);
  client.on('error', end);
  // start: a reset connects the same client again (no 'reconnecting' event then).
  return Object.assign(async () => inFlight, { start });
}

/**
 * Closes a node-redis client whatever its state. Destroying a client while its socket is still being opened does
 * not stop that socket (node-redis has no handle on it yet): it would connect afterwards and keep the process
 * alive. So wait until the socket is open or has failed (at most the connect timeout), then close or destroy it;
 * then unref, so that nothing this client might still open can hold the process.
 */
async function shutDown(client: RedisLike, attempt: () => Promise<void>): Promise<void> {
  await attempt();
  const destroy = () => {
    try {
      client.destroy?.();
    } catch {
      // already closed
    }
  };
  // A graceful close waits for every pending reply: on a connection out of step or stalled they never come, so
  // it gets CLOSE_GRACE_MS, then the connection is destroyed.
  let timer: NodeJS.Timeout | undefined;
  try {
    const graceful = client.isReady ? (client.close?.() ?? client.quit?.()) : undefined;
    if (!graceful) destroy();
    else {
      const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), CLOSE_GRACE_MS)));
      if ((await Promise.race([graceful, late])) === 'late') destroy();
    }
  } catch {
    destroy();
  } finally {
    clearTimeout(timer);
  }
  try {
    client.unref?.();
  } catch {
    // cluster and sentinel clients have no unref: their close above suffices
  }
}

/**
 * `redis://…` / `rediss://…` factory for {@link createStore}. Query parameters: `connectTimeout`, `maxBackoffMs`,
 * `l1`. Options: {@link RedisStoreOptions}, plus `connect` (cluster or sentinel options, which replace the URL).
 */
export function redisFromUrl(url: string, options: Record<string, unknown> = {}): RedisStore {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new OptionError('store', url, 'expected a Redis URL like redis://host:6379');
  }
  if (options.connect === undefined) {
    if (!parsed.hostname) throw new OptionError('store', url, 'expected a host, as in redis://host:6379 (or the connect option for Cluster and Sentinel)');
    if (!/^\/?\d*$/.test(parsed.pathname)) throw new OptionError('store', url, 'the path must be a database number, as in redis://host:6379/2');
  }
  const q = parsed.searchParams;
  checkParams(url, q, ['connectTimeout', 'maxBackoffMs', 'l1']);
  const opts: RedisStoreOptions = {
    ...(options as RedisStoreOptions),
    connectTimeout: (options.connectTimeout as number | undefined) ?? numberParam(q, 'connectTimeout', 'milliseconds'),
    maxBackoffMs: (options.maxBackoffMs as number | undefined) ?? numberParam(q, 'maxBackoffMs', 'milliseconds'),
    l1: (options.l1 as RedisStoreOptions['l1']) ?? booleanParam(q, 'l1'),
  };
  q.delete('l1');
  q.delete('connectTimeout');
  q.delete('maxBackoffMs');
  // Cluster or Sentinel: `createStore('redis://', { connect: { rootNodes: [...] } })`, as @keyv/redis accepts.
  if (options.connect !== undefined) {
    if (typeof options.connect !== 'object' || options.connect === null) throw new OptionError('connect', options.connect, 'expected node-redis client, cluster or sentinel options');
    return new RedisStore(options.connect as Record<string, unknown>, opts);
  }
  return new RedisStore(parsed.toString(), opts);
}
