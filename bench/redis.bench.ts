/**
 * Redis benchmark, side by side:
 * - a page of 20 fragments that all hit, on Redis (batched: one MGET per page) against the same page on the
 *   memory store (goal ≤ 3×) and against one GET per fragment (goal: batched ≥ 5× faster);
 * - a cold stampede of 200 concurrent renders over 10 engines, each with its own connection as separate
 *   processes would have (goal: the body renders once for the whole fleet).
 *
 * Uses REDIS_URL when set, else a private redis-server on a free port. Exits 0 on a MISS (benchmarks inform),
 * 1 when the outputs differ (a bug).
 *
 * Run: `npm run bench redis` (or `npx tsx bench/redis.bench.ts`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { createClient } from '@redis/client';
import { createEngine, type Engine } from '../lib/engine';
import { decodeEntry, type Entry } from '../lib/entry';
import type { RedisStore } from '../lib/stores/redis';
import { formatNs, measure, ratio, summarise, type Summary } from './support/harness';
import { freePort } from '../spec/support/servers';

const PAGE = '<ul><% for i in range(20) %><% cache 300, "item", i %><li>{{ i }}: {{ title }} — {{ "x".repeat(200) }}</li><% endcache %><% endfor %></ul>';

async function redisUrl(): Promise<{ url: string; child?: ChildProcess }> {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL };
  if (!existsSync('/usr/bin/redis-server')) throw new Error('set REDIS_URL or install redis-server');
  const port = await freePort();
  const child = spawn('/usr/bin/redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (;;) {
    const ok = await new Promise<boolean>((r) => net.connect(port, '127.0.0.1').once('connect', function (this: net.Socket) { this.destroy(); r(true); }).once('error', () => r(false)));
    if (ok) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return { url: `redis://127.0.0.1:${port}`, child };
}

async function ready(e: Engine): Promise<Engine> {
  while (!(e.cache.store as RedisStore).client.isReady) await new Promise((r) => setTimeout(r, 10));
  return e;
}

const fmt = (s: Summary, unit = '×') => `${s.median.toFixed(2)}${unit} (min ${s.min.toFixed(2)}, max ${s.max.toFixed(2)})`;

async function main(): Promise<void> {
  const { url, child } = await redisUrl();
  const prefix = `bench${process.pid}`;
  // A template file, compiled once (renderString would compile on every call and hide the store's cost).
  const views = mkdtempSync(path.join(os.tmpdir(), 'fragcache-redis-bench-'));
  writeFileSync(path.join(views, 'page.njk'), PAGE);
  const redis = await ready(createEngine({ views, store: url, prefix, timeout: 1000 }));
  const memory = createEngine({ views, prefix });
  const withL1 = await ready(createEngine({ views, store: `${url}${url.includes('?') ? '&' : '?'}l1=1`, prefix, timeout: 1000 }));
  const raw = createClient({ url });
  await raw.connect();
  let bad = false;
  try {
    const ctx = { title: 'Hello' };
    const expected = await memory.render('page.njk', ctx);
    await memory.render('page.njk', ctx);
    if ((await redis.render('page.njk', ctx)) !== expected) bad = true;
    const keys = (await redis.explain('page.njk', ctx)).fragments.map((f) => f.key);
    if (keys.length !== 20) throw new Error(`expected 20 fragments, got ${keys.length}`);
    // One GET per fragment, one after the other: what a tag that awaits the store per fragment costs at best
    // (no tag-version checks counted, so the ratio is conservative).
    const perFragment = async () => {
      let html = '<ul>';
      for (const k of keys) html += (decodeEntry(await raw.get(k), k) as Entry).body;
      return html + '</ul>';
    };
    if ((await perFragment()) !== expected) bad = true;
    if ((await redis.render('page.njk', ctx)) !== expected) bad = true;
    while ((await raw.pubSubNumSub('fragcache:l1'))['fragcache:l1'] === 0) await new Promise((r) => setTimeout(r, 10));
    if ((await withL1.render('page.njk', ctx)) !== expected) bad = true;

    const samples = await measure(
      [
        { name: 'redis batched', run: () => redis.render('page.njk', ctx) },
        { name: 'memory', run: () => memory.render('page.njk', ctx) },
        { name: 'redis GET per fragment', run: perFragment },
        { name: 'redis + L1', run: () => withL1.render('page.njk', ctx) },
      ],
      { sampleMs: 150, reps: 7 },
    );
    const med = (n: string) => formatNs(summarise(samples.get(n)!).median);
    const vsMemory = ratio(samples, 'redis batched', 'memory');
    const speedup = ratio(samples, 'redis GET per fragment', 'redis batched');
    const l1VsMemory = ratio(samples, 'redis + L1', 'memory');
    console.log('\nPage of 20 fragments, all hits');
    console.log(`  memory store            ${med('memory')}/page`);
    console.log(`  redis, batched (1 MGET) ${med('redis batched')}/page`);
    console.log(`  redis, 1 GET/fragment   ${med('redis GET per fragment')}/page`);
    console.log(`  redis + L1 (pub/sub)    ${med('redis + L1')}/page`);
    console.log(`  batched vs memory       ${fmt(vsMemory)}   goal ≤ 3×   ${vsMemory.median <= 3 ? 'PASS' : 'MISS'}`);
    console.log(`  L1 vs memory            ${fmt(l1VsMemory)}   goal ≤ 3×   ${l1VsMemory.median <= 3 ? 'PASS' : 'MISS'}`);
    console.log(`  batched speed-up vs GET ${fmt(speedup)}   goal ≥ 5×   ${speedup.median >= 5 ? 'PASS' : 'MISS'}`);

    // Cold stampede: 200 concurrent renders over 10 engines (10 connections), nothing cached yet.
    const fleetPrefix = `${prefix}s`;
    let bodies = 0;
    const fleet: Engine[] = [];
    for (let i = 0; i < 10; i++) {
      const e = await ready(createEngine({ store: url, prefix: fleetPrefix, timeout: 2000 }));
      e.env.addGlobal('work', () => {
        bodies++;
        const end = Date.now() + 20;
        while (Date.now() < end);
        return 'done';
      });
      fleet.push(e);
    }
    const t0 = performance.now();
    const pages = await Promise.all(Array.from({ length: 200 }, (_, i) => fleet[i % 10]!.renderString('<% cache 300, "slow" %>{{ work() }}<% endcache %>')));
    const took = performance.now() - t0;
    if (pages.some((p) => p !== 'done')) bad = true;
    console.log('\nCold stampede: 200 concurrent renders, 10 engines with their own connections');
    console.log(`  body renders            ${bodies}   goal 1   ${bodies === 1 ? 'PASS' : 'MISS'}   (${took.toFixed(0)} ms for all 200)`);
    await Promise.all(fleet.map((e) => e.close()));
    await redis.cache.clear();
    await createEngine({ store: url, prefix: fleetPrefix }).cache.clear().catch(() => undefined);
  } finally {
    await raw.quit();
    await redis.close();
    await withL1.close();
    await memory.close();
    child?.kill();
    rmSync(views, { recursive: true, force: true });
  }
  if (bad) {
    console.error('outputs differ between stores: a bug');
    process.exit(1);
  }
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
