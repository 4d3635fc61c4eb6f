/**
 * Property tests of key injectivity (issues 9 and 13): for arbitrary vary tuples, keys are equal exactly when the
 * tuples are equal. Equality is defined below ({@link same}): by type as Nunjucks sees it (markup, text, a String
 * object, numbers and their objects, dates by time), code unit by code unit for strings, object key order ignored.
 */
import fc from 'fast-check';
import nunjucks from 'nunjucks';
import { FragmentCache, MemoryStore } from '../lib';
import { fragmentKey, hash, nameTag, userTag, variantTag } from '../lib/keys';

const SafeString = nunjucks.runtime.SafeString;
const key = (vary: readonly unknown[]) => fragmentKey('fc:1:', 'box', 'abc', vary);

/** Any UTF-16 code unit, with lone surrogates, U+FFFD and a few look-alikes made likely (collisions hide there). */
const unit = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('\ud800', '\udbff', '\udc00', '\udfff', '\ufffd', '\ud83d\ude00', 'a', '1', ':', 's', '=', '#') },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) },
  { weight: 1, arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) },
);
const str = fc.oneof(
  { weight: 8, arbitrary: fc.string({ unit, maxLength: 8 }) },
  // Huge values (hashed, never verbatim), some sharing a long prefix.
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 60, max: 20_000 }), fc.string({ unit, maxLength: 3 })).map(([n, s]) => 'x'.repeat(n) + s) },
);

type Tree = unknown;
const { value } = fc.letrec<{ value: Tree; leaf: Tree }>((tie) => ({
  leaf: fc.oneof(
    str,
    str.map((s) => new SafeString(s)), // markup
    str.map((s) => new String(s)), // a String object
    fc.integer({ min: -3, max: 3 }).map(String), // numeric strings
    fc.integer({ min: -3, max: 3 }),
    fc.double(), // -0, NaN, ±Infinity included
    fc.double().map((n) => new Number(n)),
    fc.boolean(),
    fc.boolean().map((b) => new Boolean(b)),
    fc.bigInt({ min: -3n, max: 3n }),
    fc.constantFrom(null, undefined),
    fc.date({ min: new Date(-1e14), max: new Date(1e14) }),
    fc.constant(new Date(Number.NaN)),
  ),
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    tie('leaf'),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.sparseArray(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.string({ unit, maxLength: 3 }), tie('value'), { maxKeys: 4 }),
  ),
}));
const tuple = fc.array(value, { maxLength: 4 });

const kind = (v: unknown): string => {
  if (typeof v !== 'object' || v === null) return typeof v + (v === null ? 'null' : '');
  if (v instanceof SafeString) return 'markup';
  if (v instanceof String) return 'String';
  if (v instanceof Number) return 'Number';
  if (v instanceof Boolean) return 'Boolean';
  if (v instanceof Date) return 'Date';
  if (Array.isArray(v)) return 'array';
  return 'object';
};

/** Tuple equality as keys must see it. */
function same(a: unknown, b: unknown): boolean {
  const k = kind(a);
  if (k !== kind(b)) return false;
  switch (k) {
    case 'markup':
    case 'String':
      return String(a) === String(b);
    case 'Number':
    case 'Boolean':
      return Object.is((a as object).valueOf(), (b as object).valueOf());
    case 'Date':
      return Object.is((a as Date).getTime(), (b as Date).getTime());
    case 'array': {
      const x = a as unknown[];
      const y = b as unknown[];
      if (x.length !== y.length) return false;
      for (let i = 0; i < x.length; i++) if (i in x !== i in y || (i in x && !same(x[i], y[i]))) return false;
      return true;
    }
    case 'object': {
      const x = a as Record<string, unknown>;
      const y = b as Record<string, unknown>;
      const kx = Object.keys(x).sort();
      const ky = Object.keys(y).sort();
      return kx.length === ky.length && kx.every((kk, i) => kk === ky[i] && same(x[kk], y[kk]));
    }
    default:
      return Object.is(a, b); // primitives: NaN equals NaN, 0 is not -0
  }
}

