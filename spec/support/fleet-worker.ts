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
 * - `serve`: page modes (`Mode.page`): per mode, an Express app with the page cache on the mode's prefix, serving
 *   `/page` and `/page?x=1` over HTTP, whose data is "read the data version; wait 2 ms" either in the route
 *   (`route`, behind `cachePage`) or in a middleware mounted before the cache (`early`: a session or an auth
 *   layer that loads what the page shows, between `pageCache().update` and `.fetch`); and `loops` load loops
 *   per mode requesting it from this process's server at full speed (keep-alive, one `Host` for the whole
 *   fleet, so the processes share the page entries), recording [start, version shown, end] of every response.
 * - `write`: per mode, at random moments, bumps the data version, then invalidates by name, variant or tag
 *   (at random; page modes: by page URL, in two spellings, or by the page's tag); records [version, call
 *   start, resolved]. With `invalidate: false` it only bumps the data (contrast: the check must find old pages).
 * - `stampede`: fires `concurrency` renders of one cold page at once; reports body runs, stores, outputs.
 */
import { once } from 'node:events';
import http from 'node:http';
import { createClient } from '@redis/client';
import express from 'express';
import { createEngine, type Engine } from '../../lib';
import { cachePage, invalidatePage, pageCache, PageCache } from '../../lib/express';

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
  /** A page mode (role `serve`): where the page's data is loaded, in the route or before the page cache. */
  page?: 'route' | 'early';
  /** Page modes: load loops per process (default 1). */
  loops?: number;
  /** Writer: false bumps the data version without invalidating (default true). */
  invalidate?: boolean;
}

export type Setup = { type: 'setup'; url: string } & (
  | { role: 'render' | 'write' | 'serve'; modes: Mode[]; ms: number }
  | { role: 'stampede'; prefix: string; concurrency: number; template: string }
);

/** The page of the linearizability runs: the data sits in a fragment nested in another. */
export const PAGE = '<% cache 300, "page" %>[<% cache 300, "box", "k", tags=["d"] %>{{ v }}<% endcache %>]<% endcache %>';
/** L1 channel of the default namespace. */
export const L1_CHANNEL = 'fragcache:l1';
/** The page of the page modes (also served as `PAGE_URL?x=1`; `invalidatePage(PAGE_URL)` drops both). */
export const PAGE_URL = '/page';
/** The host every request of a page mode names: the processes serve one site, behind one load balancer. */
const PAGE_HOST = 'site.example';

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
  // Page modes: the URL's record exists from now on (no page store creates it during the run, so the only
  // messages about it on the L1 channel are invalidations).
  for (const [i, m] of modes.entries()) if (m.page) await invalidatePage(PAGE_URL, engines[i]);
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
        const kinds = m.page ? ['url', 'spelling', 'tag'] : ['name', 'variant', 'tag'];
        const kind = m.invalidate === false ? 'none' : kinds[Math.floor(Math.random() * kinds.length)];
        if (kind === 'name') await engines[i].invalidate('box');
        else if (kind === 'variant') await engines[i].invalidate('box', ['k']);
        else if (kind === 'tag') await engines[i].invalidateTag('d');
        else if (kind === 'url') await invalidatePage(PAGE_URL, engines[i]);
        // Another spelling Express routes to the same path, on another host: drops the same pages.
        else if (kind === 'spelling') await invalidatePage(`http://other.example${PAGE_URL.toUpperCase()}/`, engines[i]);
        list.push([v, start, Date.now(), kind]);
      }
    }),
  );
  await raw.quit();
  await Promise.all(engines.map((e) => e.close()));
  return { invalidations };
}

/** `GET path` with `Host: site.example` on this process's server: the version the page shows, and `X-Cache`. */
function get(agent: http.Agent, port: number, path: string): Promise<{ shown: number; hit: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ agent, host: '127.0.0.1', port, path, headers: { host: PAGE_HOST } }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`GET ${path}: ${res.statusCode} ${body.slice(0, 200)}`));
        resolve({ shown: Number(/^\[(\d+)\]$/.exec(body)?.[1] ?? NaN), hit: res.headers['x-cache'] === 'HIT' });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

