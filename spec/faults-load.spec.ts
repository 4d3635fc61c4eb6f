/**
 * Faults during load (issue 13), short version (`npm run soak` runs the long one): the example blog in its
 * own process on a PRIVATE Redis / Memcached behind a fault-injecting proxy, 8 concurrent request loops
 * (alice and bob, per-user cached pages), and one fault at a time. Per fault: no failed request (network
 * error, 5xx, or a page greeting the wrong user), p99 during the fault within the budget plus the uncached
 * render time (with headroom for a loaded machine), and the hit rate back within 1 s of the fault's end
 * (measured at the granularity of requests: a request started just before caching resumed still misses, so
 * the bound allows two steady-state p99 latencies on top; docs/reliability-faults.md has the measured numbers).
 */
import { faultProxy, type FaultProxy } from './support/proxy';
import { row, runFault, startApp, uncachedP99, type AppProcess, type FaultKind, type FaultResult } from './support/load-faults';
import { describeWith, memcached, need, privateMemcached, privateRedis, redis, uniquePrefix, type TestServer } from './support/servers';

/**
 * The app's time budget (ms). The default is 100; 250 here because the load generator, the app, the server and
 * the proxy share 2 cores (with other suites): at 100 ms the machine itself trips the budget in steady state.
 */
const BUDGET = 250;
/** The documented recovery bound ("caching resumes within a second"). */
const RECOVERY_MS = 1000;
const rows: string[] = [];

function check(r: FaultResult, renderP99: number): void {
  rows.push(row(r, BUDGET, renderP99));
  expect(r.failures).toEqual([]);
  expect(r.failed).toBe(0);
  expect(r.steadyHitRate).toBeGreaterThan(0.5); // caching worked before the fault (a loaded machine times some calls out)
  // Goal: p99 ≤ budget + render time. Asserted with 2× headroom (2 shared cores): a fault waited out without
  // the budget (a 2 s stall), a store call per request that is not cut short, or (added latency) a request whose
  // calls each stay under the per-call budget but add up past it (no `requestBudget`) still fails it by far.
  expect(r.faultP99).toBeLessThan(2 * (BUDGET + renderP99) + 100);
  // Recovery: the documented second, plus the granularity of requests (2 × their steady p99 on this machine).
  expect(r.recoveryMs).toBeLessThanOrEqual(RECOVERY_MS + 2 * r.steadyP99);
}

afterAll(() => {
  if (rows.length) console.log(['| store | fault | requests | failed | p99 during fault | goal | recovery |', ...rows].join('\n'));
});

function suite(kind: 'redis' | 'memcache', start: () => Promise<TestServer>, faults: FaultKind[]): void {
  let server: TestServer;
  let proxy: FaultProxy;
  let app: AppProcess;
  let renderP99 = 0;
  let heapWarm = 0;
  beforeAll(async () => {
    server = await start();
    proxy = await faultProxy(server.port);
    app = await startApp(`${kind}://127.0.0.1:${proxy.port}`, uniquePrefix('load'), BUDGET);
    await runFault({ fault: 'kill-connection', store: kind, app, proxy, steadyMs: 500, afterMs: 500 }); // warm-up
    await uncachedP99(app.port, 500);
    renderP99 = await uncachedP99(app.port, 1000);
    heapWarm = (await app.probe()).heapUsed;
  }, 60_000);
  afterAll(async () => {
    await app?.close();
    await proxy?.close();
    await server?.stop();
  });

  for (const fault of faults) {
    it(`${fault}: 0 failed requests, p99 within budget + render time, hit rate back within ${RECOVERY_MS} ms`, async () => {
      const r = await runFault({ fault, store: kind, app, proxy, server, steadyMs: 500, afterMs: RECOVERY_MS + 700 });
      check(r, renderP99);
    }, 30_000);
  }

  it('afterwards: nothing left in flight, heap within 32 MB of the warm-up, close() within a second', async () => {
    const p = await app.probe();
    expect(p.inflight).toBe(0);
    expect(p.heapUsed - heapWarm).toBeLessThan(32 * 1024 * 1024);
    const closeMs = await app.close();
    expect(closeMs).toBeLessThan(1000);
  });
}

describeWith(need(redis, true), 'Redis faults under load (private server, example app in its own process)', () => {
  suite('redis', privateRedis, ['kill-connection', 'stall-2s', 'latency-50ms', 'garbage', 'restart-server']);
});

describeWith(need(memcached, true), 'Memcached faults under load (private server, example app in its own process)', () => {
  suite('memcache', privateMemcached, ['kill-connection', 'restart-server']);
});
