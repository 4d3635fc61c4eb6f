/**
 * `verify`: a sampling check for leaks static analysis cannot see (a filter, global or function that reads
 * per-request state). A share of hits is noted during the render; after the response (setImmediate), the
 * same template is rendered again with the same context against empty shadow caches (same prefix and
 * version, so the same keys), so every sampled fragment's body renders fresh. A fresh body that differs from
 * the stored one under the same key means the key misses an input: reported as a `verify` warning (fragment,
 * key, first differing characters), and the stored entry's body is replaced with the fresh one. The response
 * being served never waits for any of this.
 * @module
 */
import { FragmentCache } from './cache';
import type { Entry } from './entry';
import type { Block } from './render';
import { MemoryStore } from './stores/memory';
import type { FragcacheWarning } from './warnings';

/** A hit noted for verification: what was served, from which cache. */
export interface Sample {
  cache: FragmentCache;
  entry: Entry;
  block: Block;
}

/** The first differing characters of two strings, with a little context before. */
function firstDifference(a: string, b: string): { at: number; stored: string; fresh: string } {
  let at = 0;
  while (at < a.length && at < b.length && a[at] === b[at]) at++;
  const from = Math.max(0, at - 20);
  return { at, stored: a.slice(from, at + 40), fresh: b.slice(from, at + 40) };
}

/**
 * Schedules the check of `samples` after the current response: `render(redirect)` renders the page again with
 * each fragment's cache replaced by `redirect(cache)` (a shadow). Findings go to `report`; failures to the
 * cache's `error` event. Resolves when done (for tests; callers do not wait).
 */
export function verifyLater(
  samples: Map<string, Sample>,
  render: (redirect: (cache: FragmentCache) => FragmentCache) => void,
  report: (w: FragcacheWarning) => void,
  /** True when the render's data may predate an invalidation of the entry's tags: its output may be older, not a leak. */
  older: (s: Sample) => boolean = () => false,
): Promise<void> {
  return new Promise((done) => {
    setImmediate(() => {
      let writes: Promise<unknown>[] = [];
      try {
        writes = check(samples, render, report, older);
      } catch (err) {
        samples.values().next().value?.cache.report(err);
      }
      // Resolves once the replacements are written (close() waits for it).
      void Promise.all(writes).then(() => done());
    });
  });
}

function check(samples: Map<string, Sample>, render: (redirect: (cache: FragmentCache) => FragmentCache) => void, report: (w: FragcacheWarning) => void, older: (s: Sample) => boolean): Promise<unknown>[] {
  const writes: Promise<unknown>[] = [];
  const shadows = new Map<FragmentCache, FragmentCache>();
  const shadowOf = (real: FragmentCache) => {
    let s = shadows.get(real);
    if (!s) shadows.set(real, (s = new FragmentCache(new MemoryStore(), { prefix: real.prefix, version: real.version })));
    return s;
  };
  render(shadowOf);
  for (const [key, sample] of samples) {
    const { cache, entry, block } = sample;
    const fresh = shadowOf(cache).store.sync!.get(key);
    if (!fresh || fresh.body === entry.body) continue; // not rendered this time (a branch not taken), or the same
    // The request loaded its data before the entry's tags were last invalidated: the entry is newer than what this
    // render can produce. Neither a leak nor something to write back (it would bring old content back).
    if (older(sample)) continue;
    const d = firstDifference(entry.body, fresh.body);
    report({
      kind: 'verify',
      fragment: block.name,
      template: block.template,
      line: block.line,
      column: block.column,
      key,
      stored: d.stored,
      fresh: d.fresh,
      message: `${block.name} (${block.template ?? '(string)'}:${block.line}): a fresh render differs from the stored entry ${key} at character ${d.at} (stored ${JSON.stringify(d.stored)}, fresh ${JSON.stringify(d.fresh)}): its output depends on something its vary does not cover (a filter, global or function reading per-request data?). The entry was replaced.`,
    });
    writes.push(replace(cache, key, entry, fresh.body));
  }
  return writes;
}

/** Stores the fresh body under the key, with the served entry's tags and expiry (they were valid). */
function replace(cache: FragmentCache, key: string, entry: Entry, body: string): Promise<unknown> {
  const now = Date.now();
  const until = entry.staleUntil ?? entry.expires;
  if (until !== null && until <= now) return Promise.resolve();
  const next: Entry = { ...entry, body, created: now, checked: undefined };
  return cache.writeMany([{ key, entry: next, ttlMs: until === null ? null : until - now }]);
}
