/**
 * Whole-page entries over a {@link FragmentCache}: Django's two-step keys (a header-list entry per URL,
 * then the page key that includes the values of the request headers that list names), tag versions
 * shared with fragments, and page invalidation by URL.
 * @module
 */
import type { IncomingHttpHeaders } from 'node:http';
import { FragmentCache } from '../cache';
import { tagKeysOf, tagPairs, type Entry } from '../entry';
import { OptionError } from '../errors';
import { varyPart } from '../keys';

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

/** Path and query in one normal form, so `invalidatePage('/a?b=1')` finds what `/a?b=1` stored. */
export function normalPath(url: string): string {
  let u: URL;
  try {
    u = new URL(url, 'http://x');
  } catch {
    throw new OptionError('url', url, 'expected a URL or a path');
  }
  return u.pathname + u.search;
}

/** Page entries of one cache under one key prefix (Django's `key_prefix`). */
export class PageCache {
  private readonly base: string;

  constructor(
    readonly cache: FragmentCache,
    /** Key prefix of these pages (default `""`): pages under different prefixes never see each other. */
    readonly prefix = '',
  ) {
    if (typeof prefix !== 'string') throw new OptionError('prefix', prefix, 'expected a string');
    this.base = cache.base;
  }

  /** The internal tag every page of one path+query carries, on any host, under any prefix ({@link invalidatePage}). */
  static urlTag(url: string): string {
    return `p/${varyPart([normalPath(url)])}`;
  }

  private urlPart(r: PageRequest): string {
    // Injective encoding of each part: no host, path or query can be shaped to reach another page's key.
    return varyPart([this.prefix, r.protocol, r.host, r.url]);
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

  /** The valid page for a request, or undefined. Store failures read as a miss (and are reported). */
  async lookup(r: PageRequest): Promise<PageEntry | undefined> {
    const head = await this.read(this.headerKey(r));
    const vary = head?.meta?.vary;
    if (!Array.isArray(vary)) return undefined;
    const entry = await this.read(this.pageKey(r, vary as string[]));
    if (!entry || !entry.meta) return undefined;
    if (entry.tags && !(await this.tagsValid(entry))) return undefined;
    return entry as PageEntry;
  }

  private async read(key: string): Promise<Entry | undefined> {
    const sync = this.cache.store.sync;
    const e = sync ? sync.get(key) : (await this.cache.readMany([key]))[0];
    return e && (e.expires === null || e.expires > Date.now()) ? e : undefined;
  }

  private async tagsValid(entry: Entry): Promise<boolean> {
    const sync = this.cache.store.sync;
    const gen = sync?.generation?.();
    // Memory store: nothing about tags changed since this entry was last checked.
    if (gen !== undefined && entry.checked === gen) return true;
    let versions: Map<string, string>;
    try {
      versions = await this.cache.tagVersions(tagKeysOf(entry));
    } catch (err) {
      this.cache.report(err);
      return false;
    }
    const ok = FragmentCache.tagsMatch(entry, versions);
    if (ok && sync?.generation) entry.checked = sync.generation();
    return ok;
  }

  /** Tag store keys for a page: its URL tag and the user tags (validated; `where` names the option). */
  tagKeys(url: string, tags: unknown, where: string): string[] {
    return [PageCache.urlTag(url), ...this.cache.userTags(tags, where)].map((t) => this.cache.tagKey(t));
  }

  /**
   * Versions of tags the route named only once its response was produced (`res.locals.cacheTags`). A tag
   * whose version record was written after `since` was invalidated while the page was produced: then the
   * page must not be stored, and this resolves undefined.
   */
  async lateVersions(tagKeys: readonly string[], since: number): Promise<Map<string, string> | undefined> {
    if (!tagKeys.length) return new Map();
    const found = await this.cache.readMany(tagKeys);
    if (found.some((e) => e && e.created >= since)) return undefined;
    return this.cache.tagVersions(tagKeys);
  }

  /** Writes the header list and the page (one `setMany`). Store failures are reported, never thrown. */
  async store(r: PageRequest, page: { body: string; meta: PageMeta; ttlMs: number; tags: Map<string, string> }): Promise<void> {
    const now = Date.now();
    const expires = now + page.ttlMs;
    const head: Entry = { body: '', created: now, expires, meta: { vary: page.meta.vary } };
    const entry: Entry = {
      body: page.body,
      created: now,
      expires,
      tags: page.tags.size ? tagPairs(page.tags) : undefined,
      meta: { ...page.meta, url: r.url },
    };
    const key = this.pageKey(r, page.meta.vary);
    await this.cache.writeMany([
      { key: this.headerKey(r), entry: head, ttlMs: page.ttlMs },
      { key, entry, ttlMs: page.ttlMs },
    ]);
    this.cache.count('', 'stores');
    this.cache.events.emit('store', { name: r.url, key });
  }

  /** Drops every cached variant of a page (any host, any prefix, any Vary values). Rejects on store failure. */
  async invalidatePage(url: string): Promise<void> {
    await this.cache.bumpTags([PageCache.urlTag(url)]);
    this.cache.events.emit('invalidate', { kind: 'key', target: normalPath(url) });
  }
}
