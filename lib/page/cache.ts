/**
 * Whole-page entries over a {@link FragmentCache}: Django's two-step keys (a header-list entry per URL,
 * then the page key that includes the values of the request headers that list names), tag versions
 * shared with fragments, and page invalidation by URL.
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { StoreBudget } from '../budget';
import { FragmentCache } from '../cache';
import { fence, invalidationVersion } from '../fencing';
import { tagKeysOf, tagPairs, type Entry } from '../entry';
import { OptionError } from '../errors';
import { varyPart } from '../keys';
import { badHead, badPage } from './check';

/** The parts of a request a page key is made of. */
export interface PageRequest {
  /** `http` or `https`. */
  protocol: string;
  /** Host (with port), lower case. */
  host: string;
  /** Path and query string as received (`req.originalUrl`). */
  url: string;
  headers: IncomingHttpHeaders;
  /** Extra values the page varies on (the `key` option), or undefined. */
  extra?: unknown;
}

/** What a page entry keeps besides its body (`Entry.meta`). */
export interface PageMeta {
  status: number;
  /** Response headers to replay, lower-case names (no hop-by-hop, no `Set-Cookie`, no `Date`/`Age`). */
  headers: Record<string, string | string[]>;
  /** The `Vary` header names the key was built from. */
  vary: string[];
  etag: string;
}

/** A page entry as read from the store. `body` holds the response bytes as a latin1 string. */
export type PageEntry = Entry & { meta: PageMeta };

/** Upper-cases the hex digits of percent-escapes (`%2f` → `%2F`): both spell the same URL (RFC 3986 §6.2.2.1). */
export function normalEscapes(url: string): string {
  return url.replace(/%[0-9a-f]{2}/gi, (e) => e.toUpperCase());
}

/** Path and query in one normal form, so `invalidatePage('/a?b=1')` finds what `/a?b=1` stored. */
export function normalPath(url: string): string {
  let u: URL;
  try {
    u = new URL(url, 'http://x');
  } catch {
    throw new OptionError('url', url, 'expected a URL or a path');
  }
  return normalEscapes(u.pathname + u.search);
}

/**
 * The path as Express routes it under its default settings (case-insensitive, trailing slash ignored,
 * percent-escapes decoded, except `%2F`, which would change the path's segments). Used only for invalidation
 * tags: the loosest form, so `invalidatePage` drops every copy the app may route to the same path whatever
 * its `case sensitive routing` / `strict routing` settings (dropping one copy too many only costs a miss).
 */
export function routePath(url: string): string {
  normalPath(url); // validates
  const u = new URL(url, 'http://x');
  const path = u.pathname.replace(/(?:%[0-9a-f]{2})+/gi, (run) => {
    try {
      return decodeURIComponent(run).replace(/[/%]/g, (c) => encodeURIComponent(c));
    } catch {
      return run.toUpperCase(); // not UTF-8: kept escaped, in one letter case
    }
  });
  return path.toLowerCase().replace(/\/+$/, '') || '/';
}

/** How long an `invalidatePage` record lives: longer than any render that may have started before it. */
export const INVALIDATION_TTL_MS = 24 * 60 * 60 * 1000;

function newVersion(): string {
  return randomBytes(9).toString('base64url');
}

/** What the middleware read before the route ran, for {@link PageCache.store}. */
export interface PageTags {
  /** Epoch ms at which the page started (before its tag versions were read). */
  started: number;
  /**
   * The URL tags' records (the route path's, and the path+query's when there is a query) as they were when
   * the page started (`entry` undefined: there was none; it is created on store).
   */
  urls: { key: string; entry: Entry | undefined }[];
  /** Versions of the `tags` option, read (or created) before the route ran. */
  versions: Map<string, string>;
  /** Tags the route named while it ran (`res.locals.cacheTags`), if any. */
  late?: unknown;
}

/** Page entries of one cache under one key prefix (Django's `key_prefix`). */
export class PageCache {
  private readonly base: string;
  /** Set once a middleware served (or produced) a page through this: `invalidatePage(url)` then reaches it. */
  served = false;

