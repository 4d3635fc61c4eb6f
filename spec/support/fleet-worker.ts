/**
 * One process of a fleet for the fleet specs (`spec/fleet.spec.ts`) and the soak (`bench/soak-fleet.ts`):
 * forked with IPC, each its own engines and Redis connections. Protocol: the parent sends `setup`; the
 * worker connects, warms up and answers `ready`; the parent sends `go` to every worker at once (the
 * barrier); the worker does its job and answers `done` with what it recorded, then exits.
 *
 * Roles:
 * - `render`: per mode, a loop "t0 = now; read the data version; wait 2 ms (the rest of the data loading);
 *   render with since = t0 (or without)"; records [t0, version shown]. With the L1 it also records when each
 *   invalidation message arrived (a subscriber of its own on the L1 channel).
 * - `write`: per mode, at random moments, bumps the data version, then invalidates by name, variant or tag
 *   (at random); records [version, call start, resolved].
 * - `stampede`: fires `concurrency` renders of one cold page at once; reports body runs, stores, outputs.
 */
import { createClient } from '@redis/client';
import { createEngine, type Engine } from '../../lib';

/** One stream of renders or invalidations, on its own prefix and data key. */
export interface Mode {
  prefix: string;
  dataKey: string;
  l1: boolean;
  /** Renders pass `since` (the time before the data was read). */
  since: boolean;
  /** False: the engine stores whatever it renders (the behaviour before fencing). */
  fence: boolean;
  unknownSinceWindow?: number;
  /** Writer: pause between invalidations, ms. */
  gap?: [number, number];
}

export type Setup = { type: 'setup'; url: string } & (
  | { role: 'render' | 'write'; modes: Mode[]; ms: number }
  | { role: 'stampede'; prefix: string; concurrency: number; template: string }
);

/** The page of the linearizability runs: the data sits in a fragment nested in another. */
export const PAGE = '<% cache 300, "page" %>[<% cache 300, "box", "k", tags=["d"] %>{{ v }}<% endcache %>]<% endcache %>';
/** L1 channel of the default namespace. */
export const L1_CHANNEL = 'fragcache:l1';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function send(msg: unknown): Promise<void> {
  return new Promise((resolve, reject) => process.send!(msg, (err: Error | null) => (err ? reject(err) : resolve())));
}

function nextMessage<T>(type: string): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: { type?: string }) => {
      if (m?.type !== type) return;
      process.off('message', on);
      resolve(m as T);
    };
    process.on('message', on);
  });
}

function engineFor(url: string, prefix: string, o: { l1?: boolean; unknownSinceWindow?: number; fence?: boolean } = {}): Engine {
  const e = createEngine({ store: url + (o.l1 ? '?l1=1' : ''), prefix, timeout: 2000, unknownSinceWindow: o.unknownSinceWindow });
  if (o.fence === false) e.unfenced = true;
  return e;
}

async function render(url: string, modes: Mode[], ms: number) {
  const raw = createClient({ url });
  await raw.connect();
  const engines = modes.map((m) => engineFor(url, m.prefix, { l1: m.l1, unknownSinceWindow: m.unknownSinceWindow, fence: m.fence }));
  // When each invalidation message reached the L1: a listener added after the store's own on its subscriber
  // connection, so it runs once the store has dropped the keys.
  const arrivals: Record<string, number[]> = {};
  await Promise.all(
    modes.map(async (m, i) => {
      if (!m.l1) return;
      const store = engines[i].cache.store as unknown as { subscriber: { isReady?: boolean; subscribe(ch: string, fn: (msg: string) => void): Promise<void> } };
      while (!store.subscriber.isReady) await sleep(5);
      await store.subscriber.subscribe(L1_CHANNEL, (msg) => {
        if (msg.includes(`"${m.prefix}:tag:last"`)) (arrivals[m.prefix] ??= []).push(Date.now());
      });
    }),
  );
  // Warm up: connection, clock offset, compiled template (on another fragment than the measured ones).
  for (const e of engines) await e.renderString('<% cache 1, "warm" %>w<% endcache %>');
  await send({ type: 'ready' });
  await nextMessage('go');
  const end = Date.now() + ms;
  const renders: Record<string, [number, number][]> = {};
  await Promise.all(
    modes.map(async (m, i) => {
      const list: [number, number][] = (renders[m.prefix] = []);
      while (Date.now() < end) {
        const t0 = Date.now();
        const v = Number(await raw.get(m.dataKey));
        await sleep(2);
        const html = await engines[i].renderString(PAGE, { v }, m.since ? { since: t0 } : {});
        list.push([t0, Number(/^\[(\d+)\]$/.exec(html)?.[1] ?? NaN)]);
      }
    }),
  );
  await raw.quit();
  const fenced = Object.fromEntries(modes.map((m, i) => [m.prefix, engines[i].stats().fenced]));
  await Promise.all(engines.map((e) => e.close()));
  return { renders, arrivals, fenced };
}

