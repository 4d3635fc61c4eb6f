/**
 * Differential test (issues 10 and 13): seeded random templates with the `cache` tag in every placement (top level,
 * if, for, include, macro, call, set capture, filter block, extends/block/super, nested caches, ttl 0 and
 * when=false), rendered through fragcache on a miss, on a hit, and after each kind of invalidation with the data it
 * covers changed, compared with plain Nunjucks rendering the same templates without the cache tags.
 *
 * The generator writes templates the way the README asks users to: a fragment varies on every loop variable and macro
 * parameter around it, and reads data only through its own name, variant and tags (`d.n[name]`, `d.v[name|vary]`,
 * `d.t[tag]`). Content that is computed before it is printed (captures, caller(), super()) reaches a fragment as it
 * is, escaped or trimmed, never rewritten by a filter (the Russian-doll rule and its limit, docs/russian-doll.md). A failure is shrunk to a minimal template
 * set and printed with its seed: `DIFF_SEED=<seed> npx jest spec/differential.spec.ts` replays it.
 *
 * Also parser fuzzing: random and mutated tag lines give a clear error naming the file, line and column, or render as
 * plain Nunjucks would; never a crash, a hang or an unhandled rejection.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import nunjucks from 'nunjucks';
import { createEngine, MemoryStore, type Engine } from '../lib';
import type { RedisStore } from '../lib/stores/redis';
import { describeWith, need, redis, uniquePrefix, until, type TestServer } from './support/servers';
import { writeTemplates } from './support/views';

// ------------------------------------------------------------------ seeded randomness

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rand {
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

type Node =
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

interface Program {
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

function genProgram(seed: number): Program {
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

function files(p: Program, w: boolean): Record<string, string> {
  const imp = '<% import "lib.njk" as L %>';
  return {
    'lib.njk': src(p.lib, w),
    'inc.njk': imp + src(p.inc, w),
    'base.njk': p.base ? imp + src(p.base, w) : '',
    'page.njk': p.base ? `<% extends "base.njk" %>${imp}<% block main %>${src(p.page, w)}<% endblock %>` : imp + src(p.page, w),
  };
}

// ------------------------------------------------------------------ running one program

interface Data {
  items: number[];
  d: { n: Record<string, string>; v: Record<string, string>; t: Record<string, string> };
}

/** `tiny`: a memory store so small that entries and tag versions are evicted all the time. */
type Kind = 'memory' | 'tiny' | 'sqlite' | 'redis';
let tmp: string;
let server: TestServer | undefined;

/** Every fragment site (name, vary arity, tags) in a program, for choosing invalidations. */
function sites(p: Program): { name: string; vars: number; tags: string[] }[] {
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

let dirs = 0;
/** Renders a program through fragcache and plain Nunjucks; a mismatch (or an error on one side only) is returned. */
async function check(p: Program, kind: Kind, seed: number): Promise<string | null> {
  const dir = path.join(tmp, `v${dirs++}`);
  const plainDir = `${dir}-plain`;
  writeTemplates(dir, files(p, true));
  writeTemplates(plainDir, files(p, false));
  const plain = new nunjucks.Environment(new nunjucks.FileSystemLoader(plainDir), { autoescape: true, tags: { blockStart: '<%', blockEnd: '%>' } });
  let store: string | MemoryStore | undefined;
  if (kind === 'sqlite') store = `sqlite://${dir}.db`;
  if (kind === 'tiny') store = new MemoryStore({ maxBytes: 1200 });
  if (kind === 'redis') store = (server ??= await redis.get!()).url;
  // A generous store budget: on a loaded machine an invalidation that times out rejects (as it must), failing the case.
  const engine: Engine = createEngine({ views: dir, store, prefix: kind === 'redis' ? uniquePrefix('diff') : undefined, timeout: 10_000 });
  engine.on('error', () => undefined);
  try {
    if (kind === 'redis') await until('redis connection', () => (engine.cache.store as RedisStore).client.isReady === true);
    const r = new Rand(prng(seed ^ 0x5eed));
    const data: Data = { items: [0, 1, 2], d: { n: { a: 'A<1>', b: 'B&1' }, v: {}, t: { t0: 'T0<x>', t1: 'T1', t2: '"T2"' } } };
    let step = 0;
    const compare = async (what: string): Promise<string | null> => {
      let want: string;
      try {
        want = plain.render('page.njk', data);
      } catch (e) {
        want = `ERROR ${String((e as Error).message).split('\n').pop()}`;
      }
      let got: string;
      try {
        got = await engine.render('page.njk', data);
      } catch (e) {
        got = `ERROR ${String((e as Error).message).split('\n').pop()}`;
      }
      if (process.env.DIFF_DEBUG && want.startsWith("ERROR")) console.log(seed, want, files(p, false));
      if (want.startsWith('ERROR') && got.startsWith('ERROR')) return null; // both refuse it (a shrink artefact)
      return got === want ? null : `${what}: got ${JSON.stringify(got)}, plain Nunjucks ${JSON.stringify(want)}`;
    };
    let fail = (await compare('miss')) ?? (await compare('hit'));
    const all = sites(p);
    const ops: (() => [string, () => Promise<void>] | undefined)[] = [
      () => {
        const s = all.filter((x) => x.tags.length);
        if (!s.length) return undefined;
        const t = r.pick(r.pick(s).tags);
        data.d.t[t] = `T${++step}<${t}>`;
        return [`invalidateTag("${t}")`, () => engine.invalidateTag(t)];
      },
      () => {
        if (!all.length) return undefined;
        const { name } = r.pick(all);
        data.d.n[name] = `N${++step}&${name}`;
        return [`invalidate("${name}")`, () => engine.invalidate(name)];
      },
      () => {
        if (!all.length) return undefined;
        const s = r.pick(all);
        const vary = Array.from({ length: s.vars }, () => r.int(3));
        data.d.v[[s.name, ...vary].join('|')] = `V${++step}`;
        return [`invalidate("${s.name}", ${JSON.stringify(vary)})`, () => engine.invalidate(s.name, vary)];
      },
    ];
    for (const op of ops) {
      if (fail) break;
      const o = op();
      if (!o) continue;
      await o[1]();
      fail = (await compare(`after ${o[0]} (rendered again)`)) ?? (await compare(`after ${o[0]}, a hit`));
    }
    return fail;
  } finally {
    await engine.close();
  }
}

/** Removes nodes while the failure stays; returns the smallest failing program found. */
async function shrink(p: Program, kind: Kind, seed: number): Promise<Program> {
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
  for (let improved = true, budget = 400; improved && budget > 0; ) {
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
      if (await check(candidate, kind, seed)) {
        best = candidate;
        improved = true;
        break;
      }
    }
  }
  return best;
}