  constructor(
    readonly cache: FragmentCache,
    /** Key prefix of these pages (default `""`): pages under different prefixes never see each other. */
    readonly prefix = '',
  ) {
    if (typeof prefix !== 'string') throw new OptionError('prefix', prefix, 'expected a string');
    this.base = cache.base;
  }

  /**
   * The internal tags of a page, on any host, under any prefix ({@link invalidatePage}): one for its route
   * path (every query variant), and one for its path+query when it has a query.
   */
  static urlTags(url: string): string[] {
    const path = routePath(url);
    const query = new URL(url, 'http://x').search;
    const tags = [`p/${varyPart([path])}`];
    if (query.length > 1) tags.push(`q/${varyPart([path, normalEscapes(query)])}`);
    return tags;
  }

  /** The tag {@link invalidatePage} bumps for `url`: the path's (no query: every variant), else the path+query's. */
  static urlTag(url: string): string {
    return PageCache.urlTags(url).at(-1)!;
  }

  private urlPart(r: PageRequest): string {
    // Injective encoding of each part: no host, path or query can be shaped to reach another page's key.
    return varyPart([this.prefix, r.protocol, r.host, normalEscapes(r.url)]);
  }

  /** Key of the entry that lists the headers a URL's page varies on (step 1). */
  headerKey(r: PageRequest): string {
    return `${this.base}ph:${this.urlPart(r)}`;
  }

  /**
   * Key of a page (step 2): the URL, then each varied header's value. A missing header (`null`) and an empty
   * one (`""`) are different values; `vary` is sorted, so the order of the `Vary` header does not matter.
   */
  pageKey(r: PageRequest, vary: readonly string[]): string {
    const values = vary.map((name) => {
      const v = r.headers[name];
      return [name, v === undefined ? null : Array.isArray(v) ? v.join(', ') : v];
    });
    return `${this.base}pg:${this.urlPart(r)}/${varyPart([values, r.extra])}`;
  }

  /**
   * The valid page for a request, or undefined. Store failures read as a miss (and are reported). With
   * `check` (entries from a shared store), an entry that is not one this cache would have written comes back
   * as `bad`, with why: the caller treats it as a miss and reports it. A miss for a URL whose `Vary` list is
   * known says which page key missed (`missed`).
   */
  async lookup(r: PageRequest, check = false, budget?: StoreBudget): Promise<{ entry: PageEntry } | { bad: string; key: string } | { missed: string } | undefined> {
    const headKey = this.headerKey(r);
    const head = await this.read(headKey, budget);
    if (!head) return undefined;
    const badH = check ? badHead(head) : Array.isArray(head.meta?.vary) ? undefined : 'no Vary list';
    if (badH) return { bad: badH, key: headKey };
    const key = this.pageKey(r, head.meta!.vary as string[]);
    const entry = await this.read(key, budget);
    if (!entry || !entry.meta) return { missed: key };
    const bad = check ? badPage(entry) : undefined;
    if (bad) return { bad, key };
    if (entry.tags && !(await this.tagsValid(entry, budget))) return { missed: key };
    return { entry: entry as PageEntry };
  }

  private async read(key: string, budget?: StoreBudget): Promise<Entry | undefined> {
    const sync = this.cache.store.sync;
    const e = sync ? sync.get(key) : (await this.cache.readMany([key], budget))[0];
    return e && (e.expires === null || e.expires > Date.now()) ? e : undefined;
  }

  private async tagsValid(entry: Entry, budget?: StoreBudget): Promise<boolean> {
    const sync = this.cache.store.sync;
    const gen = sync?.generation?.();
    // Memory store: nothing about tags changed since this entry was last checked.
    if (gen !== undefined && entry.checked === gen) return true;
    let found: Map<string, Entry>;
    try {
      // Read only: a missing record means "invalid", and a look-up never writes one.
      found = await this.readTags(tagKeysOf(entry), budget);
    } catch (err) {
      this.cache.report(err);
      return false;
    }
    const ok = FragmentCache.tagsMatch(entry, { get: (k: string) => found.get(k)?.body });
    if (ok && sync?.generation) entry.checked = sync.generation();
    return ok;
  }

