/**
 * `npm run soak:leak` (part of `npm run soak`): the long run of the cross-user leak check (issue 13). A private redis-server on loopback, 2
 * example-blog processes sharing it, 200 users, RESPONSES responses (default 100,000), bounded by SOAK_MS
 * (default 15 minutes). Prints the report as JSON; exits 1 on any leak or failure.
 */
import { privateRedis } from './servers';
import { makeUsers, runLeakLoad, startWorkers } from './leak-load';

async function main(): Promise<void> {
  const responses = Number(process.env.RESPONSES ?? 100_000);
  const limit = Number(process.env.SOAK_MS ?? 15 * 60_000);
  const redis = await privateRedis();
  const fleet = await startWorkers(redis.url, 'soak', 200, 2).catch(async (err) => {
    await redis.stop();
    throw err;
  });
  const timer = setTimeout(() => {
    console.error(`soak: not finished within ${limit} ms`);
    process.exit(2);
  }, limit);
  const started = Date.now();
  try {
    const report = await runLeakLoad({ ports: fleet.ports, users: makeUsers(200), responses, concurrency: 32 });
    console.log(JSON.stringify({ ...report, seconds: (Date.now() - started) / 1000 }, null, 2));
    process.exitCode = report.leaks || report.failures ? 1 : 0;
  } finally {
    clearTimeout(timer);
    await fleet.stop();
    await redis.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
