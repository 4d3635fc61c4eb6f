/**
 * Heap cost of holding things: `gc()` twice before and after, Δ `heapUsed` divided by a count.
 * Needs `node --expose-gc` (bench/run.ts passes it).
 * @module
 */

/** Runs a full GC twice (the second pass collects what the first one's finalisers freed). */
export function fullGc(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('heap measurements need node --expose-gc');
  gc();
  gc();
}

/** True when `global.gc` is available. */
export function canGc(): boolean {
  return typeof (globalThis as { gc?: unknown }).gc === 'function';
}

/**
 * Bytes of heap that `fill()` leaves alive, per item. `fill` must return (or otherwise retain) what it
 * built, so it is still reachable at the second measurement; the result is dropped afterwards.
 */
export async function heapPerItem(count: number, fill: () => unknown): Promise<number> {
  fullGc();
  const before = process.memoryUsage().heapUsed;
  let kept: unknown = await fill();
  fullGc();
  const after = process.memoryUsage().heapUsed;
  if (kept === undefined) throw new Error('heapPerItem: fill() must return what it keeps alive');
  kept = undefined;
  void kept;
  return (after - before) / count;
}
