/**
 * Opening engines and stores for CLI commands, with a reachability check that names the store.
 * @module
 */
import { statSync } from 'node:fs';
import path from 'node:path';
import { FragmentCache } from '../cache';
import { createEngine, type Engine } from '../engine';
import { FragcacheError } from '../errors';
import { createStore } from '../stores';
import type { Store } from '../store';
import { describeStore, isMemory, type CliConfig } from './config';
import { CliError, colorsFor } from './io';

/** How long a store may take to answer the first call before the CLI calls it unreachable. */
const PROBE_MS = 3000;

/** True when an error (or its cause, or one of an AggregateError's errors) is a refused TCP connection. */
function refused(err: unknown, depth = 0): boolean {
  if (!err || typeof err !== 'object' || depth > 4) return false;
  const e = err as { code?: unknown; cause?: unknown; errors?: unknown };
  if (e.code === 'ECONNREFUSED') return true;
  return refused(e.cause, depth + 1) || (Array.isArray(e.errors) && e.errors.some((x) => refused(x, depth + 1)));
}

/**
 * Reads one key until the store answers, for up to {@link PROBE_MS}: a store that fails fast while it
 * connects (Redis without an offline queue) gets the time to connect; one that is down or misconfigured
 * fails here, with its name and the last connection error. A refused connection (nothing listens there) fails
 * at once; a timeout waits the whole budget.
 */
export async function probe(cache: FragmentCache, spec: CliConfig['store']): Promise<void> {
  const deadline = Date.now() + PROBE_MS;
  for (let delay = 25; ; delay = Math.min(delay * 2, 400)) {
    const left = deadline - Date.now();
    try {
      await cache.guard.run('getMany', () => cache.store.getMany([`${cache.prefix}:probe`]), Math.max(left, 1));
      return;
    } catch (err) {
      const last = (cache.store as { lastError?: unknown }).lastError;
      if (Date.now() >= deadline || refused(err) || refused(last)) {
        const why = last instanceof Error ? last.message : err instanceof Error ? err.message : String(err);
        throw new CliError(`${typeof spec === 'string' ? `store ${describeStore(spec)}` : describeStore(spec)} is unreachable: ${why}`, 1, { cause: err });
      }
      // (Up to the deadline, not past it, and never short of it: a store that fails fast without refusing, such as
      // a server that accepts and closes, is given the whole budget too.)
      await new Promise((r) => setTimeout(r, Math.min(delay, deadline - Date.now())));
    }
  }
}

function storeError(err: unknown, config: CliConfig): never {
  if (err instanceof FragcacheError) throw err;
  throw new CliError(`cannot open store ${describeStore(config.store)}: ${(err as Error)?.message ?? err}`, 1, { cause: err });
}

/** An engine for preview and serve; a shared store is probed first. */
export async function openEngine(config: CliConfig, extra: { noCache?: boolean } = {}): Promise<Engine> {
  let engine: Engine;
  try {
    engine = createEngine({
      views: config.views,
      store: config.store,
      prefix: config.prefix,
      version: config.version,
      syntax: config.syntax,
      noCache: extra.noCache,
      // A developer's preview has no latency to protect, and a store call or request budget running out on a busy
      // laptop would show misses (and skipped writes) that a server would not have: a second per call (a server
      // keeps 100 ms), no request budget; the circuit breaker still stops a dead store from being waited on.
      timeout: 1000,
      requestBudget: Infinity,
    });
  } catch (err) {
    storeError(err, config);
  }
  // Leak guard findings and dynamic dependencies, as the CLI prints warnings (stderr: stdout stays the HTML).
  engine.on('warning', (w) => process.stderr.write(`${colorsFor(process.stderr).yellow('warning')}: ${w.message}\n`));
  if (!isMemory(config.store)) {
    try {
      await probe(engine.cache, config.store);
    } catch (err) {
      await closeQuietly(engine.cache.store);
      throw err;
    }
  }
  return engine;
}

/** Where the store setting came from, for messages: `from --store`, `from FRAGCACHE_STORE`, `from <file>`, or the default. */
export function storeOrigin(config: CliConfig): string {
  return config.storeSource === 'default' ? 'the default: no --store, FRAGCACHE_STORE or "store" in a config file' : `from ${config.storeSource}`;
}

/**
 * The database file of a `sqlite://` store URL (as the SQLite store reads it), `:memory:`, or undefined
 * for other stores.
 */
export function sqliteFile(spec: CliConfig['store']): string | undefined {
  if (typeof spec !== 'string') return undefined;
  const m = /^sqlite:\/\/([^?#]*)/i.exec(spec);
  if (!m || !m[1]) return undefined;
  let file: string;
  try {
    file = decodeURIComponent(m[1]);
  } catch {
    return undefined; // the store itself reports the malformed URL
  }
  return file === ':memory:' ? file : path.resolve(file);
}

/**
 * The cache for the store commands (keys, inspect, invalidate, stats, clear). The memory store is refused:
 * it lives inside one process, so another process has nothing to look at. So is a `sqlite://` file that
 * does not exist: these commands look at a store, they never create one.
 */
export async function openCache(config: CliConfig): Promise<FragmentCache> {
  if (isMemory(config.store)) {
    throw new CliError(
      `the configured store is "memory" (${storeOrigin(config)}): an in-process store lives and dies with the process that renders, so another process cannot inspect or invalidate it. ` +
        'Point the CLI at a shared store with --store redis://host:6379 (or sqlite://…), FRAGCACHE_STORE, or "store" in fragcache.config.json.',
    );
  }
  const db = sqliteFile(config.store);
  if (db === ':memory:') {
    throw new CliError(`the configured store ${describeStore(config.store)} (${storeOrigin(config)}) is an in-process SQLite database: another process cannot inspect or invalidate it. Give the path of a database file: sqlite:///path/to/cache.db`);
  }
  if (db !== undefined) {
    let isFile: boolean | undefined;
    try {
      isFile = statSync(db).isFile();
    } catch {
      isFile = undefined;
    }
    if (isFile !== true) {
      throw new CliError(
        `${isFile === false ? 'not a file' : 'SQLite database not found'}: ${db} (store ${describeStore(config.store)}, ${storeOrigin(config)}). ` +
          'keys, inspect, invalidate, stats and clear read an existing database and never create one: check the path.',
      );
    }
  }
  let store: Store;
  try {
    store = createStore(config.store);
  } catch (err) {
    storeError(err, config);
  }
  const cache = new FragmentCache(store, { prefix: config.prefix, version: config.version, guard: { timeout: 10_000 } });
  try {
    await probe(cache, config.store);
  } catch (err) {
    await closeQuietly(store);
    throw err;
  }
  return cache;
}

/** Closes a store, never hanging the exit on a dead connection. */
export async function closeQuietly(store: Store): Promise<void> {
  await Promise.race([store.close().catch(() => undefined), new Promise((r) => setTimeout(r, 1000).unref())]);
}
