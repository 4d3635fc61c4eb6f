/**
 * Time budget and circuit breaker around store calls: a dead or slow store costs at most `timeout` per
 * call, then nothing at all while the circuit is open, and is tried again `retryAfter` later (or as soon as the
 * store reports a fresh connection, whichever comes first).
 *
 * A call abandoned over budget whose reply never comes (a stuck or out-of-step connection) makes the guard ask
 * the store to replace that connection (`Store.reset`); so does a reply under the wrong key at once.
 * @module
 */
import type { StoreBudget } from './budget';
import { StoreBudgetError, StoreError, StoreIntegrityError, StoreTimeoutError } from './errors';
import type { Store } from './store';

/** Options of the store guard (engine options `timeout`, `breaker`). */
export interface GuardOptions {
  /** Time budget of one store call, in ms (default 100). A call over budget counts as a failure. */
  timeout?: number;
  /**
   * Store-time budget of one request (a render, or a page request through the page cache), in ms (default:
   * 3 × `timeout`): the total time it may wait on the store across all its calls. `Infinity` for none.
   */
  requestBudget?: number;
  /** Consecutive failures that open the circuit (default 3). */
  failures?: number;
  /**
   * How long the circuit stays open before one call is let through to probe the store, in ms (default 500). A
   * store that reports a fresh connection (Redis) is probed at once, without waiting this long.
   */
  retryAfter?: number;
}

type State = 'closed' | 'open' | 'probing';

/** How long after its budget an abandoned call may still get its reply before its connection is replaced. */
export const STUCK_AFTER_MS = 400;

/** Runs store calls under a time budget and a circuit breaker. */
export class StoreGuard {
  readonly timeout: number;
  /** See {@link GuardOptions.requestBudget}. */
  readonly requestBudget: number;
  private readonly storeKind: string;
  private readonly store: Pick<Store, 'reset' | 'onReady'> | undefined;
  private readonly maxFailures: number;
  private readonly retryAfter: number;
  private state: State = 'closed';
  private failures = 0;
  private openedAt = 0;

  /** `store`: the guarded store (its `reset` and `onReady` are used), or just its kind (a name for messages). */
  constructor(
    store: string | Pick<Store, 'kind' | 'reset' | 'onReady'>,
    options: GuardOptions = {},
    private readonly now: () => number = Date.now,
  ) {
    this.storeKind = typeof store === 'string' ? store : store.kind;
    this.store = typeof store === 'string' ? undefined : store;
    this.timeout = options.timeout ?? 100;
    // Three calls' worth: a page hit makes three reads in a row (header list, page, tags), and on a loaded event
    // loop (where waiting for a reply also counts) it must not run out before its calls would time out themselves;
    // tighter, caching would stop exactly when the machine is busiest, making it busier.
    this.requestBudget = options.requestBudget ?? 3 * this.timeout;
    this.maxFailures = options.failures ?? 3;
    this.retryAfter = options.retryAfter ?? 500;
    this.store?.onReady?.(() => this.probeSoon());
  }

  /** Grows whenever the store reports a fresh connection. */
  private connection = 0;

  /** A fresh connection is up: let the next call probe it now rather than after the rest of `retryAfter`. */
  probeSoon(): void {
    this.connection++;
    if (this.state === 'open') this.openedAt = this.now() - this.retryAfter;
  }

  /** True while calls are refused without trying the store. */
  get isOpen(): boolean {
    return this.state === 'open' && this.now() - this.openedAt < this.retryAfter;
  }

