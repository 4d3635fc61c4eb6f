/**
 * The store-time budget of one request (`requestBudget`, issue 13: "p99 latency during the fault ≤ budget +
 * render time" under added latency). Every call on a slow store stays under the per-call `timeout`, so no call
 * fails; without a per-request budget a miss still waits for all of them in a row. Each test runs the same
 * request with the budget off (`Infinity`) as its control, so it fails if the budget stops working.
 */
import express from 'express';
import request from 'supertest';
import { createEngine, MemoryStore, OptionError, StoreBudgetError, type Entry, type Store, type StoreWrite } from '../lib';
import { StoreBudget } from '../lib/budget';
import { cachePage } from '../lib/express';
import { StoreGuard } from '../lib/guard';
import { serve } from './support/http';
import { views } from './support/views';

type Op = 'getMany' | 'setMany' | 'add' | 'lock' | 'unlock' | 'locked';

/** A remote-looking store whose every call takes `delay[op]` ms (timers: fake or real), over a memory store. */
class SlowStore implements Store {
  readonly kind = 'slow';
  readonly shared = true;
  readonly inner = new MemoryStore();
  readonly calls: Op[] = [];
  private readonly held = new Map<string, string>();
  constructor(private readonly delay: Partial<Record<Op, number>> & { all: number }) {}
  private wait(op: Op): Promise<void> {
    this.calls.push(op);
    return new Promise((r) => setTimeout(r, this.delay[op] ?? this.delay.all));
  }
  async getMany(keys: readonly string[]) {
    await this.wait('getMany');
    return keys.map((k) => this.inner.sync.get(k));
  }
  async setMany(writes: readonly StoreWrite[]) {
    await this.wait('setMany');
    for (const w of writes) this.inner.sync.set(w.key, w.entry, w.ttlMs);
  }
  async add(key: string, entry: Entry, ttlMs: number | null) {
    await this.wait('add');
    return this.inner.sync.add(key, entry, ttlMs);
  }
  async lock(key: string) {
    await this.wait('lock');
    if (this.held.has(key)) return undefined;
    const token = String(Math.random());
    this.held.set(key, token);
    return token;
  }
  async unlock(key: string, token: string) {
    await this.wait('unlock');
    if (this.held.get(key) === token) this.held.delete(key);
  }
  async locked(keys: readonly string[]) {
    await this.wait('locked');
    return keys.map((k) => this.held.has(k));
  }
  async deleteMany(keys: readonly string[]) {
    for (const k of keys) this.inner.sync.delete(k);
  }
  async clear(prefix: string) {
    return this.inner.clear(prefix);
  }
  async close() {}
}

const BOX = '<% cache 60, "box", tags=["news"] %>box {{ v }}<% endcache %>';

describe('requestBudget: option', () => {
  it.each([0, -5, Number.NaN, '100'])('%p is refused, naming the option', (value) => {
    expect(() => createEngine({ views: views({}), requestBudget: value as number })).toThrow(OptionError);
    expect(() => createEngine({ views: views({}), requestBudget: value as number })).toThrow(/requestBudget/);
  });

  it('defaults to three per-call timeouts; Infinity turns it off', () => {
    expect(createEngine({ views: views({}), timeout: 70 }).cache.guard.requestBudget).toBe(210);
    expect(createEngine({ views: views({}), requestBudget: Infinity }).cache.guard.requestBudget).toBe(Infinity);
  });
});

describe('requestBudget: a render on a slow store (fake clock)', () => {
  beforeEach(() => jest.useFakeTimers({ now: new Date('2026-01-01T00:00:00Z'), doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] }));
  afterEach(() => jest.useRealTimers());

  /** Starts a cold render and says how many (fake) ms it took to settle, stepping the clock 5 ms at a time. */
  async function timeRender(budget: number, delay: ConstructorParameters<typeof SlowStore>[0], timeout = 100) {
    const store = new SlowStore(delay);
    const engine = createEngine({ views: views({ 'p.njk': BOX }), store, timeout, requestBudget: budget });
    const errors: Error[] = [];
    engine.on('error', (e) => errors.push(e));
    let html: string | undefined;
    const t0 = Date.now();
    const rendering = engine.render('p.njk', { v: 1 }).then((h) => (html = h));
    while (html === undefined && Date.now() - t0 < 5000) await jest.advanceTimersByTimeAsync(5);
    await rendering;
    return { ms: Date.now() - t0, html, errors, store, engine };
  }

  it('waits on the store at most the budget in total, renders the rest uncached, and opens no circuit', async () => {
    // Each call 60 ms (under the 100 ms per-call timeout): read, create the tag version, lock, write, unlock.
    const off = await timeRender(Infinity, { all: 60 });
    expect(off.html).toBe('box 1');
    expect(off.ms).toBeGreaterThanOrEqual(3 * 60); // control: the calls add up without the budget
    expect(off.errors).toEqual([]);

    const on = await timeRender(100, { all: 60 });
    expect(on.html).toBe('box 1');
    expect(on.ms).toBeLessThanOrEqual(100 + 5);
    // The read took 60 ms; the tag-version call got the 40 ms left and was cut; nothing else was tried (and
    // nothing half-known was stored: no write).
    expect(on.store.calls).toEqual(['getMany', 'getMany']);
    expect(on.errors).toEqual([expect.any(StoreBudgetError)]);
    expect(on.errors[0].message).toMatch(/requestBudget, 100 ms/);
    // Not a store failure: the circuit stays closed, and the next request tries the store again.
    expect(on.engine.cache.guard.isOpen).toBe(false);
    expect(on.engine.stats().errors).toBe(1);
    await on.engine.close();
    await off.engine.close();
  });

  it('does not wait for writes past the budget: they finish in the background and later renders hit', async () => {
    // A 300 ms write, under a 500 ms per-call timeout.
    const off = await timeRender(Infinity, { all: 10, setMany: 300 }, 500);
    expect(off.ms).toBeGreaterThanOrEqual(300); // control

    const on = await timeRender(100, { all: 10, setMany: 300 }, 500);
    expect(on.html).toBe('box 1');
    expect(on.ms).toBeLessThanOrEqual(100 + 10);
    expect(on.errors).toEqual([]);
    const stored = new Promise<string>((r) => on.engine.once('store', (e: { name: string }) => r(e.name)));
    await jest.advanceTimersByTimeAsync(300);
    expect(await stored).toBe('box');
    // The lock is let go after the write, never before it (a waiter would render the fragment again).
    expect(on.store.calls.slice(-2)).toEqual(['setMany', 'unlock']);
    let html: string | undefined;
    const again = on.engine.explain('p.njk', { v: 2 }).then((x) => ((html = x.html), x));
    while (html === undefined) await jest.advanceTimersByTimeAsync(5);
    expect((await again).fragments.map((f) => [f.name, f.status])).toEqual([['box', 'hit']]);
    expect(html).toBe('box 1');
    await on.engine.close();
    await off.engine.close();
  });
});