  /**
   * The live tag version records among `tagKeys` (an expired or missing one is absent). Never writes;
   * rejects when the store fails.
   */
  async readTags(tagKeys: readonly string[], budget?: StoreBudget): Promise<Map<string, Entry>> {
    const out = new Map<string, Entry>();
    if (!tagKeys.length) return out;
    const sync = this.cache.store.sync;
    const found = sync ? tagKeys.map((k) => sync.get(k)) : await this.cache.guard.run('getMany', () => this.cache.store.getMany(tagKeys), undefined, budget);
    const now = Date.now();
    tagKeys.forEach((k, i) => {
      const e = found[i];
      if (e && (e.expires === null || e.expires > now)) out.set(k, e);
    });
    return out;
  }

  /** Store key of the URL tag {@link invalidatePage} bumps ({@link urlTag}). */
  urlTagKey(url: string): string {
    return this.cache.tagKey(PageCache.urlTag(url));
  }

  /** Tag store keys for a page: its URL tags, then the user tags (validated; `where` names the option). */
  tagKeys(url: string, tags: unknown, where: string): { urls: string[]; user: string[] } {
    return {
      urls: PageCache.urlTags(url).map((t) => this.cache.tagKey(t)),
      user: this.cache.userTags(tags, where).map((t) => this.cache.tagKey(t)),
    };
  }

  /**
   * Reads a page's tags before its route runs: the URL tag is only read (it is created when a page is
   * stored, so a URL that is never stored leaves nothing behind); the `tags` option's versions are read and
   * the missing ones created, as for fragments (a fragment of the page may carry the same tag). Rejects when
   * the store fails.
   */
  async startTags(url: string, tags: unknown, where: string, ttlMs: number | null = null, since?: number, budget?: StoreBudget): Promise<PageTags> {
    // The request's start when known (earlier middleware may have loaded data before this runs).
    const started = since !== undefined && since <= Date.now() ? since : Date.now();
    const { urls: urlKeys, user: userKeys } = this.tagKeys(url, tags, where);
    const found = await this.readTags([...urlKeys, ...userKeys], budget);
    const versions = new Map<string, string>();
    const missing: string[] = [];
    for (const k of userKeys) {
      const e = found.get(k);
      if (e) versions.set(k, e.body);
      else missing.push(k);
    }
    if (missing.length) for (const [k, v] of await this.cache.tagVersions(missing, ttlMs, budget)) versions.set(k, v);
    return { started, urls: urlKeys.map((key) => ({ key, entry: found.get(key) })), versions };
  }

