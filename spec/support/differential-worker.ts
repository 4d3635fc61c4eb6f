/**
 * One process of the two-process differential test (`spec/differential-fleet.spec.ts`): forked with IPC (bundled
 * like the fleet workers, `workerScript` in `fleet.ts`), its own engine and Redis connection per case. It renders
 * and invalidates only when told, with the data the parent sends (so both processes render identical data); the
 * parent compares what it renders with plain Nunjucks.
 *
 * Protocol (one request at a time; each answered):
 * - `case` {url, dir, prefix, unfenced}: a new engine on those views, that Redis and that prefix, connected → `ready`
 *   (`unfenced`: it stores what fencing would refuse, the behaviour before fencing, to show that the test can fail);
 * - `render` {data, n, since}: `n` concurrent renders of page.njk; with `since`, the time the message arrived (when
 *   the data was "loaded") → `rendered` {outputs};
 * - `invalidate` {inv}: awaits the invalidation → `invalidated`;
 * - `straddle` {data}: renders with that data (loaded now: `since` is now) again and again → `straddling` once the
 *   first render started; on `stop`, finishes the render in flight and renders once more → `rendered` {outputs};
 * - `totals` → `totals` {renders, fenced, errors} so far (fenced: renders' writes that fencing refused; errors: the
 *   engines' `error` events, store errors among them);
 * - `exit`: closes the engine and disconnects (the process then ends).
 */
import { createEngine, type Engine } from '../../lib';
import type { RedisStore } from '../../lib/stores/redis';
import { applyInvalidation, errorText, type Data, type Invalidation } from './differential';

export type Request =
  | { type: 'case'; url: string; dir: string; prefix: string; unfenced?: boolean }
  | { type: 'render'; data: Data; n: number; since: boolean }
  | { type: 'invalidate'; inv: Invalidation }
  | { type: 'straddle'; data: Data }
  | { type: 'stop' }
  | { type: 'totals' }
  | { type: 'exit' };

export type Reply =
  | { type: 'ready' }
  | { type: 'rendered'; outputs: string[] }
  | { type: 'invalidated' }
  | { type: 'straddling' }
  | { type: 'totals'; renders: number; fenced: number; errors: number }
  | { type: 'error'; message: string };

let engine: Engine | undefined;
const totals = { renders: 0, fenced: 0, errors: 0 };

function send(msg: Reply): Promise<void> {
  return new Promise((resolve, reject) => process.send!(msg, (err: Error | null) => (err ? reject(err) : resolve())));
}

async function closeEngine(): Promise<void> {
  if (!engine) return;
  totals.fenced += engine.stats().fenced;
  const e = engine;
  engine = undefined;
  await e.close();
}

async function render(data: Data, since: number | undefined): Promise<string> {
  totals.renders++;
  try {
    return await engine!.render('page.njk', data, since === undefined ? {} : { since });
  } catch (e) {
    return errorText(e);
  }
}

let stopped: (() => void) | undefined;

async function handle(m: Request): Promise<void> {
  switch (m.type) {
    case 'case': {
      await closeEngine();
      // A generous store budget, as in the one-process test: a timed-out invalidation rejects and fails the case.
      const e = createEngine({ views: m.dir, store: m.url, prefix: m.prefix, timeout: 10_000, leakGuard: 'off' });
      e.on('error', () => totals.errors++);
      if (m.unfenced) e.unfenced = true; // the behaviour before fencing (to show that the test can fail)
      engine = e;
      const client = (e.cache.store as RedisStore).client;
      if (client.isReady !== true) await new Promise<void>((resolve) => client.on('ready', () => resolve()));
      return send({ type: 'ready' });
    }
    case 'render': {
      const since = m.since ? Date.now() : undefined;
      const outputs = await Promise.all(Array.from({ length: m.n }, () => render(m.data, since)));
      return send({ type: 'rendered', outputs });
    }
    case 'invalidate':
      await applyInvalidation(engine!, m.inv);
      return send({ type: 'invalidated' });
    case 'straddle': {
      const since = Date.now();
      let stop = false;
      const stopping = new Promise<void>((resolve) => (stopped = resolve));
      void stopping.then(() => (stop = true));
      const outputs: string[] = [];
      const first = render(m.data, since);
      await send({ type: 'straddling' });
      outputs.push(await first);
      while (!stop) {
        outputs.push(await render(m.data, since));
        // A render that needs no I/O (a page without fragments) never lets the `stop` message in: make room for it.
        await new Promise((resolve) => setImmediate(resolve));
      }
      // One render that certainly started after the invalidation resolved (the parent stops us only then).
      outputs.push(await render(m.data, since));
      return send({ type: 'rendered', outputs });
    }
    case 'stop':
      stopped?.();
      stopped = undefined;
      return;
    case 'totals':
      return send({ type: 'totals', ...totals, fenced: totals.fenced + (engine?.stats().fenced ?? 0) });
    case 'exit':
      await closeEngine();
      process.disconnect?.();
      return;
  }
}

process.on('message', (m: Request) => {
  // `stop` arrives while a `straddle` is being handled: requests are not queued behind one another.
  handle(m).catch(async (err) => {
    await send({ type: 'error', message: String((err as Error)?.stack ?? err) }).catch(() => undefined);
    process.exit(1);
  });
});
