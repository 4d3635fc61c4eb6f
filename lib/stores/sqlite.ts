/**
 * SQLite as a fragcache store (`sqlite://path`): an embedded cache that survives restarts and can be shared
 * by the processes of one machine (WAL mode; SQLite serialises writers). better-sqlite3 is synchronous, so
 * this store offers same-tick access (`sync`) and a render needs a single pass.
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type Database from 'better-sqlite3';
import { decodeEntry, encodeEntry, type Entry } from '../entry';
import { MissingDependencyError, OptionError } from '../errors';
import type { Store, StoreWrite, SyncStore } from '../store';
import { checkParams } from './params';

/** Options of {@link SqliteStore}. */
export interface SqliteStoreOptions {
  /** Table name (default `fragcache`). */
  table?: string;
  /** How long a writer waits for another process's write lock, ms (default 100). The wait blocks the event loop (the driver is synchronous), so keep it near the cache's time budget. */
  busyTimeoutMs?: number;
  /** Delete expired rows about once per this many writes (default 1000). */
  pruneEvery?: number;
  /**
   * Called when a same-tick call fails (database locked past `busyTimeoutMs`, disk full…). Such a call
   * reads as a miss or a skipped write, so a render never fails because of the store.
   */
  onError?: (err: Error) => void;
}

type Stmt = Database.Statement;

/**
 * better-sqlite3, loaded on first use: it is an optional peer dependency (a native module compiled on install),
 * so apps that never use SQLite do not install it.
 */
function driver(): typeof Database {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('better-sqlite3') as typeof Database;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'MODULE_NOT_FOUND' && e.message.includes("'better-sqlite3'")) throw new MissingDependencyError('better-sqlite3', 'the sqlite:// store', { cause: err });
    throw err;
  }
}