  /**
   * Stores a page (header list and page in one `setMany`) with the tag versions read before its route ran.
   * Resolves false when the page must not be stored: a tag it names was invalidated while it was produced.
   *
   * The URL tag record is written only here, with a TTL of twice the page's (so a URL never stored leaves no
   * record, and a stored one's record goes away after its pages). If the record did not exist when the page
   * started and exists now, an `invalidatePage` (or another store) happened meanwhile: not stored. If it
   * exists but would expire before this page: on the memory store it is extended in place (same version, in
   * one tick); a shared store has no compare-and-set, and rewriting the version could undo an `invalidatePage`
   * made by another process in between, so there the page is kept only as long as the record lives.
   * Store failures reject.
   */
  async store(r: PageRequest, page: { body: string; meta: PageMeta; ttlMs: number; tags: PageTags }): Promise<boolean> {
    const t = page.tags;
    const versions = new Map(t.versions);
    if (t.late !== undefined) {
      const keys = this.cache.userTags(t.late, 'res.locals.cacheTags').map((tag) => this.cache.tagKey(tag)).filter((k) => !versions.has(k));
      for (const [k, v] of await this.cache.tagVersions(keys, 2 * page.ttlMs)) versions.set(k, v);
    }
    let ttlMs = page.ttlMs;
    // Fencing, as for fragments (lib/fencing.ts): a tag invalidated after the request started (while earlier
    // middleware or the route loaded the data, or for late tags at any time before now) keeps the page out.
    // Compared in the store's clock through the invalidation time each version carries, never host clocks.
    // The URL records count too: an `invalidatePage` after the request started and before their versions were
    // read (while a session, an auth layer or any middleware mounted before the cache loaded the data) leaves
    // the new version in hand, and only its time tells that the data predates it.
    const fenced = new Map(versions);
    for (const { key, entry: url } of t.urls) if (url) fenced.set(key, url.body);
    if (fenced.size) {
      await this.cache.clock.ready(this.cache.guard.timeout);
      const f = fence(tagPairs(fenced), t.started, t.started, this.cache.clock, this.cache.unknownSinceWindow);
      if (f.store && f.expiresBy !== undefined) ttlMs = Math.min(ttlMs, f.expiresBy - Date.now());
      if (!f.store || ttlMs < 1000) {
        // Served, not stored (as a fencing fragment): counted and reported like one, under the page's URL.
        this.cache.count('', 'fenced');
        if (this.cache.events.listenerCount('fenced')) this.cache.events.emit('fenced', { name: r.url, key: this.pageKey(r, page.meta.vary) });
        return false;
      }
    }
    const recordTtl = 2 * ttlMs;
    const now = Date.now();
    const sync = this.cache.store.sync;
    for (const { key, entry: url } of t.urls) {
      if (url) {
        versions.set(key, url.body);
        if (sync) {
          // Memory store: checking costs nothing, so a page invalidated meanwhile is not even written, and a
          // record that expired meanwhile is never brought back (entries stamped with it are invalid for good).
          const cur = sync.get(key);
          if (!cur || cur.body !== url.body || (cur.expires !== null && cur.expires <= now)) return false;
        }
        if (url.expires !== null && url.expires < now + ttlMs) {
          if (sync) {
            // Same tick: nothing can bump the record between this read and this write.
            const cur = sync.get(key)!;
            sync.set(key, { ...cur, expires: now + recordTtl }, recordTtl);
          } else {
            ttlMs = url.expires - now;
            if (ttlMs < 1000) return false; // the record is about to go: the next request stores under a new one
          }
        }
      } else {
        const v = newVersion();
        const record: Entry = { body: v, created: now, expires: now + recordTtl };
        // `add`: if anyone wrote the record since the page started (an invalidatePage, another store), do not store.
        const added = sync ? sync.add(key, record, recordTtl) : await this.cache.guard.run('add', () => this.cache.store.add(key, record, recordTtl));
        if (!added) return false;
        versions.set(key, v);
      }
    }
    const expires = now + ttlMs;
    const head: Entry = { body: '', created: now, expires, meta: { vary: page.meta.vary } };
    const entry: Entry = {
      body: page.body,
      created: now,
      expires,
      tags: tagPairs(versions),
      meta: { ...page.meta, url: r.url },
    };
    const key = this.pageKey(r, page.meta.vary);
    const written = await this.cache.writeMany([
      { key: this.headerKey(r), entry: head, ttlMs },
      { key, entry, ttlMs },
    ]);
    if (!written) return false;
    this.cache.count('', 'stores');
    this.cache.events.emit('store', { name: r.url, key });
    return true;
  }

  /**
   * Drops every cached variant of a page (any host, any prefix, any Vary values) by writing a new version of
   * its URL tag, stamped with an upper bound of the store's time (as `invalidateTag` does): a page whose request
   * started before it is not stored, even if it read the new version (its data may have been loaded before).
   * The record lives 24 hours (`INVALIDATION_TTL_MS`); once it is gone, a missing record still invalidates
   * every old entry. Rejects on store failure.
   */
  async invalidatePage(url: string): Promise<void> {
    const key = this.urlTagKey(url);
    // As invalidateTag: a process that has not measured the store's clock yet waits for it (at once on the memory store).
    await this.cache.clock.ready(this.cache.guard.isOpen ? this.cache.guard.timeout : Math.max(this.cache.guard.timeout, 3000));
    const record: Entry = { body: invalidationVersion(this.cache.clock.upperSync()), created: Date.now(), expires: Date.now() + INVALIDATION_TTL_MS };
    const sync = this.cache.store.sync;
    if (sync) sync.set(key, record, INVALIDATION_TTL_MS);
    else await this.cache.guard.run('setMany', () => this.cache.store.setMany([{ key, entry: record, ttlMs: INVALIDATION_TTL_MS }]));
    this.cache.events.emit('invalidate', { kind: 'key', target: normalPath(url) });
  }
}