  /**
   * Runs `call` under the budget. Rejects with {@link StoreError} (or {@link StoreTimeoutError}) on failure,
   * at once while the circuit is open. With a request's `budget`, the call also gets no more than what is
   * left of it, and counts against it; a call refused or cut short by that budget rejects with
   * {@link StoreBudgetError} and does not count as a store failure (the store kept its own per-call budget).
   */
  async run<T>(operation: string, call: () => Promise<T>, timeout = this.timeout, budget?: StoreBudget): Promise<T> {
    if (this.state === 'open' && this.now() - this.openedAt < this.retryAfter) {
      throw new StoreError(`${this.storeKind} store is unavailable (circuit open after repeated failures)`, this.storeKind, operation);
    }
    if (this.state === 'probing') throw new StoreError(`${this.storeKind} store is being probed after failures`, this.storeKind, operation);
    // (Checked before this call may become the probe: a probe that never runs would leave the circuit probing.)
    let cut = false;
    if (budget) {
      const left = budget.left();
      if (left <= 0) throw this.budgetError(operation, budget, 'skipped');
      if (left < timeout) {
        timeout = Math.max(1, left);
        cut = true;
      }
    }
    const probe = this.state === 'open';
    if (probe) this.state = 'probing';
    const leave = budget?.enter();
    let timer: NodeJS.Timeout | undefined;
    const connection = this.connection;
    const pending = Promise.resolve().then(call);
    try {
      const result = await Promise.race([
        pending,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new StoreTimeoutError(`${this.storeKind} store: ${operation} took more than ${timeout} ms`, this.storeKind, operation)),
            timeout,
          );
          timer.unref?.();
        }),
      ]);
      this.failures = 0;
      this.state = 'closed';
      return result;
    } catch (err) {
      if (err instanceof StoreIntegrityError) this.reset(err);
      else if (err instanceof StoreTimeoutError && this.store?.reset) this.resetIfStuck(pending, err);
      // Cut short by the request's budget, not by the store's own: says nothing about the store (a probe cut so
      // leaves the circuit open, for the next call to probe at once).
      if (cut && err instanceof StoreTimeoutError) {
        if (probe && this.state === 'probing') {
          this.state = 'open';
          this.openedAt = this.now() - this.retryAfter;
        }
        throw this.budgetError(operation, budget!, 'stopped');
      }
      // A call that failed on a connection since replaced by a fresh one (a reset rejects the calls still on the
      // old one) says nothing about the new connection: it does not count towards opening the circuit.
      if (connection !== this.connection && !(err instanceof StoreTimeoutError)) {
        if (err instanceof StoreError) throw err;
        throw new StoreError(`${this.storeKind} store: ${operation} failed: ${(err as Error)?.message ?? err}`, this.storeKind, operation, { cause: err });
      }
      this.failures++;
      if (this.state === 'probing' || this.failures >= this.maxFailures) {
        this.state = 'open';
        this.openedAt = this.now();
      }
      if (err instanceof StoreError) throw err;
      throw new StoreError(`${this.storeKind} store: ${operation} failed: ${(err as Error)?.message ?? err}`, this.storeKind, operation, { cause: err });
    } finally {
      clearTimeout(timer);
      leave?.();
    }
  }

  private budgetError(operation: string, budget: StoreBudget, what: string): StoreBudgetError {
    return new StoreBudgetError(
      `${this.storeKind} store: ${operation} ${what}: the request has waited its whole store-time budget (requestBudget, ${budget.ms} ms) on the store; the rest renders uncached`,
      this.storeKind,
      operation,
    );
  }

  private reset(err: unknown): void {
    try {
      this.store?.reset?.(err);
    } catch {
      // a store's reset must not throw; if it does, the breaker still counts the failure
    }
  }

  /**
   * An abandoned call whose reply has still not come `STUCK_AFTER_MS` later: the connection is stuck or out
   * of step (a reply lost or swallowed), so the store replaces it. One whose late reply does come was merely
   * slow (a loaded machine, a busy server): its connection is kept, so a latency spike does not turn into
   * reconnects that fail every other call in flight.
   */
  private resetIfStuck(pending: Promise<unknown>, err: StoreTimeoutError): void {
    let settled = false;
    pending.then(
      () => (settled = true),
      () => (settled = true),
    );
    setTimeout(() => settled || this.reset(err), Math.max(STUCK_AFTER_MS, 4 * this.timeout)).unref?.();
  }
}
