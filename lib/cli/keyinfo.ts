/**
 * Reading fragcache's store keys back: which kind of entry a key holds, the fragment name and digest,
 * the vary values of verbatim (`=…`) key parts, and the URL of whole-page entries. The layouts are those
 * of `lib/keys.ts`, `lib/cache.ts` (values, tags) and `lib/page/cache.ts` (pages).
 * @module
 */

/**
 * What a store key is: a fragment, a low-level value, a whole page (`page`), the list of request headers
 * a URL's pages vary on (`page-vary`), a tag version, or something else under the prefix.
 */
export interface KeyInfo {
  kind: 'fragment' | 'value' | 'page' | 'page-vary' | 'tag' | 'other';
  /**
   * Fragment name part (the name, or `#hash` for long names); for tags, the tag as people wrote it
   * (`tag:article:1`, `url:/articles?page=2`); for values, the key; for pages, the URL.
   */
  name?: string;
  digest?: string;
  /** The vary part as stored (`=…` verbatim or `#hash`). */
  varyPart?: string;
  /** Decoded vary values when the part is verbatim (pages: the varied request headers as `[name, value]` pairs, then the extra key). */
  vary?: unknown[];
  /** Fragments whose vary part is a hash: the readable form of the values stored with the entry, when there is one. */
  varyPreview?: string;
  /** Pages: `protocol://host/path?query` (just the path and query when the key holds a hash of it). */
  url?: string;
  /** Pages stored under a page key prefix (`pageCache({ prefix })`): that prefix. */
  pagePrefix?: string;
}

/** Classifies a key of a cache with this prefix and version. `entry` (its stored value) gives the URL of a page whose key is hashed. */
export function keyInfo(key: string, prefix: string, version: string, entry?: { meta?: Record<string, unknown> }): KeyInfo {
  if (key.startsWith(`${prefix}:tag:`)) return { kind: 'tag', name: describeTag(key.slice(prefix.length + 5)) };
  const base = `${prefix}:${version}:`;
  if (key.startsWith(`${base}f:`)) {
    const rest = key.slice(base.length + 2);
    const [name, digest, ...v] = rest.split('/');
    const varyPart = v.join('/');
    const info: KeyInfo = { kind: 'fragment', name, digest, varyPart, vary: decodeVaryPart(varyPart) };
    if (!info.vary && typeof entry?.meta?.vary === 'string') info.varyPreview = entry.meta.vary;
    return info;
  }
  if (key.startsWith(`${base}k:`)) {
    const part = key.slice(base.length + 2);
    const v = decodeVaryPart(part);
    return { kind: 'value', name: v && v.length === 1 && typeof v[0] === 'string' ? v[0] : part };
  }
  if (key.startsWith(`${base}pg:`) || key.startsWith(`${base}ph:`)) {
    const page = key.startsWith(`${base}pg:`);
    const rest = key.slice(base.length + 3);
    const { url, pagePrefix, end } = pageUrl(rest);
    const metaUrl = entry?.meta && typeof entry.meta.url === 'string' ? entry.meta.url : undefined;
    const info: KeyInfo = { kind: page ? 'page' : 'page-vary', url: url ?? metaUrl };
    info.name = info.url;
    if (pagePrefix) info.pagePrefix = pagePrefix;
    if (page && end !== undefined && rest[end] === '/') {
      info.varyPart = rest.slice(end + 1);
      info.vary = decodeVaryPart(info.varyPart);
    }
    return info;
  }
  return { kind: 'other' };
}

/**
 * The URL part of a page key (`varyPart([pagePrefix, protocol, host, url])`): the readable URL when it is
 * verbatim, and where the part ends (it may contain "/", so it is read, not split).
 */
function pageUrl(rest: string): { url?: string; pagePrefix?: string; end?: number } {
  if (rest.startsWith('#')) {
    const slash = rest.indexOf('/');
    return { end: slash < 0 ? rest.length : slash };
  }
  if (!rest.startsWith('=')) return {};
  try {
    const r = new Reader(rest, 1);
    const parts = [r.value(), r.value(), r.value(), r.value()];
    if (!parts.every((p) => typeof p === 'string')) return {};
    const [pagePrefix, protocol, host, url] = parts as string[];
    return { url: `${protocol}://${host}${url}`, pagePrefix: pagePrefix || undefined, end: r.position };
  } catch {
    return {};
  }
}

/** A tag id as people wrote it: `name:front-page`, `variant:sidebar(7)`, `tag:article:1`, `url:/articles?page=2` (the tag every page of a URL carries). */
export function describeTag(id: string): string {
  if (id === 'last') return 'time of the latest invalidation';
  if (id.startsWith('n/')) return `name:${id.slice(2)}`;
  if (id.startsWith('v/')) {
    const [, name, ...v] = id.split('/');
    const vary = decodeVaryPart(v.join('/'));
    return `variant:${name}(${vary ? vary.map((x) => JSON.stringify(x)).join(', ') : v.join('/')})`;
  }
  if (id.startsWith('t/') || id.startsWith('p/')) {
    const v = decodeVaryPart(id.slice(2));
    return `${id[0] === 't' ? 'tag' : 'url'}:${v && v.length === 1 && typeof v[0] === 'string' ? v[0] : id.slice(2)}`;
  }
  return id;
}

/** Decodes a verbatim vary part (`=` + typed encoding); undefined for hashed (`#…`) or malformed parts. */
export function decodeVaryPart(part: string): unknown[] | undefined {
  if (!part.startsWith('=')) return undefined;
  try {
    const r = new Reader(part.slice(1));
    const out: unknown[] = [];
    while (!r.done) out.push(r.value());
    return out;
  } catch {
    return undefined;
  }
}

/** Reader of the typed encoding (`encodeValue` in lib/keys.ts). */
class Reader {
  constructor(
    private readonly s: string,
    private i = 0,
  ) {}
  get done(): boolean {
    return this.i >= this.s.length;
  }
  /** Offset of the next character to read. */
  get position(): number {
    return this.i;
  }
  private until(ch: string): string {
    const j = this.s.indexOf(ch, this.i);
    if (j < 0) throw new Error('malformed');
    const out = this.s.slice(this.i, j);
    this.i = j + 1;
    return out;
  }
  value(): unknown {
    const t = this.s[this.i++];
    switch (t) {
      case 's': {
        const len = Number(this.until(':'));
        const out = this.s.slice(this.i, this.i + len);
        if (out.length !== len) throw new Error('malformed');
        this.i += len;
        return out;
      }
      case 'n':
        return Number(this.until(';'));
      case 'b':
        return BigInt(this.until(';'));
      case 'd':
        return this.until(';');
      case 'T':
        return true;
      case 'F':
        return false;
      case 'U':
        return undefined;
      case 'N':
        return null;
      case '[': {
        const arr: unknown[] = [];
        while (this.s[this.i] !== ']') {
          if (this.done) throw new Error('malformed');
          arr.push(this.value());
        }
        this.i++;
        return arr;
      }
      case '{': {
        const obj: Record<string, unknown> = {};
        while (this.s[this.i] !== '}') {
          if (this.done) throw new Error('malformed');
          const k = this.value();
          obj[String(k)] = this.value();
        }
        this.i++;
        return obj;
      }
      default:
        throw new Error('malformed');
    }
  }
}

/** Glob (`*`, `?`) to an anchored regular expression. */
export function globToRegExp(glob: string): RegExp {
  const src = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${src}$`);
}
