/**
 * Jest setup: many specs render deliberately unvaried fragments (invalidation, stores, faults), which the leak
 * guard would report on every run. Its own specs set their mode explicitly (or clear this for the CLI).
 */
process.env.FRAGCACHE_LEAK_GUARD ??= 'off';