async function write(url: string, modes: Mode[], ms: number) {
  const raw = createClient({ url });
  await raw.connect();
  const engines = modes.map((m) => engineFor(url, m.prefix));
  for (const m of modes) await raw.set(m.dataKey, '0');
  for (const e of engines) await e.invalidateTag('warm'); // connection and clock offset
  await send({ type: 'ready' });
  await nextMessage('go');
  // Stop a little before the renderers do, so they receive every invalidation message they are checked against.
  const end = Date.now() + ms - 150;
  const invalidations: Record<string, [number, number, number, string][]> = {};
  await Promise.all(
    modes.map(async (m, i) => {
      const list: [number, number, number, string][] = (invalidations[m.prefix] = []);
      const [lo, hi] = m.gap ?? [40, 120];
      for (;;) {
        await sleep(lo + Math.random() * (hi - lo));
        if (Date.now() >= end) break;
        const v = await raw.incr(m.dataKey); // the app writes its data, then invalidates
        const start = Date.now();
        const kind = ['name', 'variant', 'tag'][Math.floor(Math.random() * 3)];
        if (kind === 'name') await engines[i].invalidate('box');
        else if (kind === 'variant') await engines[i].invalidate('box', ['k']);
        else await engines[i].invalidateTag('d');
        list.push([v, start, Date.now(), kind]);
      }
    }),
  );
  await raw.quit();
  await Promise.all(engines.map((e) => e.close()));
  return { invalidations };
}

async function stampede(url: string, prefix: string, concurrency: number, template: string) {
  const engine = engineFor(url, prefix);
  const bodies: Record<string, number> = {};
  engine.env.addGlobal('count', (name: string) => {
    bodies[name] = (bodies[name] ?? 0) + 1;
    return '';
  });
  engine.env.addGlobal('slow', () => {
    const until = Date.now() + 30;
    while (Date.now() < until); // a body that takes 30 ms
    return '';
  });
  const stores: Record<string, number> = {};
  engine.on('store', (e) => (stores[e.name] = (stores[e.name] ?? 0) + 1));
  await engine.renderString('<% cache 1, "warm" %>w<% endcache %>');
  await send({ type: 'ready' });
  await nextMessage('go');
  const start = performance.now();
  const results = await Promise.all(
    Array.from({ length: concurrency }, async () => {
      const html = await engine.renderString(template, {});
      return { html, ms: performance.now() - start };
    }),
  );
  await engine.close();
  return { bodies, stores, html: results.map((r) => r.html), ms: results.map((r) => r.ms) };
}

async function main(): Promise<void> {
  const setup = await nextMessage<Setup>('setup');
  let result: unknown;
  if (setup.role === 'stampede') result = await stampede(setup.url, setup.prefix, setup.concurrency, setup.template);
  else if (setup.role === 'render') result = await render(setup.url, setup.modes, setup.ms);
  else result = await write(setup.url, setup.modes, setup.ms);
  await send({ type: 'done', result });
  process.disconnect?.();
}

main().catch(async (err) => {
  await send({ type: 'error', message: String((err as Error)?.stack ?? err) }).catch(() => undefined);
  process.exit(1);
});
