/**
 * Issue 13, "no cross-user leak under load" (short version; `npm run soak:leak` runs 100,000 responses): 200 users
 * with their own cookie, through the example blog with fragment and page caching on, served by 2 separate
 * processes sharing one private redis-server; every response is checked against its own user's data.
 */
import { describeWith, need, privateRedis, redis as redisAvailability, type TestServer } from './support/servers';
import { makeUsers, runLeakLoad, startWorkers } from './support/leak-load';

describeWith(need(redisAvailability, true), 'no cross-user leak under load (2 processes, Redis)', () => {
  let redis: TestServer;
  let fleet: Awaited<ReturnType<typeof startWorkers>> | undefined;

  beforeAll(async () => {
    redis = await privateRedis();
    fleet = await startWorkers(redis.url, `leak${process.pid}`, 200, 2);
  }, 60_000);
  afterAll(async () => {
    await fleet?.stop();
    await redis.stop();
  });

  it('3,000 responses to 200 users: each shows its own user, none another’s', async () => {
    const report = await runLeakLoad({ ports: fleet!.ports, users: makeUsers(200), responses: 3000, concurrency: 16 });
    expect(report.examples).toEqual([]);
    expect([report.responses, report.leaks, report.failures]).toEqual([3000, 0, 0]);
    expect(report.pageHits).toBeGreaterThan(300); // the page cache did serve (the check is not vacuous)
  }, 120_000);
});
