/**
 * fragcache: fragment and page caching for Nunjucks.
 * @packageDocumentation
 */
export { createEngine, Engine, type EngineEvents, type EngineOptions, type Explained, type ExplainOptions, type InvalidationTargets, type RenderOptions } from './engine';
export { FragmentCache, type CacheOptions, type Counters, type SetOptions, type CacheEvents, type FragmentEvent } from './cache';
export { CacheExtension, type CacheTarget, type CacheExtensionOptions } from './extension';
export type { FragcacheWarning } from './warnings';
export { leakGuardOf, type LeakGuard, type LeakGuardMode, type LeakGuardOptions } from './leakguard';
export { lintTemplates, type LintOptions, type LintResult, type LintFinding } from './lint';
export { fastifyViewEngine, type FastifyNunjucks, type FastifyNunjucksEnv } from './fastify';
export type { FragmentTrace } from './render';
export type { Store, SyncStore, StoreWrite } from './store';
export type { Entry } from './entry';
export { MemoryStore, type MemoryStoreOptions } from './stores/memory';
export { KeyvStore, type KeyvStoreOptions } from './stores/keyv';
export { createStore, registerScheme, type StoreSpec } from './stores';
// Types only: the Redis, Memcached and SQLite drivers load when a store URL first needs them.
export type { RedisStore, RedisStoreOptions } from './stores/redis';
export type { MemcacheStore, MemcacheStoreOptions } from './stores/memcache';
export type { SqliteStore, SqliteStoreOptions } from './stores/sqlite';
export { fragmentKey, encodeValue } from './keys';
export type { Ttl } from './duration';
export type { GuardOptions } from './guard';
export * from './errors';
