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
import {
  applyInvalidation, describeInvalidation, disagreement, errorText, files, genProgram, initialData, invalidationSteps, plainEnvironment, plainRender, prng, Rand,
  showTemplates, shrink, type Program,
} from './support/differential';
import { describeWith, need, redis, uniquePrefix, until, type TestServer } from './support/servers';
import { writeTemplates } from './support/views';

// ------------------------------------------------------------------ running one program

/** `tiny`: a memory store so small that entries and tag versions are evicted all the time. */
type Kind = 'memory' | 'tiny' | 'sqlite' | 'redis';
let tmp: string;
let server: TestServer | undefined;

let dirs = 0;
/** Renders a program through fragcache and plain Nunjucks; a mismatch (or an error on one side only) is returned. */
async function check(p: Program, kind: Kind, seed: number): Promise<string | null> {
  const dir = path.join(tmp, `v${dirs++}`);
  const plainDir = `${dir}-plain`;
  writeTemplates(dir, files(p, true));
  writeTemplates(plainDir, files(p, false));
  const plain = plainEnvironment(plainDir);
  let store: string | MemoryStore | undefined;
  if (kind === 'sqlite') store = `sqlite://${dir}.db`;
  if (kind === 'tiny') store = new MemoryStore({ maxBytes: 1200 });
  if (kind === 'redis') store = (server ??= await redis.get!()).url;
  // A generous store budget: on a loaded machine an invalidation that times out rejects (as it must), failing the case.
  const engine: Engine = createEngine({ views: dir, store, prefix: kind === 'redis' ? uniquePrefix('diff') : undefined, timeout: 10_000 });
  engine.on('error', () => undefined);
  try {
    if (kind === 'redis') await until('redis connection', () => (engine.cache.store as RedisStore).client.isReady === true);
    const data = initialData();
    const compare = async (what: string): Promise<string | null> => {
      const want = plainRender(plain, data);
      let got: string;
      try {
        got = await engine.render('page.njk', data);
      } catch (e) {
        got = errorText(e);
      }
      if (process.env.DIFF_DEBUG && want.startsWith('ERROR')) console.log(seed, want, files(p, false));
      return disagreement(what, got, want);
    };
    let fail = (await compare('miss')) ?? (await compare('hit'));
    for (const step of invalidationSteps(p, seed, data)) {
      if (fail) break;
      const inv = step();
      if (!inv) continue;
      await applyInvalidation(engine, inv);
      const op = describeInvalidation(inv);
      fail = (await compare(`after ${op} (rendered again)`)) ?? (await compare(`after ${op}, a hit`));
    }
    return fail;
  } finally {
    await engine.close();
  }
}

async function run(kind: Kind, from: number, count: number): Promise<void> {
  const only = process.env.DIFF_SEED ? [Number(process.env.DIFF_SEED)] : undefined;
  const seeds = only ?? Array.from({ length: count }, (_, i) => from + i);
  for (const seed of seeds) {
    const program = genProgram(seed);
    const fail = await check(program, kind, seed);
    if (fail) {
      const small = await shrink(program, async (q) => (await check(q, kind, seed)) !== null);
      throw new Error(`differential failure on the ${kind} store, seed ${seed} (DIFF_SEED=${seed} to replay)\n${(await check(small, kind, seed)) ?? fail}\nminimal templates:\n${showTemplates(small)}`);
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
