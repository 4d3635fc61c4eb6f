/**
 * The store-time budget of one request (engine option `requestBudget`): how long one render, or one page
 * request through the page cache, may wait on cache stores in total. The per-call budget (`timeout`) bounds
 * each call; a miss makes several in a row (page, fragments, tag versions, lock, write), so on a slow store
 * the calls add up. Once this budget is spent, the request reads nothing more from the store (it renders
 * what is left uncached) and does not wait for its writes (they finish in the background, under `timeout`).
 *
 * Only time spent waiting on the store counts, as the union of the intervals in which at least one budgeted
 * call was in flight: calls made together count once, and the route's own work (loading data, rendering)
 * counts nothing. Internal.
 * @module
 */

/** A request's store-time budget. */
export class StoreBudget {
  private spent = 0;
  private active = 0;
  private since = 0;

  /** `ms`: the budget; `Infinity` for none. */
  constructor(readonly ms: number) {}

  /** What is left, in ms (may be negative). */
  left(): number {
    return this.ms - this.spent - (this.active ? performance.now() - this.since : 0);
  }

  /** True once the budget is spent: the request should not wait on the store any more. */
  get spentOut(): boolean {
    return this.left() <= 0;
  }

  /** Counts the time until the returned function is called (idempotent) as store time. */
  enter(): () => void {
    if (this.active++ === 0) this.since = performance.now();
    let left = false;
    return () => {
      if (left) return;
      left = true;
      if (--this.active === 0) this.spent += performance.now() - this.since;
    };
  }

  /**
   * Waits for `work`, at most what is left of the budget (counted as store time). Resolves true when `work`
   * settled in time; false when the budget ran out first (`work` goes on, unobserved: it must not reject).
   */
  async awaitWithin(work: Promise<unknown>): Promise<boolean> {
    const left = this.left();
    if (left <= 0) return false;
    if (left === Infinity) {
      await work;
      return true;
    }
    const done = this.enter();
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        work.then(() => true),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), left);
          timer.unref?.();
        }),
      ]);
    } finally {
      clearTimeout(timer);
      done();
    }
  }
}

/** Key, on `res.locals`, of the request's {@link StoreBudget} (shared by the page cache and the render). */
export const STORE_BUDGET = Symbol.for('fragcache.storeBudget');