async function run(kind: Kind, from: number, count: number): Promise<void> {
  const only = process.env.DIFF_SEED ? [Number(process.env.DIFF_SEED)] : undefined;
  const seeds = only ?? Array.from({ length: count }, (_, i) => from + i);
  for (const seed of seeds) {
    const program = genProgram(seed);
    const fail = await check(program, kind, seed);
    if (fail) {
      const small = await shrink(program, kind, seed);
      const f = files(small, true);
      const shown = Object.entries(f)
        .filter(([, s]) => s && s !== '<% import "lib.njk" as L %>')
        .map(([n, s]) => `--- ${n}\n${s}`)
        .join('\n');
      throw new Error(`differential failure on the ${kind} store, seed ${seed} (DIFF_SEED=${seed} to replay)\n${(await check(small, kind, seed)) ?? fail}\nminimal templates:\n${shown}`);
    }
  }
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fragcache-diff-'));
});
afterAll(async () => {
  await server?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

// A few hundred cases in all (DIFF_CASES=2000 for a longer run).
const N = Number(process.env.DIFF_CASES ?? 100);

describe('differential: fragcache vs plain Nunjucks on random templates', () => {
  test(`memory store, ${N} seeded templates`, () => run('memory', 1, N), 120_000);
  test(`SQLite store, ${Math.ceil(N / 2)} seeded templates`, () => run('sqlite', 100_001, Math.ceil(N / 2)), 120_000);
  test(`a memory store so small that entries and tag versions are evicted constantly, ${Math.ceil(N / 2)} seeded templates`, () => run('tiny', 300_001, Math.ceil(N / 2)), 120_000);
});

describeWith(need(redis), 'differential on Redis', () => {
  test(`Redis store, ${Math.ceil(N / 8)} seeded templates (several passes per render)`, () => run('redis', 200_001, Math.ceil(N / 8)), 120_000);
});

// ------------------------------------------------------------------ parser fuzzing

const TOKENS = [
  '60', '0', '-1', '"5m"', '1.5', 'abc', 'a', 'b-c', 'x.y', 'x:y', '"name"', "'n'", 'v', 'v.w', '[1,2]', '{a:1}', 'null', 'none', 'true',
  'tags=', 'tags=["t"]', 'tags=[v]', 'when=', 'when=false', 'when=v', 'using=', 'using="nope"', 'stale=', 'stale=10', 'digest=', 'digest=false', 'digest=1',
  ',', '=', '==', '(', ')', '[', ']', '{', '}', '"', "'", '%', '%>', '<%', '{{', '}}', '~', '|', '| safe', '-', '#', '\n', ' ', 'é', '\ud800',
  'cache', 'endcache', '<% endcache %>', '<% cache 60 z %>', '<% if v %>', '<% endif %>', '<% block b %>', '<% endblock %>', '<% macro q() %>',
];

/** A random or mutated template around a cache tag. */
function fuzzTemplate(r: Rand): { source: string; plain?: string } {
  const body = r.pick(['[{{ v }}]', 'x', '', '<% if v %>y<% endif %>', '{{ v | safe }}<% cache 60 inner v %>i<% endcache %>']);
  const lead = r.pick(['', 'a\n', '\n\n  ', '<% if true %>']);
  const trail = lead === '<% if true %>' ? '<% endif %>' : '';
  if (r.chance(0.5)) {
    const line = `<% cache ${Array.from({ length: r.int(7) }, () => r.pick(TOKENS)).join(r.pick([' ', '', ', ']))} %>`;
    const end = r.pick(['<% endcache %>', '<% endcache %>', '', '<% endcache x %>', '<% endcache %><% endcache %>', '<%- endcache -%>']);
    return { source: lead + line + body + end + trail };
  }
  // A valid template with a few characters changed; `plain` is the same without the cache tags, when they survived.
  const open = r.pick(['<% cache 60 box v tags=["t"] %>', '<% cache "5m" "n" v, 1 when=v stale=3 %>', '<% cache 0 b digest=false %>']);
  let source = lead + open + body + '<% endcache %>' + trail;
  const chars = [...source];
  for (let i = 1 + r.int(3); i > 0; i--) {
    const at = r.int(chars.length + 1);
    const op = r.int(3);
    if (op === 0) chars.splice(at, 1);
    else if (op === 1) chars.splice(at, 0, r.pick(['%', '<', '>', '"', ' ', '=', ',', '[', ']', '{', '}', '\n', 'x', '-']));
    else chars.splice(at, 0, chars[at] ?? '');
  }
  source = chars.join('');
  return { source, plain: source.includes(open) && source.includes('<% endcache %>') ? source.replace(open, '').replace('<% endcache %>', '') : undefined };
}

describe('parser fuzzing', () => {
  test('random and mutated tag lines: a render or an error naming the file, line and column; never a crash, hang or unhandled rejection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    const engine = createEngine({ views: tmp, stores: { remote: 'memory' } });
    engine.on('error', () => undefined);
    const plain = new nunjucks.Environment(null, { autoescape: true, tags: { blockStart: '<%', blockEnd: '%>' } });
    const r = new Rand(prng(Number(process.env.FUZZ_SEED ?? 7)));
    const outcomes = { rendered: 0, errors: 0 };
    try {
      for (let i = 0; i < Number(process.env.FUZZ_CASES ?? 400); i++) {
        const { source, plain: stripped } = fuzzTemplate(r);
        const what = `case ${i}: ${JSON.stringify(source)}`;
        let timer: NodeJS.Timeout | undefined;
        const hang = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within 5 s`)), 5000)));
        try {
          const html = await Promise.race([engine.renderString(source, { v: 1 }, 'fuzz.njk'), hang]);
          outcomes.rendered++;
          if (stripped !== undefined) {
            let want: string | undefined;
            try {
              want = plain.renderString(stripped, { v: 1 });
            } catch {
              want = undefined; // the mutation broke something else: nothing to compare with
            }
            if (want !== undefined && html !== want) throw new Error(`${what}: rendered ${JSON.stringify(html)}, plain Nunjucks ${JSON.stringify(want)}`);
          }
        } catch (err) {
          if (String((err as Error).message).startsWith(`case ${i}:`)) throw err;
          outcomes.errors++;
          const e = err as { name?: string; template?: string; line?: number; column?: number; message?: string };
          // Every error names the file; one about the tag (or any parse error) also its line and column. (Nunjucks
          // reports some runtime errors of its own, such as an unknown filter, without a position.)
          const positioned = /fuzz\.njk:\d+:\d+: \S/.test(String(e.message)) && typeof e.line === 'number' && typeof e.column === 'number';
          const own = /cache/i.test(String(e.message));
          if (!(err instanceof Error) || !/^fuzz\.njk\b/.test(String(e.message)) || (own && !positioned)) {
            throw new Error(`${what}: an error without file, line and column: ${String((err as Error)?.stack ?? err)}`);
          }
        } finally {
          clearTimeout(timer);
        }
      }
      await new Promise((res) => setImmediate(res));
      expect(unhandled).toEqual([]);
      // Both outcomes were exercised.
      expect(outcomes.rendered).toBeGreaterThan(20);
      expect(outcomes.errors).toBeGreaterThan(20);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await engine.close();
    }
  }, 60_000);
});
