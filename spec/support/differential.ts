/**
 * The template generator of the differential tests (`spec/differential.spec.ts`, `spec/differential-fleet.spec.ts`):
 * seeded random template sets with the `cache` tag in every placement, their data, the invalidations that change
 * it, plain Nunjucks' rendering of the same templates without the cache tags, and the shrinker that reduces a
 * failing set. See the module comment of `spec/differential.spec.ts` for the rules the generated templates follow.
 */
import nunjucks from 'nunjucks';
import type { Engine } from '../../lib';

// ------------------------------------------------------------------ seeded randomness

export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Rand {
  constructor(readonly next: () => number) {}
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

// ------------------------------------------------------------------ template model

export type Node =
  | { k: 'text'; s: string }
  | { k: 'out'; expr: string }
  | { k: 'cache'; name: string; ttl: 60 | 0; when: boolean; vars: string[]; tags: string[]; body: Node[] }
  | { k: 'if'; cond: string; body: Node[]; orelse: Node[] }
  | { k: 'for'; v: string; body: Node[] }
  | { k: 'include' }
  | { k: 'call'; fn: string; arg: string }
  | { k: 'callblock'; fn: string; arg: string; body: Node[] }
  | { k: 'capture'; v: string; body: Node[] }
  | { k: 'filter'; body: Node[] }
  | { k: 'super' }
  | { k: 'block'; body: Node[] }
  | { k: 'macro'; name: string; body: Node[] };

export interface Program {
  page: Node[];
  /** With a base, `page` holds the child's `main` block only. */
  base: Node[] | null;
  inc: Node[];
  lib: Node[];
}

const NAMES = ['a', 'b', 'c', 'd'];
const TAGS = ['t0', 't1', 't2'];

interface Ctx {
  /** Loop variables and macro parameters in scope (a fragment varies on all of them). */
  vars: string[];
  /** Data a statement here may read directly: the innermost fragment's topics, or any when outside fragments. */
  topics: string[] | 'any' | 'none';
  /** Output here may be kept as a value and printed later (capture, macro, caller, parent block). */
  value: boolean;
  captures: string[];
  depth: number;
  /** Where macros are: `L.` (lib.njk imported), '' (page), or none. */
  macros: { plain: string[]; callers: string[]; prefix: string };
  inMacro: boolean;
  /** A `super()` may stand here (a child's block). */
  superOk: boolean;
  allowInclude: boolean;
  /** Inside a filter block: content computed earlier (captures, `cw`) is not printed here (see the module comment). */
  transform?: boolean;
}

let counter = 0;
const fresh = (p: string) => `${p}${counter++}`;

function topicExprs(name: string, vars: string[], tags: string[]): string[] {
  const variant = [`"${name}"`, ...vars].join(' ~ "|" ~ ');
  return [`d.n.${name}`, `d.v[${variant}]`, ...tags.map((t) => `d.t.${t}`)];
}

function genSeq(r: Rand, c: Ctx, len = 1 + r.int(3)): Node[] {
  const out: Node[] = [];
  const captures = [...c.captures];
  for (let i = 0; i < len; i++) {
    const n = genNode(r, { ...c, captures });
    out.push(n);
    if (n.k === 'capture') captures.push(n.v);
  }
  return out;
}

function genNode(r: Rand, c: Ctx): Node {
  const deep = c.depth >= 4;
  const options: (() => Node | undefined)[] = [
    () => ({ k: 'text', s: r.pick(['x', ' ', '<p>', '&', ' y ', '\n']) }),
    () => {
      if (c.topics === 'none' || c.value) return undefined;
      const pool = c.topics === 'any' ? [...NAMES.map((n) => `d.n.${n}`), ...TAGS.map((t) => `d.t.${t}`)] : c.topics;
      return pool.length ? { k: 'out', expr: r.pick(pool) } : undefined;
    },
    () => {
      const vars = c.transform ? c.vars.filter((v) => v !== 'cw') : c.vars;
      return vars.length ? { k: 'out', expr: r.pick(vars) } : undefined;
    },
    () => (c.captures.length && !c.transform ? { k: 'out', expr: r.pick(c.captures) + r.pick(['', ' | safe', ' | safe | trim', ' | trim']) } : undefined),
    () => (deep ? undefined : genCache(r, c)),
    () => (deep ? undefined : genCache(r, c)),
    () => {
      if (deep) return undefined;
      const cond = c.vars.length && r.chance(0.7) ? `${r.pick(c.vars)} == ${r.int(3)}` : r.pick(['true', 'false']);
      return { k: 'if', cond, body: genSeq(r, { ...c, depth: c.depth + 1 }), orelse: r.chance(0.5) ? genSeq(r, { ...c, depth: c.depth + 1 }) : [] };
    },
    () => {
      if (deep || c.vars.length >= 2) return undefined;
      const v = fresh('i');
      return { k: 'for', v, body: genSeq(r, { ...c, vars: [...c.vars, v], depth: c.depth + 1, superOk: false }) };
    },
    () => (c.allowInclude ? { k: 'include' } : undefined),
    () => {
      if (!c.macros.plain.length) return undefined;
      return { k: 'call', fn: c.macros.prefix + r.pick(c.macros.plain), arg: c.vars.length && r.chance(0.6) ? r.pick(c.vars) : String(r.int(3)) };
    },
    () => {
      if (deep || !c.macros.callers.length) return undefined;
      // The call body sees the call site's variables; the macro's fragments vary on its output (cw).
      const body = genSeq(r, { ...c, topics: 'none', value: true, depth: c.depth + 1, superOk: false });
      return { k: 'callblock', fn: c.macros.prefix + r.pick(c.macros.callers), arg: c.vars.length && r.chance(0.6) ? r.pick(c.vars) : String(r.int(3)), body };
    },
    () => (deep ? undefined : { k: 'capture', v: fresh('cap'), body: genSeq(r, { ...c, topics: 'none', value: true, depth: c.depth + 1, superOk: false }) }),
    () => (deep || c.value ? undefined : { k: 'filter', body: genSeq(r, { ...c, depth: c.depth + 1, superOk: false, transform: true }) }),
    () => (c.superOk ? { k: 'super' } : undefined),
  ];
  for (;;) {
    const n = r.pick(options)();
    if (n) return n;
  }
}

function genCache(r: Rand, c: Ctx): Node {
  const name = r.pick(NAMES);
  const tags = TAGS.filter(() => r.chance(0.35));
  const uncached = r.chance(0.2);
  const vars = [...c.vars];
  const own = topicExprs(name, vars, tags);
  // Inside a fragment, its own data may be read, and what renders is tied to it: no longer "a value" for the rule.
  const inner: Ctx = { ...c, topics: own, value: false, transform: false, depth: c.depth + 1 };
  const body = genSeq(r, inner);
  for (const expr of own) if (r.chance(0.6)) body.splice(r.int(body.length + 1), 0, { k: 'out', expr });
  return { k: 'cache', name, ttl: uncached && r.chance(0.5) ? 0 : 60, when: !(uncached && true), vars, tags, body };
}

export function genProgram(seed: number): Program {
  const r = new Rand(prng(seed));
  counter = 0;
  const libCtx = (callers: boolean): Ctx => ({
    // A caller macro's output depends on the call body too: its fragments vary on it (markup has its own keys).
    vars: callers ? ['p', 'cw'] : ['p'],
    topics: 'none',
    value: true,
    captures: callers ? ['cw'] : [],
    depth: 2,
    macros: { plain: [], callers: [], prefix: '' },
    inMacro: true,
    superOk: false,
    allowInclude: false, // inc.njk calls the macros
  });
  const lib: Node[] = [
    { k: 'macro', name: 'm0', body: genSeq(r, libCtx(false)) },
    { k: 'macro', name: 'm1', body: genSeq(r, libCtx(false)) },
    { k: 'macro', name: 'w0', body: genSeq(r, libCtx(true)) },
  ];
  const macros = { plain: ['m0', 'm1'], callers: ['w0'], prefix: 'L.' };
  const inc = genSeq(r, { vars: [], topics: 'none', value: true, captures: [], depth: 2, macros, inMacro: false, superOk: false, allowInclude: false });
  const top: Ctx = { vars: [], topics: 'any', value: false, captures: [], depth: 0, macros, inMacro: false, superOk: false, allowInclude: true };
  if (r.chance(0.35)) {
    // extends: base.njk's main block (a value: the child may print it through super()), possibly inside a fragment.
    const baseBlock = genSeq(r, { ...top, topics: 'none', value: true, depth: 1 });
    const block: Node = { k: 'block', body: baseBlock };
    const wrapped = r.chance(0.4);
    const base: Node[] = wrapped ? [genCacheAround(r, block)] : [...genSeq(r, { ...top, allowInclude: false }, 1), block];
    // The child's block renders where the base's block is: inside the base's fragment when it is wrapped in one.
    const child = genSeq(r, { ...top, topics: wrapped ? 'none' : 'any', superOk: true, depth: 1 }, 2 + r.int(3));
    if (!child.some((n) => n.k === 'super') && r.chance(0.8)) child.splice(r.int(child.length + 1), 0, r.chance(0.5) ? { k: 'super' } : wrapInCache(r, { k: 'super' }));
    return { page: child, base, inc, lib };
  }
  return { page: genSeq(r, top, 3 + r.int(4)), base: null, inc, lib };
}

function genCacheAround(r: Rand, inner: Node): Node {
  return { k: 'cache', name: r.pick(NAMES), ttl: 60, when: true, vars: [], tags: [], body: [{ k: 'text', s: '(' }, inner, { k: 'text', s: ')' }] };
}
const wrapInCache = genCacheAround;

// ------------------------------------------------------------------ source

function src(nodes: Node[], withCache: boolean): string {
  return nodes.map((n) => one(n, withCache)).join('');
}
function one(n: Node, w: boolean): string {
  switch (n.k) {
    case 'text':
      return n.s;
    case 'out':
      return `{{ ${n.expr} }}`;
    case 'cache': {
      if (!w) return src(n.body, w);
      const opts = [n.tags.length ? `tags=[${n.tags.map((t) => `"${t}"`).join(', ')}]` : '', n.when ? '' : 'when=false'].filter(Boolean).join(' ');
      return `<% cache ${n.ttl} ${n.name}${n.vars.map((v) => ' ' + v).join('')}${opts ? ' ' + opts : ''} %>${src(n.body, w)}<% endcache %>`;
    }
    case 'if':
      return `<% if ${n.cond} %>${src(n.body, w)}${n.orelse.length ? `<% else %>${src(n.orelse, w)}` : ''}<% endif %>`;
    case 'for':
      return `<% for ${n.v} in items %>${src(n.body, w)}<% endfor %>`;
    case 'include':
      return '<% include "inc.njk" %>';
    case 'call':
      return `{{ ${n.fn}(${n.arg}) }}`;
    case 'callblock':
      return `<% call ${n.fn}(${n.arg}) %>${src(n.body, w)}<% endcall %>`;
    case 'capture':
      return `<% set ${n.v} %>${src(n.body, w)}<% endset %>`;
    case 'filter':
      return `<% filter upper %>${src(n.body, w)}<% endfilter %>`;
    case 'super':
      return '{{ super() }}';
    case 'block':
      return `<% block main %>${src(n.body, w)}<% endblock %>`;
    case 'macro':
      return `<% macro ${n.name}(p) %>${n.name.startsWith('w') ? '<% set cw = caller() %>' : ''}${src(n.body, w)}<% endmacro %>`;
  }
}

export function files(p: Program, w: boolean): Record<string, string> {
  const imp = '<% import "lib.njk" as L %>';
  return {
    'lib.njk': src(p.lib, w),
    'inc.njk': imp + src(p.inc, w),
    'base.njk': p.base ? imp + src(p.base, w) : '',
    'page.njk': p.base ? `<% extends "base.njk" %>${imp}<% block main %>${src(p.page, w)}<% endblock %>` : imp + src(p.page, w),
  };
}

// ------------------------------------------------------------------ data and invalidations

/** What every template reads: loop items, and data by fragment name (`n`), variant (`v`) and tag (`t`). */
export interface Data {
  items: number[];
  d: { n: Record<string, string>; v: Record<string, string>; t: Record<string, string> };
}

export function initialData(): Data {
  return { items: [0, 1, 2], d: { n: { a: 'A<1>', b: 'B&1' }, v: {}, t: { t0: 'T0<x>', t1: 'T1', t2: '"T2"' } } };
}

/** Every fragment site (name, vary arity, tags) in a program, for choosing invalidations. */
export function sites(p: Program): { name: string; vars: number; tags: string[] }[] {
  const out: { name: string; vars: number; tags: string[] }[] = [];
  const walk = (ns: Node[]) => {
    for (const n of ns) {
      if (n.k === 'cache') out.push({ name: n.name, vars: n.vars.length, tags: n.tags });
      for (const key of ['body', 'orelse'] as const) if (key in n) walk((n as { [k in typeof key]: Node[] })[key]);
    }
  };
  for (const ns of [p.page, p.base ?? [], p.inc, p.lib]) walk(ns);
  return out;
}

/** One invalidation (plain data: it crosses process boundaries). */
export type Invalidation = { kind: 'tag'; tag: string } | { kind: 'name'; name: string } | { kind: 'variant'; name: string; vary: number[] };

export function describeInvalidation(i: Invalidation): string {
  if (i.kind === 'tag') return `invalidateTag("${i.tag}")`;
  if (i.kind === 'name') return `invalidate("${i.name}")`;
  return `invalidate("${i.name}", ${JSON.stringify(i.vary)})`;
}

export function applyInvalidation(engine: Engine, i: Invalidation): Promise<void> {
  if (i.kind === 'tag') return engine.invalidateTag(i.tag);
  if (i.kind === 'name') return engine.invalidate(i.name);
  return engine.invalidate(i.name, i.vary);
}

/**
 * The invalidations of one case, one of each kind (by tag, by name, by variant): each step, when called, changes the
 * data it covers in `data` and returns the invalidation, or undefined when the program has no fragment for it. The
 * choices depend on the seed only (called in order).
 */
export function invalidationSteps(p: Program, seed: number, data: Data): (() => Invalidation | undefined)[] {
  const r = new Rand(prng(seed ^ 0x5eed));
  const all = sites(p);
  let step = 0;
  return [
    () => {
      const s = all.filter((x) => x.tags.length);
      if (!s.length) return undefined;
      const t = r.pick(r.pick(s).tags);
      data.d.t[t] = `T${++step}<${t}>`;
      return { kind: 'tag', tag: t };
    },
    () => {
      if (!all.length) return undefined;
      const { name } = r.pick(all);
      data.d.n[name] = `N${++step}&${name}`;
      return { kind: 'name', name };
    },
    () => {
      if (!all.length) return undefined;
      const s = r.pick(all);
      const vary = Array.from({ length: s.vars }, () => r.int(3));
      data.d.v[[s.name, ...vary].join('|')] = `V${++step}`;
      return { kind: 'variant', name: s.name, vary };
    },
  ];
}

// ------------------------------------------------------------------ comparing

/** Plain Nunjucks on the templates written without the cache tags, with the same syntax and escaping. */
export function plainEnvironment(dir: string): nunjucks.Environment {
  return new nunjucks.Environment(new nunjucks.FileSystemLoader(dir), { autoescape: true, tags: { blockStart: '<%', blockEnd: '%>' } });
}

/** An error as the differential tests compare it: its last line. */
export function errorText(e: unknown): string {
  return `ERROR ${String((e as Error)?.message ?? e).split('\n').pop()}`;
}

/** The page rendered by plain Nunjucks, or its error as {@link errorText}. */
export function plainRender(plain: nunjucks.Environment, data: Data): string {
  try {
    return plain.render('page.njk', data);
  } catch (e) {
    return errorText(e);
  }
}

/** Null when fragcache's output agrees with plain Nunjucks' (both refusing the templates agrees), else the difference. */
export function disagreement(what: string, got: string, want: string): string | null {
  if (want.startsWith('ERROR') && got.startsWith('ERROR')) return null; // both refuse it (a shrink artefact)
  return got === want ? null : `${what}: got ${JSON.stringify(got)}, plain Nunjucks ${JSON.stringify(want)}`;
}

// ------------------------------------------------------------------ shrinking and reporting

/** Removes nodes while `fails` stays true (at most `budget` tries); returns the smallest failing program found. */
export async function shrink(p: Program, fails: (q: Program) => Promise<boolean>, budget = 400): Promise<Program> {
  let best = p;
  const lists = (q: Program): Node[][] => {
    const out: Node[][] = [];
    const walk = (ns: Node[]) => {
      out.push(ns);
      for (const n of ns) for (const key of ['body', 'orelse'] as const) if (key in n) walk((n as { [k in typeof key]: Node[] })[key]);
    };
    for (const ns of [q.page, q.base ?? [], q.inc, q.lib]) walk(ns);
    return out;
  };
  for (let improved = true; improved && budget > 0; ) {
    improved = false;
    const count = lists(best).reduce((s, l) => s + l.length, 0);
    for (let target = 0; target < count && budget > 0; target++) {
      const candidate: Program = structuredClone(best);
      let i = target;
      let removed: Node | undefined;
      for (const l of lists(candidate)) {
        if (i < l.length) {
          // Macros and blocks are referenced by name: empty them instead of removing them.
          if (l[i].k === 'macro' || l[i].k === 'block') {
            const n = l[i] as { body: Node[] };
            if (!n.body.length) break;
            n.body = [];
            removed = l[i];
          } else removed = l.splice(i, 1)[0];
          break;
        }
        i -= l.length;
      }
      if (!removed) continue;
      budget--;
      if (await fails(candidate)) {
        best = candidate;
        improved = true;
        break;
      }
    }
  }
  return best;
}

/** A program's templates (with the cache tags) as a failure shows them. */
export function showTemplates(p: Program): string {
  return Object.entries(files(p, true))
    .filter(([, s]) => s && s !== '<% import "lib.njk" as L %>')
    .map(([n, s]) => `--- ${n}\n${s}`)
    .join('\n');
}