async function serve(url: string, modes: Mode[], ms: number) {
  const raw = createClient({ url });
  await raw.connect();
  /** The data the page shows: its version, then 2 ms more of data loading. */
  const load = async (m: Mode): Promise<number> => {
    const v = Number(await raw.get(m.dataKey));
    await sleep(2);
    return v;
  };
  const sites = await Promise.all(
    modes.map(async (m) => {
      const engine = engineFor(url, m.prefix, { l1: m.l1 });
      engine.on('error', (err) => console.error(`fleet worker ${process.pid} (${m.prefix}): ${String(err)}`));
      const app = express();
      engine.express(app); // the page cache is the engine's cache; requests are stamped with their start
      if (m.page === 'early') {
        const pages = pageCache({ ttl: 300, tags: ['d'] });
        app.use(pages.update);
        app.use(async (req, res, next) => {
          res.locals.v = await load(m);
          next();
        });
        app.use(pages.fetch);
        app.get(['/page', '/warm'], (req, res) => void res.send(`[${res.locals.v}]`));
      } else {
        app.get(['/page', '/warm'], cachePage(300, { tags: ['d'] }), async (req, res) => void res.send(`[${await load(m)}]`));
      }
      const server = app.listen(0, '127.0.0.1');
      server.keepAliveTimeout = 65_000; // longer than the run: no reuse race with the load loops' sockets
      await once(server, 'listening');
      return { engine, server, port: (server.address() as { port: number }).port };
    }),
  );
  // When each invalidation message reached the L1 (see `render`): the URL record's own message (an
  // invalidatePage), or one that carries `tag:last` (an invalidateTag).
  const arrivals: Record<string, number[]> = {};
  await Promise.all(
    modes.map(async (m, i) => {
      if (!m.l1) return;
      const cache = sites[i].engine.cache;
      const urlMessage = JSON.stringify([cache.tagKey(PageCache.urlTag(PAGE_URL))]);
      const store = cache.store as unknown as { subscriber: { isReady?: boolean; subscribe(ch: string, fn: (msg: string) => void): Promise<void> } };
      while (!store.subscriber.isReady) await sleep(5);
      await store.subscriber.subscribe(L1_CHANNEL, (msg) => {
        if (msg === urlMessage || msg.includes(`"${m.prefix}:tag:last"`)) (arrivals[m.prefix] ??= []).push(Date.now());
      });
    }),
  );
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  // Warm up: connections, clock offset, a stored page (another URL than the measured ones).
  for (const s of sites) for (let i = 0; i < 3; i++) await get(agent, s.port, '/warm');
  await send({ type: 'ready' });
  await nextMessage('go');
  const end = Date.now() + ms;
  const renders: Record<string, [number, number, number][]> = {};
  const hits: Record<string, number> = {};
  await Promise.all(
    modes.map(async (m, i) => {
      const list: [number, number, number][] = (renders[m.prefix] = []);
      hits[m.prefix] = 0;
      await Promise.all(
        Array.from({ length: m.loops ?? 1 }, async (_, loop) => {
          for (let n = loop; Date.now() < end; n++) {
            const t0 = Date.now();
            const r = await get(agent, sites[i].port, n % 2 ? `${PAGE_URL}?x=1` : PAGE_URL);
            list.push([t0, r.shown, Date.now()]);
            if (r.hit) hits[m.prefix]++;
          }
        }),
      );
    }),
  );
  agent.destroy();
  await raw.quit();
  const fenced = Object.fromEntries(modes.map((m, i) => [m.prefix, sites[i].engine.stats().fenced]));
  await Promise.all(
    sites.map(async (s) => {
      s.server.closeAllConnections();
      await new Promise((r) => s.server.close(r));
      await s.engine.close();
    }),
  );
  return { renders, arrivals, fenced, hits };
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
  else if (setup.role === 'serve') result = await serve(setup.url, setup.modes, setup.ms);
  else result = await write(setup.url, setup.modes, setup.ms);
  await send({ type: 'done', result });
  process.disconnect?.();
}

main().catch(async (err) => {
  await send({ type: 'error', message: String((err as Error)?.stack ?? err) }).catch(() => undefined);
  process.exit(1);
});
