/**
 * HTTP benchmark of the example blog (examples/express) on loopback: a constant string, a whole-page cache
 * hit, a page whose expensive fragment is cached, and the uncached page, side by side. The server runs in
 * its own process (NODE_ENV=production, so Express caches views); autocannon runs here. Every repetition
 * runs every route once, in rotating order; ratios vs /const are per repetition.
 *
 * Goals: whole-page hit ≥ 0.9× /const, fragment-cached page ≥ 0.5× /const.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import autocannon from 'autocannon';
import { summarise } from './support/harness';
import { freePort } from '../spec/support/servers';

const DURATION = Number(process.env.BENCH_SECONDS ?? 3);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const CONNECTIONS = 20;
const ROUTES = [
  { name: '/const (constant string)', path: '/const' },
  { name: 'whole-page hit', path: '/articles/1' },
  { name: 'fragment cached', path: '/fragment/articles/1' },
  { name: 'uncached page', path: '/uncached/articles/1' },
] as const;
const GOALS: Record<string, number> = { 'whole-page hit': 0.9, 'fragment cached': 0.5 };

async function cannon(url: string, seconds: number): Promise<{ rps: number; p99: number; errors: number; bytes: number }> {
  const r = await autocannon({ url, connections: CONNECTIONS, duration: seconds });
  return { rps: r.requests.average, p99: r.latency.p99, errors: r.errors + r.non2xx, bytes: r.throughput.average };
}

async function main(): Promise<void> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, '..', 'examples', 'express', 'server.ts')], {
    env: { ...process.env, PORT: String(port), NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const stop = () => child.kill('SIGTERM');
  process.on('exit', stop);
  try {
    // Wait for "listening" (bounded).
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('example server did not start within 20 s')), 20_000);
      child.stdout!.on('data', (d: Buffer) => {
        if (String(d).includes('http://')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`example server exited (${code})`)));
    });
    const base = `http://127.0.0.1:${port}`;
    for (const r of ROUTES) await cannon(base + r.path, 1); // warm-up (fills the caches, JIT)
    const rps = new Map<string, number[]>(ROUTES.map((r) => [r.name, []]));
    console.log(`autocannon -c ${CONNECTIONS} -d ${DURATION}, ${REPS} reps, loopback; server: examples/express (NODE_ENV=production)`);
    for (let rep = 0; rep < REPS; rep++) {
      const line: string[] = [];
      let constRps = 0;
      const results = new Map<string, number>();
      for (let j = 0; j < ROUTES.length; j++) {
        const r = ROUTES[(rep + j) % ROUTES.length]!;
        const m = await cannon(base + r.path, DURATION);
        if (m.errors) console.log(`  warning: ${m.errors} errors/non-2xx on ${r.path}`);
        results.set(r.name, m.rps);
        rps.get(r.name)!.push(m.rps);
      }
      constRps = results.get(ROUTES[0].name)!;
      for (const r of ROUTES) line.push(`${r.name}: ${Math.round(results.get(r.name)!)} req/s (${(results.get(r.name)! / constRps).toFixed(3)}×)`);
      console.log(`rep ${rep + 1}: ${line.join(' | ')}`);
    }
    console.log('\n| route | req/s median (min–max) | ratio vs /const median (min–max) | goal |');
    console.log('|---|---|---|---|');
    const c = rps.get(ROUTES[0].name)!;
    for (const r of ROUTES) {
      const xs = rps.get(r.name)!;
      const s = summarise(xs);
      const q = summarise(xs.map((x, i) => x / c[i]!));
      const goal = GOALS[r.name];
      const verdict = goal === undefined ? '' : `≥ ${goal}× ${q.median >= goal ? 'met' : 'NOT met'}`;
      console.log(`| ${r.name} | ${Math.round(s.median)} (${Math.round(s.min)}–${Math.round(s.max)}) | ${q.median.toFixed(3)} (${q.min.toFixed(3)}–${q.max.toFixed(3)}) | ${verdict} |`);
    }
  } finally {
    stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
