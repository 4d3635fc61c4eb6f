/**
 * `npm run soak`: the long version of spec/faults-load.spec.ts. The example blog in its own process on a
 * private Redis (then Memcached) behind a fault-injecting proxy, under 8 concurrent request loops, goes through
 * every fault again and again for SOAK_SECONDS per store (default 120); then prints the fault table (worst
 * value per fault over all cycles) and the heap after a full GC: after warm-up vs after the soak.
 *
 * Bounded in time, loopback only, private servers only. Exit code 1 when a goal is missed: a failed request,
 * p99 during a fault over budget + uncached render time (×2 headroom), recovery over 1 s (+ 2 × steady p99),
 * requests still in flight at the end, or heap growth over HEAP_BOUND_MB (default 32).
 */
import { faultProxy } from '../spec/support/proxy';
import { row, runFault, startApp, uncachedP99, type FaultKind, type FaultResult } from '../spec/support/load-faults';
import { privateMemcached, privateRedis, uniquePrefix, type TestServer } from '../spec/support/servers';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 120);
const HEAP_BOUND_MB = Number(process.env.HEAP_BOUND_MB ?? 32);
/** The app's time budget (ms): BUDGET_MS, default 250 (the engine's default, 100, trips on a loaded 2-core machine). */
const BUDGET = Number(process.env.BUDGET_MS ?? 250);

async function soak(kind: 'redis' | 'memcache', start: () => Promise<TestServer>, faults: FaultKind[]): Promise<string[]> {
  const problems: string[] = [];
  const server = await start();
  const proxy = await faultProxy(server.port);
  const app = await startApp(`${kind}://127.0.0.1:${proxy.port}`, uniquePrefix('soak'), BUDGET);
  try {
    await runFault({ fault: 'kill-connection', store: kind, app, proxy, steadyMs: 1000, afterMs: 1000 }); // warm-up
    await uncachedP99(app.port, 1000);
    const render = await uncachedP99(app.port, 2000);
    const warm = await app.probe();
    const worst = new Map<FaultKind, FaultResult & { cycles: number }>();
    const until = Date.now() + SECONDS * 1000;
    let cycle = 0;
    while (Date.now() < until) {
      const fault = faults[cycle++ % faults.length];
      const r = await runFault({ fault, store: kind, app, proxy, server, steadyMs: 1000, afterMs: 2000 });
      const w = worst.get(fault);
      worst.set(fault, {
        ...r,
        requests: (w?.requests ?? 0) + r.requests,
        failed: (w?.failed ?? 0) + r.failed,
        failures: [...(w?.failures ?? []), ...r.failures].slice(0, 5),
        faultP99: Math.max(w?.faultP99 ?? 0, r.faultP99),
        faultMax: Math.max(w?.faultMax ?? 0, r.faultMax),
        recoveryMs: Math.max(w?.recoveryMs ?? 0, r.recoveryMs),
        steadyP99: Math.max(w?.steadyP99 ?? 0, r.steadyP99),
        cycles: (w?.cycles ?? 0) + 1,
      });
      if (r.failed) problems.push(`${kind} ${fault}: ${r.failed} failed (${r.failures.join('; ')})`);
      if (r.faultP99 > 2 * (BUDGET + render) + 100) problems.push(`${kind} ${fault}: p99 ${r.faultP99.toFixed(0)} ms during the fault`);
      if (r.recoveryMs > 1000 + 2 * r.steadyP99) problems.push(`${kind} ${fault}: recovery ${r.recoveryMs.toFixed(0)} ms`);
    }
    const end = await app.probe();
    const lines = [...worst.values()].map((w) => `${row(w, BUDGET, render)} (${w.cycles} cycles)`);
    const growth = (end.heapUsed - warm.heapUsed) / 2 ** 20;
    lines.push(`${kind}: heap after warm-up ${(warm.heapUsed / 2 ** 20).toFixed(1)} MB, after ${SECONDS} s of faults ${(end.heapUsed / 2 ** 20).toFixed(1)} MB (${growth >= 0 ? '+' : ''}${growth.toFixed(1)} MB); in flight at the end: ${end.inflight}`);
    if (growth > HEAP_BOUND_MB) problems.push(`${kind}: heap grew by ${growth.toFixed(1)} MB`);
    if (end.inflight) problems.push(`${kind}: ${end.inflight} single-flight entries left in flight`);
    console.log(lines.join('\n'));
    return problems;
  } finally {
    await app.close();
    await proxy.close();
    await server.stop();
  }
}

async function main(): Promise<void> {
  console.log(`soak: ${SECONDS} s per store, 8 concurrent loops, loopback; budget ${BUDGET} ms`);
  console.log('| store | fault | requests | failed | p99 during fault (worst cycle) | goal | recovery (worst cycle) |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  const problems = [
    ...(await soak('redis', privateRedis, ['kill-connection', 'stall-2s', 'latency-50ms', 'garbage', 'restart-server'])),
    ...(await soak('memcache', privateMemcached, ['kill-connection', 'restart-server'])),
  ];
  if (problems.length) {
    console.error(`goals missed:\n${problems.join('\n')}`);
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