describe('requestBudget: a page request (page cache and render share one budget)', () => {
  async function timePage(budget: number) {
    const store = new SlowStore({ all: 40 });
    const engine = createEngine({ views: views({ 'p.njk': `page ${BOX}` }), store, timeout: 100, requestBudget: budget });
    const errors: Error[] = [];
    engine.on('error', (e) => errors.push(e));
    const app = express();
    engine.express(app);
    app.get('/p', cachePage(60, { tags: ['news'] }), (req, res) => res.render('p', { v: 1 }));
    const s = await serve(app);
    const t0 = performance.now();
    const r = await request(s).get('/p');
    const ms = performance.now() - t0;
    await engine.close();
    return { ms, r, errors, calls: store.calls };
  }

  it('a cold page on a store where each call takes 40 ms waits about the budget, not the sum of its calls', async () => {
    // Without it: page head read, lock, page tags, fragment read, tag versions, lock, write, unlock: ~8 × 40 ms.
    const off = await timePage(Infinity);
    expect([off.r.status, off.r.text]).toEqual([200, 'page box 1']);
    expect(off.ms).toBeGreaterThan(280);
    expect(off.errors).toEqual([]);

    const on = await timePage(100);
    expect([on.r.status, on.r.text]).toEqual([200, 'page box 1']);
    // 100 ms of store time, plus the render and HTTP on a loaded machine; the control above is over 280.
    expect(on.ms).toBeLessThan(230);
    expect(on.errors.length).toBeGreaterThan(0);
    expect(on.errors.every((e) => e instanceof StoreBudgetError)).toBe(true);
    expect(on.calls.length).toBeLessThan(off.calls.length);
  });
});

describe('requestBudget and the circuit breaker', () => {
  const failing = () => Promise.reject(new Error('connection refused'));
  const slow = (ms: number) => () => new Promise<string>((r) => setTimeout(() => r('late'), ms));

  /** A guard whose circuit is open (one failure opens it) and due for a probe. */
  async function dueForProbe() {
    let now = 1_000_000;
    const guard = new StoreGuard('test', { timeout: 100, failures: 1, retryAfter: 500 }, () => now);
    await expect(guard.run('getMany', failing)).rejects.toThrow(/connection refused/);
    expect(guard.isOpen).toBe(true);
    now += 500;
    return guard;
  }

  it('fixed: a request whose budget is spent when the probe is due does not take the probe (the circuit used to stay "being probed" for good)', async () => {
    const guard = await dueForProbe();
    const spent = new StoreBudget(1);
    const leave = spent.enter(); // (1 ms of store time, waited out)
    while (spent.left() > 0) await new Promise((r) => setImmediate(r));
    leave();
    await expect(guard.run('getMany', async () => 'x', undefined, spent)).rejects.toThrow(StoreBudgetError);
    // The next call is the probe, and the store answering closes the circuit.
    await expect(guard.run('getMany', async () => 'ok')).resolves.toBe('ok');
    await expect(guard.run('getMany', async () => 'again')).resolves.toBe('again');
  });

  it('fixed: a probe cut short by the request budget leaves the circuit open for the next call to probe at once', async () => {
    const guard = await dueForProbe();
    await expect(guard.run('getMany', slow(200), undefined, new StoreBudget(20))).rejects.toThrow(StoreBudgetError);
    await expect(guard.run('getMany', async () => 'ok')).resolves.toBe('ok');
    expect(guard.isOpen).toBe(false);
  });
});