/** A copy built from fresh objects, with every object's keys in reverse order. */
function copy(v: unknown): unknown {
  switch (kind(v)) {
    case 'markup':
      return new SafeString(String(v));
    case 'String':
      return new String(String(v));
    case 'Number':
      return new Number((v as number).valueOf());
    case 'Boolean':
      return new Boolean((v as boolean).valueOf());
    case 'Date':
      return new Date((v as Date).getTime());
    case 'array': {
      const x = v as unknown[];
      const out: unknown[] = new Array(x.length);
      for (let i = 0; i < x.length; i++) if (i in x) out[i] = copy(x[i]);
      return out;
    }
    case 'object': {
      const out: Record<string, unknown> = {};
      for (const kk of Object.keys(v as object).reverse()) out[kk] = copy((v as Record<string, unknown>)[kk]);
      return out;
    }
    default:
      return v;
  }
}

/** A tuple that differs from `t` in one small way (where collisions would hide), or that is equal to it. */
const near = (t: unknown[]) =>
  fc.oneof(
    fc.constant(copy(t) as unknown[]),
    fc.tuple(fc.nat(), value).map(([i, v]) => (t.length ? t.map((x, j) => (j === i % t.length ? v : copy(x))) : [v])),
    fc.constant(t.map((x) => (typeof x === 'string' ? new SafeString(x) : x instanceof SafeString ? String(x) : copy(x)))),
    fc.constant(t.slice(0, -1).map(copy)),
    fc.constant(t.map((x) => (typeof x === 'string' ? x.replace(/[\ud800-\udfff]/, '\ufffd') : copy(x)))),
  );

const runs = Number(process.env.FC_RUNS ?? 300);

describe('keys are equal exactly when the tuples are equal (fast-check)', () => {
  test('a tuple and an equal copy (other objects, other key order) give the same key', () => {
    fc.assert(
      fc.property(tuple, (t) => key(t) === key(copy(t) as unknown[])),
      { numRuns: runs },
    );
  });

  test('two arbitrary tuples: same key if and only if equal', () => {
    fc.assert(
      fc.property(tuple, tuple, (a, b) => (key(a) === key(b)) === same(a, b)),
      { numRuns: runs },
    );
  });

  test('a tuple and a near copy (one value changed, markup for text, a lone surrogate for U+FFFD…): same key if and only if equal', () => {
    fc.assert(
      fc.property(
        tuple.chain((t) => fc.tuple(fc.constant(t), near(t))),
        ([a, b]) => (key(a) === key(b)) === same(a, b),
      ),
      { numRuns: runs },
    );
  });

  test('strings as tags, fragment names, variant tags and low-level keys: same key if and only if same code units', () => {
    const cache = new FragmentCache(new MemoryStore());
    const pair = fc.oneof(
      fc.tuple(str, str),
      str.map((s) => [s, s] as [string, string]),
      str.map((s) => [s, s.replace(/[\ud800-\udfff]/g, '\ufffd')] as [string, string]),
    );
    fc.assert(
      fc.property(pair, ([a, b]) => {
        const eq = a === b;
        if ((userTag(a) === userTag(b)) !== eq) return false;
        if ((hash(a) === hash(b)) !== eq) return false;
        if (a && b && (nameTag(a) === nameTag(b)) !== eq) return false;
        if (a && b && (variantTag('n', [a]) === variantTag('n', [b])) !== eq) return false;
        return !(a && b) || (cache.valueKey(a) === cache.valueKey(b)) === eq;
      }),
      { numRuns: runs * 3 },
    );
  });

  test('the three strings of the issue hash apart; a well-formed string hashes as its UTF-8 (stored keys keep their names)', () => {
    const keys = ['\ud800', '\udc00', '\ufffd', '\ud800\udc00', '\udc00\ud800'].map((s) => key([s]));
    expect(new Set(keys).size).toBe(5);
    expect(new Set(['\ud800', '\udc00', '\ufffd'].map(userTag)).size).toBe(3);
    const { createHash } = require('node:crypto') as typeof import('node:crypto');
    expect(hash('é😀 x')).toBe(createHash('sha256').update('é😀 x', 'utf8').digest('base64url'));
  });
});
