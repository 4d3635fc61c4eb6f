/**
 * Runs every benchmark file (`bench/*.bench.ts`) in turn, each in its own process so they do not disturb
 * each other's heap. Each file prints its own table of side-by-side ratios.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';

const only = process.argv.slice(2);
const files = readdirSync(__dirname)
  .filter((f) => f.endsWith('.bench.ts'))
  .filter((f) => !only.length || only.some((o) => f.includes(o)))
  .sort();
let failed = 0;
for (const f of files) {
  console.log(`\n=== ${f}`);
  // The bench templates read data they do not vary on, on purpose (one user): the leak guard, which only runs when a
  // template compiles, would print that on every run.
  const env = { ...process.env, FRAGCACHE_LEAK_GUARD: process.env.FRAGCACHE_LEAK_GUARD ?? 'off' };
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', path.join(__dirname, f)], { stdio: 'inherit', env });
  if (r.status !== 0) failed++;
}
process.exit(failed ? 1 : 0);
