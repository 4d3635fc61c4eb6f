/**
 * Fleet soak (`npm run soak:fleet [-- seconds]`, default 100 s (1,000+ invalidations per mode), loopback only): the long version of
 * `spec/fleet.spec.ts`, printing the figures of docs/reliability.md.
 *
 * 1. Linearizable invalidation: 3 render processes and 1 writer on one Redis, for `seconds`; modes: since
 *    known, since known with the L1, since unknown (window 1000 ms), and fencing off (for contrast).
 * 2. Linearizable page invalidation: 4 processes serving a page over HTTP (Express, page cache on Redis) and
 *    1 writer, for `seconds` more; modes: data loaded in the route or before the page cache, each without and
 *    with the L1, and a writer that never invalidates (for contrast). Invalidations by page URL (two
 *    spellings) or by the page's tag.
 * 3. Fleet stampede: 4 processes × 25 concurrent renders of a cold page, 10 rounds.
 * 4. Lock waiters: 5 processes render one cold nested page at once, 10 rounds: extra wait over the winner.
 *
 * Uses REDIS_URL when set (only its own key prefixes are touched), else a private redis-server on a free port.
 */
import { modes, pageModes, pageVerdicts, percentile, runFleet, verdict, type RenderResult, type ServeResult, type WriteResult } from '../spec/support/fleet';
import { redis } from '../spec/support/servers';

const seconds = Number(process.argv[2] ?? 100);
if (!(seconds > 0 && seconds <= 3600)) throw new Error('usage: soak-fleet [seconds (1..3600)]');

const fmt = (xs: number[]) => (xs.length ? `p50 ${percentile(xs, 50).toFixed(1)} / p99 ${percentile(xs, 99).toFixed(1)} / max ${Math.max(...xs).toFixed(1)} ms` : 'none');

async function main(): Promise<void> {
  if (!redis.get) throw new Error(`no Redis: ${redis.reason}`);
  const server = await redis.get();
  try {
    const WINDOW = 1000;
    const M = modes('soak', WINDOW, [25, 80], [WINDOW + 100, WINDOW + 500]);
    const all = Object.values(M);
    const ms = seconds * 1000;
    console.log(`linearizability: 3 renderers + 1 writer, ${seconds} s…`);
    const results = await runFleet([
      ...[1, 2, 3].map(() => ({ type: 'setup' as const, role: 'render' as const, url: server.url, modes: all, ms })),
      { type: 'setup', role: 'write', url: server.url, modes: all, ms },
    ]);
    const renderers = results.slice(0, 3) as RenderResult[];
    const writer = results[3] as WriteResult;
    const rows = {
      'since known': verdict(M.known.prefix, writer, renderers),
      'since known, L1': verdict(M.knownL1.prefix, writer, renderers, { l1: true }),
      [`since unknown (window ${WINDOW} ms)`]: verdict(M.unknown.prefix, writer, renderers, { windowMs: WINDOW + 50 }),
      'fencing off (0.1 behaviour)': verdict(M.unfenced.prefix, writer, renderers),
    };
    for (const [name, v] of Object.entries(rows)) {
      console.log(
        `  ${name}: ${v.invalidations} invalidations, ${v.renders} renders, ${v.fenced} fenced, ${v.stale} stale renders` +
          ` (lag ${fmt(v.lags)}), ${v.beyond} beyond the window` +
          (v.delivery.length ? `; L1 message delivery after the invalidation resolved: ${fmt(v.delivery)}` : ''),
      );
    }

    console.log(`page linearizability: 4 processes serving over HTTP + 1 writer, ${seconds} s…`);
    const P = pageModes('psoak', [20, 60]);
    const pageResults = await runFleet([
      ...[1, 2, 3, 4].map(() => ({ type: 'setup' as const, role: 'serve' as const, url: server.url, modes: Object.values(P), ms })),
      { type: 'setup', role: 'write', url: server.url, modes: Object.values(P), ms },
    ]);
    const pageWriter = pageResults[4] as WriteResult;
    const servers = pageResults.slice(0, 4) as ServeResult[];
    const pv = pageVerdicts(P, pageWriter, servers);
    const names: Record<keyof typeof P, string> = {
      route: 'data loaded in the route',
      early: 'data loaded before the page cache',
      routeL1: 'data loaded in the route, L1',
      earlyL1: 'data loaded before the page cache, L1',
      none: 'never invalidated (contrast)',
    };
    for (const k of Object.keys(P) as (keyof typeof P)[]) {
      const v = pv[k];
      const kinds: Record<string, number> = {};
      for (const [, , , kind] of pageWriter.invalidations[P[k].prefix] ?? []) kinds[kind] = (kinds[kind] ?? 0) + 1;
      const latency = servers.flatMap((s) => (s.renders[P[k].prefix] ?? []).map(([start, , end]) => end! - start));
      console.log(
        `  ${names[k]}: ${v.invalidations} invalidations (${Object.entries(kinds).map(([kind, n]) => `${kind} ${n}`).join(', ')}), ${v.renders} responses (${v.hits} hits,` +
          ` latency ${fmt(latency)}), ${v.fenced} fenced, ${v.stale} stale (lag ${fmt(v.lags)}), ${v.beyond} beyond the window` +
          (v.delivery.length ? `; L1 message delivery after the invalidation resolved: ${fmt(v.delivery)}` : ''),
      );
    }

    console.log('stampede: 4 processes × 25 concurrent renders of a cold page, 10 rounds…');
    const template =
      '<% cache 300, "sside" %>{{ count("sside") }}side<% endcache %>' +
      '<% cache 300, "spage" %><main><% cache 300, "sbox" %>{{ count("sbox") }}{{ slow() }}box<% endcache %></main><% endcache %>';
    type S = { bodies: Record<string, number>; stores: Record<string, number>; html: string[]; ms: number[] };
    const runs: number[] = [];
    let wrong = 0;
    for (let round = 0; round < 10; round++) {
      const prefix = `fsoakst${round}${Math.random().toString(36).slice(2, 8)}`;
      const r = (await runFleet(Array.from({ length: 4 }, () => ({ type: 'setup' as const, role: 'stampede' as const, url: server.url, prefix, concurrency: 25, template })))) as S[];
      runs.push(r.reduce((n, x) => n + (x.bodies.sbox ?? 0) + (x.bodies.sside ?? 0), 0));
      wrong += r.flatMap((x) => x.html).filter((h) => h !== 'side<main>box</main>').length;
    }
    console.log(`  leaf bodies run per round (2 expected): ${runs.join(', ')}; wrong outputs: ${wrong}`);

    console.log('lock waiters: 5 processes, one cold nested page, 10 rounds…');
    const extra: number[] = [];
    const winners: number[] = [];
    for (let round = 0; round < 10; round++) {
      const prefix = `fsoakwt${round}${Math.random().toString(36).slice(2, 8)}`;
      const page = '<% cache 60, "page" %><main><% cache 60, "box" %>{{ count("box") }}{{ slow() }}…<% endcache %></main><% endcache %>';
      const r = (await runFleet(Array.from({ length: 5 }, () => ({ type: 'setup' as const, role: 'stampede' as const, url: server.url, prefix, concurrency: 1, template: page })))) as S[];
      const winner = r.find((x) => x.bodies.box) ?? r[0];
      winners.push(winner.ms[0]);
      for (const x of r) if (x !== winner) extra.push(x.ms[0] - winner.ms[0]);
    }
    console.log(`  winner: ${fmt(winners)}; waiters' extra time over the winner: ${fmt(extra)}`);
  } finally {
    await server.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
