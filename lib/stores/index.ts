/**
 * Turns what the user gives as `store` (a URL, a Keyv, an adapter, a Store) into a {@link Store}.
 * @module
 */
import type Keyv from 'keyv';
import { OptionError } from '../errors';
import type { Store } from '../store';
import { isKeyv, KeyvStore } from './keyv';
import { MemoryStore, type MemoryStoreOptions } from './memory';
import { checkParams, numberParam } from './params';

/**
 * What `store` accepts: `"memory"` (default), `"memory://?maxBytes=N"`, a URL of another backend
 * (`redis://`, `rediss://`, `memcache://`, `sqlite://`), a {@link Store}, a Keyv instance, or a Keyv
 * storage adapter.
 */
export type StoreSpec = string | Store | Keyv | object;

/** Backends registered by URL scheme (`redis`, `memcache`, `sqlite`…). */
const schemes = new Map<string, (url: string, options: Record<string, unknown>) => Store>();

/** Registers a backend for a URL scheme. Used by the built-in Redis, Memcached and SQLite stores. */
export function registerScheme(scheme: string, factory: (url: string, options: Record<string, unknown>) => Store): void {
  schemes.set(scheme, factory);
}

// Built-in backends, loaded on first use so that an app on the memory store never loads their drivers.
/* eslint-disable @typescript-eslint/no-require-imports */
registerScheme('redis', (url, o) => (require('./redis') as typeof import('./redis')).redisFromUrl(url, o));
registerScheme('rediss', (url, o) => (require('./redis') as typeof import('./redis')).redisFromUrl(url, o));
registerScheme('memcache', (url, o) => (require('./memcache') as typeof import('./memcache')).memcacheFromUrl(url, o));
registerScheme('sqlite', (url, o) => (require('./sqlite') as typeof import('./sqlite')).sqliteFromUrl(url, o));
/* eslint-enable @typescript-eslint/no-require-imports */

function isStore(x: unknown): x is Store {
  return typeof x === 'object' && x !== null && typeof (x as Store).getMany === 'function' && typeof (x as Store).kind === 'string';
}

/** Creates the store for a `store` option value. `option` names the option in error messages. */
export function createStore(spec: StoreSpec | undefined, options: Record<string, unknown> = {}, option = 'store'): Store {
  if (spec === undefined || spec === 'memory') return new MemoryStore(options as MemoryStoreOptions);
  if (isStore(spec)) return spec;
  if (isKeyv(spec)) return new KeyvStore(spec);
  if (typeof spec === 'string') {
    const m = /^([a-z][a-z0-9+.-]*):/i.exec(spec);
    const scheme = m?.[1].toLowerCase();
    if (scheme === 'memory') {
      const query = new URL(spec).searchParams;
      checkParams(spec, query, ['maxBytes']);
      const max = numberParam(query, 'maxBytes', 'bytes', true);
      return new MemoryStore({ ...options, ...(max ? { maxBytes: max } : {}) });
    }
    const factory = scheme ? schemes.get(scheme) : undefined;
    if (!factory) {
      throw new OptionError(option, spec, `expected "memory" or a URL with a known scheme (${['memory', ...schemes.keys()].join(', ')})`);
    }
    return factory(spec, options);
  }
  if (typeof spec === 'object' && spec !== null && typeof (spec as { get?: unknown }).get === 'function' && typeof (spec as { set?: unknown }).set === 'function') {
    return new KeyvStore(spec as ConstructorParameters<typeof KeyvStore>[0]);
  }
  throw new OptionError(option, spec, 'expected "memory", a store URL, a Keyv instance or a Keyv store adapter');
}
