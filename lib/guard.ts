/**
 * Time budget and circuit breaker around store calls: a dead or slow store costs at most `timeout` per
 * call, then nothing at all while the circuit is open, and is tried again `retryAfter` later (or as soon as the
 * store reports a fresh connection, whichever comes first).
 *
 * A call abandoned over budget leaves its reply to come later on the same connection: the guard asks the store
 * to drop that connection ({@link Store.reset}), so nothing that arrives late can be taken for another reply.
 * @module
 */
import { StoreError, StoreIntegrityError, StoreTimeoutError } from './errors';
import type { Store } from './store';

/** Options of the store guard (engine options `timeout`, `breaker`). */
export interface GuardOptions {
  /** Time budget of one store call, in ms (default 100). A call over budget counts as a failure. */
  timeout?: number;
  /** Consecutive failures that open the circuit (default 3). */
  failures?: number;
  /**
   * How long the circuit stays open before one call is let through to probe the store, in ms (default 500). A
   * store that reports a fresh connection (Redis) is probed at once, without waiting this long.
   */
  retryAfter?: number;
}

type State = 'closed' | 'open' | 'probing';

/** Runs store calls under a time budget and a circuit breaker. */
export class StoreGuard {
  readonly timeout: number;
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
    this.maxFailures = options.failures ?? 3;
    this.retryAfter = options.retryAfter ?? 500;
    this.store?.onReady?.(() => this.probeSoon());
  }

  /** A fresh connection is up: let the next call probe it now rather than after the rest of `retryAfter`. */
  probeSoon(): void {
    if (this.state === 'open') this.openedAt = this.now() - this.retryAfter;
  }

  /** True while calls are refused without trying the store. */
  get isOpen(): boolean {
    return this.state === 'open' && this.now() - this.openedAt < this.retryAfter;
  }

  /**
   * Runs `call` under the budget. Rejects with {@link StoreError} (or {@link StoreTimeoutError}) on failure,
   * at once while the circuit is open.
   */
  async run<T>(operation: string, call: () => Promise<T>, timeout = this.timeout): Promise<T> {
    if (this.state === 'open') {
      if (this.now() - this.openedAt < this.retryAfter) {
        throw new StoreError(`${this.storeKind} store is unavailable (circuit open after repeated failures)`, this.storeKind, operation);
      }
      this.state = 'probing';
    } else if (this.state === 'probing') {
      throw new StoreError(`${this.storeKind} store is being probed after failures`, this.storeKind, operation);
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      const result = await Promise.race([
        Promise.resolve().then(call),
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
      // Its reply may still come, on a connection the store must not reuse (it would answer the next command).
      if (err instanceof StoreTimeoutError || err instanceof StoreIntegrityError) {
        try {
          this.store?.reset?.(err);
        } catch {
          // a store's reset must not throw; if it does, the breaker still counts the failure
        }
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
    }
  }
}
