import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { encodeValue, fragmentKey } from '../lib/keys';
import { KeyError } from '../lib/errors';

const key = (...vary: unknown[]) => fragmentKey('fc:1:', 'box', 'abc', vary);

describe('fragment keys', () => {
  test.each([
    ['1 vs "1"', [1], ['1']],
    ['null vs "null"', [null], ['null']],
    ['null vs undefined', [null], [undefined]],
    ['undefined vs "undefined"', [undefined], ['undefined']],
    ['undefined vs no value', [undefined], []],
    ['["a:","b"] vs ["a",":b"]', ['a:', 'b'], ['a', ':b']],
    ['["a","b"] vs ["a:b"]', ['a', 'b'], ['a:b']],
    ['["a","b"] vs [["a","b"]]', ['a', 'b'], [['a', 'b']]],
    ['true vs "true"', [true], ['true']],
    ['0 vs -0', [0], [-0]],
    ['0 vs false', [0], [false]],
    ['"" vs no value', [''], []],
    ['nested object vs its JSON', [{ a: 1 }], ['{"a":1}']],
    ['date vs its ISO string', [new Date('2026-01-02T03:04:05Z')], ['2026-01-02T03:04:05.000Z']],
    ['{a:"1&b=2"} vs {a:"1", b:"2"}', [{ a: '1&b=2' }], [{ a: '1', b: '2' }]],
    ['user1 + data vs user1:data', ['user1', 'data'], ['user1:data']],
    ['1n vs 1', [BigInt(1)], [1]],
  ])('%s give different keys', (_label, a, b) => {
    expect(key(...a)).not.toBe(key(...b));
  });

  test('object key order does not matter; equal tuples give equal keys', () => {
    expect(key({ a: 1, b: [1, 'x'] })).toBe(key({ b: [1, 'x'], a: 1 }));
    expect(key('x', 2, null)).toBe(key('x', 2, null));
    expect(key(new Date(5))).toBe(key(new Date(5)));
  });

  test('names are part of the key and cannot be confused with vary values', () => {
    expect(fragmentKey('p:', 'a_b', null, [])).not.toBe(fragmentKey('p:', 'a', null, ['b']));
    expect(fragmentKey('p:', 'a', null, [])).not.toBe(fragmentKey('p:', 'a', 'abc', []));
    expect(fragmentKey('p:', 'a b', null, [])).not.toBe(fragmentKey('p:', 'a', null, ['b']));
  });

  test('long and odd values give bounded, printable keys', () => {
    const odd = ['with spaces', 'line\nbreak', 'x'.repeat(10_000), '😀 emoji', 'tab\there', '\u0000'];
    const keys = odd.map((v) => key(v));
    for (const k of keys) {
      expect(k.length).toBeLessThanOrEqual(120);
      expect(k).toMatch(/^[\x21-\x7e]+$/);
    }
    expect(new Set(keys).size).toBe(odd.length);
    // A long fragment name is hashed too.
    expect(fragmentKey('p:', 'n'.repeat(500), null, []).length).toBeLessThan(120);
  });

  test('short printable vary values stay readable in the key', () => {
    expect(key(42, 'en')).toContain('=n42;s2:en');
  });

  test('values that cannot be keys raise KeyError', () => {
    expect(() => encodeValue(() => 1)).toThrow(KeyError);
    expect(() => encodeValue(Symbol('x'))).toThrow(KeyError);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => encodeValue(cyclic)).toThrow(/cyclic/);
    expect(() => encodeValue(new Map())).toThrow(KeyError);
  });

  test('the same tuple gives the same key in another process', () => {
    const vary = ['x y', 1, null, { b: 2, a: [true] }, 'long'.repeat(50)];
    const script = `require('tsx/cjs'); const { fragmentKey } = require(${JSON.stringify(path.join(__dirname, '../lib/keys.ts'))});
      process.stdout.write(fragmentKey('fc:1:', 'box', 'abc', ${JSON.stringify(vary)}));`;
    const other = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    expect(other).toBe(key(...vary));
  });
});
