/**
 * Reading fragcache's store keys back: which kind of entry a key holds, the fragment name and digest,
 * and the vary values of verbatim (`=…`) key parts. The layouts are those of `lib/keys.ts`.
 * @module
 */

/** What a store key is. */
export interface KeyInfo {
  kind: 'fragment' | 'value' | 'page' | 'tag' | 'other';
  /** Fragment name part (the name, or `#hash` for long names); for tags, the tag id. */
  name?: string;
  digest?: string;
  /** The vary part as stored (`=…` verbatim or `#hash`). */
  varyPart?: string;
  /** Decoded vary values when the part is verbatim. */
  vary?: unknown[];
}

/** Classifies a key of a cache with this prefix and version. */
export function keyInfo(key: string, prefix: string, version: string): KeyInfo {
  if (key.startsWith(`${prefix}:tag:`)) return { kind: 'tag', name: describeTag(key.slice(prefix.length + 5)) };
  const base = `${prefix}:${version}:`;
  if (key.startsWith(`${base}f:`)) {
    const rest = key.slice(base.length + 2);
    const [name, digest, ...v] = rest.split('/');
    const varyPart = v.join('/');
    return { kind: 'fragment', name, digest, varyPart, vary: decodeVaryPart(varyPart) };
  }
  if (key.startsWith(`${base}k:`)) return { kind: 'value' };
  if (key.startsWith(`${base}p:`)) return { kind: 'page' };
  return { kind: 'other' };
}

/** A tag id as people wrote it: `name:front-page`, `variant:sidebar(7)`, `tag:article:1`. */
export function describeTag(id: string): string {
  if (id.startsWith('n/')) return `name:${id.slice(2)}`;
  if (id.startsWith('v/')) {
    const [, name, ...v] = id.split('/');
    const vary = decodeVaryPart(v.join('/'));
    return `variant:${name}(${vary ? vary.map((x) => JSON.stringify(x)).join(', ') : v.join('/')})`;
  }
  if (id.startsWith('t/')) {
    const v = decodeVaryPart(id.slice(2));
    return `tag:${v && typeof v[0] === 'string' ? v[0] : id.slice(2)}`;
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
  private i = 0;
  constructor(private readonly s: string) {}
  get done(): boolean {
    return this.i >= this.s.length;
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