/** A SQLite store over better-sqlite3. */
export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly shared = true;
  readonly sync: SyncStore;
  readonly db: Database.Database;
  private readonly q: { get: Stmt; set: Stmt; add: Stmt; del: Stmt; keys: Stmt; clear: Stmt; prune: Stmt; lockDel: Stmt };
  private writes = 0;
  private readonly pruneEvery: number;

  constructor(file: string, options: SqliteStoreOptions = {}) {
    const table = options.table ?? 'fragcache';
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(table)) throw new OptionError('table', table, 'expected a SQL identifier (letters, digits, "_")');
    const busy = options.busyTimeoutMs ?? 100;
    this.pruneEvery = options.pruneEvery ?? 1000;
    const Driver = driver();
    try {
      if (file !== ':memory:') fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      this.db = new Driver(file, { timeout: busy });
    } catch (err) {
      throw new OptionError('store', `sqlite://${file}`, `cannot open the database: ${(err as Error).message}`);
    }
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL'); // a cache: losing the last writes on power loss is acceptable
    this.db.exec(`CREATE TABLE IF NOT EXISTS ${table} (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires INTEGER) WITHOUT ROWID`);
    this.db.exec(`CREATE INDEX IF NOT EXISTS ${table}_expires ON ${table} (expires) WHERE expires IS NOT NULL`);
    this.q = {
      get: this.db.prepare(`SELECT value FROM ${table} WHERE key = ? AND (expires IS NULL OR expires > ?)`).pluck(),
      set: this.db.prepare(`INSERT OR REPLACE INTO ${table} (key, value, expires) VALUES (?, ?, ?)`),
      // Inserts unless a live row exists (an expired row is replaced).
      add: this.db.prepare(
        `INSERT INTO ${table} (key, value, expires) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires = excluded.expires WHERE ${table}.expires IS NOT NULL AND ${table}.expires <= ?`,
      ),
      del: this.db.prepare(`DELETE FROM ${table} WHERE key = ?`),
      // Range scan instead of LIKE: "%" and "_" in a prefix would be wildcards.
      keys: this.db.prepare(`SELECT key FROM ${table} WHERE key >= ? AND key < ?`).pluck(),
      clear: this.db.prepare(`DELETE FROM ${table} WHERE key >= ? AND key < ?`),
      prune: this.db.prepare(`DELETE FROM ${table} WHERE expires IS NOT NULL AND expires <= ?`),
      lockDel: this.db.prepare(`DELETE FROM ${table} WHERE key = ? AND value = ?`),
    };
    const setMany = this.db.transaction((writes: readonly StoreWrite[]) => {
      for (const w of writes) this.put(w.key, w.entry, w.ttlMs);
    });
    this.setManyTx = setMany;
    const onError = (err: Error) => {
      options.onError?.(err);
      this.reporter?.(err);
    };
    // Renders call these inside a synchronous pass: a failure must be a miss, never an exception.
    const safe = <A extends unknown[], R>(fn: (...a: A) => R, fallback: R) => (...a: A): R => {
      try {
        return fn(...a);
      } catch (err) {
        onError(err as Error);
        return fallback;
      }
    };
    this.sync = {
      get: safe((key: string) => {
        const raw = this.q.get.get(key, Date.now()) as string | undefined;
        return raw === undefined ? undefined : decodeEntry(raw);
      }, undefined),
      set: safe((key: string, entry: Entry, ttlMs: number | null) => this.put(key, entry, ttlMs), undefined),
      add: safe((key: string, entry: Entry, ttlMs: number | null) => {
        const now = Date.now();
        return this.q.add.run(key, encodeEntry(entry), ttlMs === null ? null : now + ttlMs, now).changes > 0;
      }, false),
      delete: safe((key: string) => void this.q.del.run(key), undefined),
    };
  }

  private readonly setManyTx: (writes: readonly StoreWrite[]) => void;
  private reporter: ((err: unknown) => void) | undefined;

  reportTo(report: (err: unknown) => void): void {
    this.reporter = report;
  }

  private put(key: string, entry: Entry, ttlMs: number | null): void {
    if (ttlMs !== null && ttlMs <= 0) return;
    this.q.set.run(key, encodeEntry(entry), ttlMs === null ? null : Date.now() + ttlMs);
    if (++this.writes % this.pruneEvery === 0) this.prune();
  }

  /** Deletes expired rows now; returns how many. */
  prune(): number {
    return this.q.prune.run(Date.now()).changes;
  }

  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    return keys.map((k) => {
      const raw = this.q.get.get(k, Date.now()) as string | undefined;
      return raw === undefined ? undefined : decodeEntry(raw);
    });
  }

  async setMany(writes: readonly StoreWrite[]): Promise<void> {
    this.setManyTx(writes);
  }

  async add(key: string, entry: Entry, ttlMs: number | null): Promise<boolean> {
    const now = Date.now();
    return this.q.add.run(key, encodeEntry(entry), ttlMs === null ? null : now + ttlMs, now).changes > 0;
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const k of keys) this.q.del.run(k);
  }

  async clear(prefix: string): Promise<number> {
    return this.q.clear.run(prefix, prefixEnd(prefix)).changes;
  }

  async *keys(prefix: string): AsyncIterable<string> {
    for (const k of this.q.keys.all(prefix, prefixEnd(prefix)) as string[]) yield k;
  }

  /** A row with a token and an expiry; SQLite's write lock makes the insert atomic across processes. */
  async lock(key: string, ttlMs: number): Promise<string | undefined> {
    const token = randomBytes(12).toString('base64url');
    const now = Date.now();
    return this.q.add.run(key, token, now + ttlMs, now).changes > 0 ? token : undefined;
  }

  async unlock(key: string, token: string): Promise<void> {
    this.q.lockDel.run(key, token);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

/** The smallest string greater than every string starting with `prefix`. */
function prefixEnd(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}

/** `sqlite://path` factory (`sqlite:///abs/path`, `sqlite://relative/path`, `sqlite://:memory:`). */
export function sqliteFromUrl(url: string, options: Record<string, unknown> = {}): SqliteStore {
  const m = /^sqlite:\/\/([^?#]*)(?:\?(.*))?$/i.exec(url);
  if (!m || !m[1]) throw new OptionError('store', url, 'expected sqlite://path/to/file.db');
  const q = new URLSearchParams(m[2] ?? '');
  checkParams(url, q, ['table']);
  return new SqliteStore(decodeURIComponent(m[1]), {
    ...(options as SqliteStoreOptions),
    ...(q.has('table') ? { table: q.get('table')! } : {}),
  });
}
