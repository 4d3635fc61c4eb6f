/**
 * Issue 9: the memory store's byte bound counts everything a page entry keeps (its 15 KB URL included), so
 * traffic with distinct long query strings cannot grow the heap past it. Measured in a child process with
 * --expose-gc (full collections before and after), so nothing of Jest's own heap is counted.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';

it('10,000 requests with distinct 15 KB query strings grow the heap by at most 1.5 × maxBytes + 4 MB', () => {
  const maxBytes = 4 * 1024 * 1024;
  const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', path.join(__dirname, 'support', 'page-heap.ts'), String(maxBytes), '10000'], {
    cwd: path.join(__dirname, '..'),
    encoding: 'utf8',
    timeout: 120_000,
  });
  const { growth, counted } = JSON.parse(out) as { growth: number; counted: number };
  expect(counted).toBeLessThanOrEqual(maxBytes);
  expect(counted).toBeGreaterThan(maxBytes / 2); // the store did fill up: the bound was exercised
  expect(growth).toBeLessThanOrEqual(1.5 * maxBytes + 4 * 1024 * 1024); // 21× maxBytes before the fix
}, 150_000);
