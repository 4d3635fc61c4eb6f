/**
 * Cache keys that cannot collide.
 *
 * Vary values are written in a typed, self-delimiting encoding (every item says its type, strings say
 * their length), so the encoding of a tuple is injective: `1` and `"1"`, `null`, `"null"` and
 * `undefined`, `["a:","b"]` and `["a",":b"]`, `["a","b"]` and `["a:b"]` all differ, and so do markup (a SafeString) and
 * text, and a String object and a string. Short printable
 * encodings go into the key as they are (readable in `fragcache keys`); anything long or with spaces,
 * control characters or non-ASCII is replaced by its SHA-256, so stored keys have a bounded length and
 * values that come from users cannot be shaped to collide. The two forms start with different markers
 * (`=` and `#`), so they cannot collide with each other either.
 * @module
 */
import { createHash } from 'node:crypto';
import { KeyError, describe } from './errors';

/** Longest encoding kept verbatim in a key; longer ones are hashed. */
const MAX_VERBATIM = 64;
const PRINTABLE = /^[\x21-\x7e]*$/;
const NAME = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * SHA-256, base64url (43 characters), of the string's code units. A well-formed string is hashed as UTF-8; one with
 * lone surrogates as WTF-8 (each lone surrogate as its own 3-byte sequence, which no UTF-8 text contains), where
 * plain UTF-8 would turn `"\ud800"`, `"\udc00"` and `"\ufffd"` into the same bytes. Injective on every JavaScript
 * string, and the same hash as before for well-formed ones (stored keys keep their names).
 */
export function hash(text: string): string {
  return createHash('sha256').update(wellFormed(text) ? text : wtf8(text)).digest('base64url');
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const wellFormed = (s: string): boolean => ((s as { isWellFormed?: () => boolean }).isWellFormed?.() ?? !LONE_SURROGATE.test(s));

/** WTF-8 bytes of a string: UTF-8, except that a lone surrogate is encoded like a code point of its own. */
export function wtf8(s: string): Buffer {
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    const next = s.charCodeAt(i + 1);
    if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      i++; // a pair: plain UTF-8
      continue;
    }
    parts.push(Buffer.from(s.slice(from, i), 'utf8'), Buffer.from([0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f)]));
    from = i + 1;
  }
  parts.push(Buffer.from(s.slice(from), 'utf8'));
  return Buffer.concat(parts);
}

