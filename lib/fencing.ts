/**
 * Fencing by the time the data was loaded: when a render's output may be stored.
 *
 * A tag version carries the time (in the store's clock) of the invalidation that wrote it. A render knows
 * `since`, a time before which its data was not loaded (the start of the request). Output whose data was
 * loaded before one of its tags was last invalidated may be old: it is shown but not stored. Without a
 * known `since`, the render's start stands in for it, and output of a tag invalidated less than a window
 * before that is stored with its expiry capped at the invalidation time plus the window: the same bound as
 * invalidating again after the window (delayed double delete), without a second write.
 *
 * One clock: the invalidator stamps versions with an upper bound of the store's time, and a render compares
 * a lower bound of its `since` in the store's time, through an offset measured with the store's `time()`
 * (Redis `TIME`). Stores without `time()` use this host's clock (memory and SQLite share the host anyway).
 * @module
 */
import { randomBytes } from 'node:crypto';

/** Version written by an invalidation at store time `at` (epoch ms). */
export function invalidationVersion(at: number): string {
  return `${randomBytes(9).toString('base64url')}.${Math.ceil(at).toString(36)}`;
}

/**
 * Version created because a tag's record was missing, `at` being the time of the latest invalidation of any tag
 * (0: none known). A missing record may be one evicted after an invalidation, which cannot be later than that:
 * the creation counts as an invalidation that may have happened then (see {@link fence}).
 */
export function createdVersion(at: number): string {
  const v = randomBytes(9).toString('base64url');
  return at > 0 ? `${v}~${Math.ceil(at).toString(36)}` : v; // no invalidation known: nothing to carry
}

/**
 * Store time (epoch ms) a version carries, and whether it was created for a missing record rather than written
 * by an invalidation. Versions of the old format carry no time: 0.
 */
export function versionTime(version: string): { at: number; created: boolean } {
  // base64url has neither "." nor "~": the last one of either is the separator.
  for (let i = version.length - 1; i >= 0; i--) {
    const c = version.charCodeAt(i);
    if (c === 46 /* . */ || c === 126 /* ~ */) {
      const at = parseInt(version.slice(i + 1), 36);
      return { at: Number.isFinite(at) ? at : 0, created: c === 126 };
    }
  }
  return { at: 0, created: false };
}

/** How long a measured offset is trusted before it is measured again (clocks drift; NTP steps them). */
const REFRESH_MS = 30_000;
/** After a failed measurement, the next try waits this long. */
const RETRY_MS = 1000;

/**
 * Offset from this host's clock to the store's, measured with the store's `time()`: the sample with the
 * shortest round trip of three, its uncertainty half that round trip plus a millisecond of resolution.
 * Without `time()` the offset is 0 and exact (this host's clock is the store's).
 */
export class StoreClock {
  private offset = 0;
  private error = 0;
  private measuredAt = -Infinity;
  private failedAt = -Infinity;
  private measuring: Promise<void> | undefined;
  /** True once an offset is known (at once for a store without `time()`). */
  known: boolean;

  constructor(
    private readonly time: (() => Promise<number>) | undefined,
    /** Longest a sample may take (outside the store guard: a slow first `TIME` must not open the circuit). */
    private readonly timeoutMs = 1000,
  ) {
    this.known = !time;
  }

  /**
   * Measures the offset when it is unknown or old. Resolves once it is known, the measurement failed, or `waitMs`
   * passed (the measurement then goes on); never rejects.
   */
  async ready(waitMs = Infinity): Promise<void> {
    if (!this.time) return;
    const now = Date.now();
    if (this.known && now - this.measuredAt < REFRESH_MS) return;
    if (this.known) {
      void this.measure(); // still good enough meanwhile
      return;
    }
    if (now - this.failedAt < RETRY_MS && !this.measuring) return;
    const m = this.measure();
    if (waitMs === Infinity) return m;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([m, new Promise<void>((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
  }

  private sample(): Promise<number> {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      this.time!(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the store took more than ${this.timeoutMs} ms to tell its time`)), this.timeoutMs);
        timer.unref?.();
      }),
    ]).finally(() => clearTimeout(timer));
  }

  private measure(): Promise<void> {
    this.measuring ??= (async () => {
      try {
        let best: { offset: number; rtt: number } | undefined;
        for (let i = 0; i < 3; i++) {
          const t0 = Date.now();
          const s = await this.sample();
          const t1 = Date.now();
          if (!best || t1 - t0 < best.rtt) best = { offset: s - (t0 + t1) / 2, rtt: t1 - t0 };
        }
        this.offset = best!.offset;
        this.error = best!.rtt / 2 + 1;
        this.measuredAt = Date.now();
        this.known = true;
      } catch {
        this.failedAt = Date.now(); // tried again on use, at most once a second
      } finally {
        this.measuring = undefined;
      }
    })();
    return this.measuring;
  }

  /** An upper bound of the store's time now, when the offset is known; else this host's time. */
  upperSync(): number {
    return this.known ? Date.now() + this.offset + this.error : Date.now();
  }

  /** A lower bound, in the store's time, of local epoch ms `local` (only when {@link known}). */
  lower(local: number): number {
    return local + this.offset - this.error;
  }

  /** The latest local epoch ms at which the store's clock may read `at` (only when {@link known}). */
  localUpper(at: number): number {
    return at - this.offset + this.error;
  }
}

/** What may be done with a render's output. */
export type Fence = { store: false } | { store: true; expiresBy?: number };

/**
 * Whether output stamped with tag version pairs `tags` may be stored, and until when.
 * - `since` known (local epoch ms before the data was loaded): refused when a tag was invalidated after it;
 *   capped at creation + `window` when a tag record was created after it (it may hide an evicted invalidation).
 * - `since` unknown: `start` (the render's start) stands in; output of a tag invalidated or created less than
 *   `window` ms before it is stored with its expiry capped at that time + `window` (local epoch ms).
 * - Offset to the store's clock not known yet: as if `since` were unknown, judged by this host's clock.
 */
export function fence(tags: readonly string[] | undefined, since: number | undefined, start: number, clock: StoreClock, window: number): Fence {
  if (!tags || !tags.length) return { store: true };
  // Offset not measured yet (the first moments of a process; a store slow to tell its time): judged as if `since`
  // were unknown, by this host's clock (offset 0 until measured).
  if (!clock.known) since = undefined;
  const from = clock.lower(since ?? start);
  let cap: number | undefined;
  for (let i = 1; i < tags.length; i += 2) {
    const { at, created } = versionTime(tags[i]);
    if (at === 0) continue;
    // Times are whole ms: an invalidation in the same ms as `since` may have come after the data was loaded.
    if (since !== undefined && !created) {
      if (from <= at) return { store: false };
    } else if (since !== undefined ? from <= at : from - window <= at) {
      const by = clock.localUpper(at) + window;
      if (cap === undefined || by < cap) cap = by;
    }
  }
  return cap === undefined ? { store: true } : { store: true, expiresBy: cap };
}