/** The typed encoding of one value (see the module comment). Throws {@link KeyError} for what cannot be a key. */
export function encodeValue(value: unknown, seen: unknown[] = []): string {
  switch (typeof value) {
    case 'string':
      return `s${value.length}:${value}`;
    case 'number':
      return Object.is(value, -0) ? 'n-0;' : `n${value};`;
    case 'boolean':
      return value ? 'T' : 'F';
    case 'undefined':
      return 'U';
    case 'bigint':
      return `b${value};`;
    case 'object': {
      if (value === null) return 'N';
      if (value instanceof Date) return `d${Number.isNaN(value.getTime()) ? 'NaN' : value.toISOString()};`;
      // Markup (Nunjucks' SafeString: `| safe`, a macro's output) is output as it is, text is escaped: never the same key.
      if (value instanceof String) {
        const proto = Object.getPrototypeOf(value);
        if (proto === String.prototype) return `#s${encodeValue(value.valueOf())}`; // a String object (escaped like text)
        const cls = String(proto?.constructor?.name ?? '?');
        return cls === 'SafeString' ? `m${encodeValue(String(value))}` : `o${encodeValue(cls)}m${encodeValue(String(value))}`;
      }
      if (value instanceof Number) return `#n${encodeValue(value.valueOf())}`;
      if (value instanceof Boolean) return `#b${encodeValue(value.valueOf())}`;
      if (seen.includes(value)) throw new KeyError('cannot vary on a cyclic object');
      seen.push(value);
      let out: string;
      if (Array.isArray(value)) {
        out = '[';
        // By index, so holes ("H") differ from an array without them.
        for (let i = 0; i < value.length; i++) out += i in value ? encodeValue(value[i], seen) : 'H';
        out += ']';
      } else if (value instanceof Map || value instanceof Set) {
        throw new KeyError(`cannot vary on ${describe(value)}: pass an array or a plain object`);
      } else {
        const proto = Object.getPrototypeOf(value);
        const keys = Object.keys(value).sort();
        if (proto === Object.prototype || proto === null) {
          // Key order does not matter.
          out = '{' + keys.map((k) => encodeValue(k) + encodeValue((value as Record<string, unknown>)[k], seen)).join('') + '}';
        } else {
          // Class instances (records, URLs…): their class name plus their own fields, else their JSON or text form.
          // One with neither (private fields only) would vary like any other: refuse it rather than collide.
          const cls = String(proto?.constructor?.name ?? '?');
          const asObject = value as { toJSON?: () => unknown; toString: () => string };
          let inner: string;
          if (keys.length) inner = '{' + keys.map((k) => encodeValue(k) + encodeValue((value as Record<string, unknown>)[k], seen)).join('') + '}';
          else if (typeof asObject.toJSON === 'function') inner = 'j' + encodeValue(asObject.toJSON(), seen);
          else if (asObject.toString !== Object.prototype.toString) inner = 't' + encodeValue(String(value));
          else throw new KeyError(`cannot vary on an instance of ${cls} with no fields of its own: vary on one of its values (e.g. its id)`);
          out = `o${encodeValue(cls)}${inner}`;
        }
      }
      seen.pop();
      return out;
    }
    default:
      throw new KeyError(`cannot vary on ${describe(value)}`);
  }
}

/** The key part for a tuple of vary values: verbatim (`=…`) when short and printable, else hashed (`#…`). */
export function varyPart(vary: readonly unknown[]): string {
  let enc = '';
  for (const v of vary) enc += encodeValue(v);
  return enc.length <= MAX_VERBATIM && PRINTABLE.test(enc) ? `=${enc}` : `#${hash(enc)}`;
}

const nameParts = new Map<string, string>();

/** The key part for a fragment name: the name itself when it is a short identifier, else its hash. */
export function namePart(name: string): string {
  let part = nameParts.get(name);
  if (part === undefined) {
    part = NAME.test(name) ? name : `#${hash(name)}`;
    if (nameParts.size > 10_000) nameParts.clear(); // names come from templates: few, but bound it anyway
    nameParts.set(name, part);
  }
  return part;
}

/** `digest` is the block-source digest, or `null` for `digest=false`. */
export function fragmentKey(prefix: string, name: string, digest: string | null, vary: readonly unknown[]): string {
  return keyFromParts(prefix, namePart(name), digest, varyPart(vary));
}

/** {@link fragmentKey} from parts already computed (the render hot path computes each part once). */
export function keyFromParts(prefix: string, namePart: string, digest: string | null, varyPart: string): string {
  return `${prefix}f:${namePart}/${digest ?? '-'}/${varyPart}`;
}

/** The tag that every entry of a fragment name carries (used by `invalidate(name)`). */
export function nameTag(name: string): string {
  return `n/${namePart(name)}`;
}

/** The tag that every entry of one variant carries, across templates and digests (`invalidate(name, vary)`). */
export function variantTag(name: string, vary: readonly unknown[]): string {
  return `v/${namePart(name)}/${varyPart(vary)}`;
}

/** {@link variantTag} from parts already computed. */
export function variantTagFromParts(namePart: string, varyPart: string): string {
  return `v/${namePart}/${varyPart}`;
}

/** The tag key of a user tag (`tags=[…]`, `invalidateTag`). User tags are free text, hence the hash rule. */
export function userTag(tag: string): string {
  return `t/${varyPart([tag])}`;
}

/** Short digest of a block's source (12 hex chars = 48 bits: it separates versions of one block, not users). */
export function sourceDigest(source: string): string {
  return createHash('sha256').update(source).digest('hex').slice(0, 12);
}
