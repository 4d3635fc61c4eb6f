/**
 * The example blog (examples/express) in its own process, for the load-under-faults runs:
 * `load-app.ts <storeUrl> <prefix> [timeoutMs]`. Prints `listening <port>` when ready. Over IPC it answers
 * `{ type: 'probe' }` with the heap after a full GC (run with `--expose-gc`), single-flight entries in flight,
 * and the engine's stats; `{ type: 'close' }` closes the engine and exits.
 */
import type { AddressInfo } from 'node:net';
import { createApp } from '../../examples/express/server';

const [store, prefix, timeout] = process.argv.slice(2);
// The one budget of the runs, per call and per request (the goal is "budget + render time").
const budget = timeout ? Number(timeout) : undefined;
const blog = createApp({ store, prefix, timeout: budget, requestBudget: budget });
const errors: string[] = [];
blog.engine.on('error', (e) => errors.length < 200 && errors.push(e.message));
const server = blog.app.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`);
});
server.keepAliveTimeout = 30_000;

process.on('message', async (msg: { type: string }) => {
  if (msg.type === 'probe') {
    (globalThis as { gc?: () => void }).gc?.();
    const stats = blog.engine.stats();
    process.send!({
      type: 'probe',
      heapUsed: process.memoryUsage().heapUsed,
      inflight: blog.engine.cache.inflight.size,
      hits: stats.hits,
      misses: stats.misses,
      errors: errors.splice(0),
      resets: (blog.engine.cache.store as { resets?: number }).resets ?? 0,
    });
  } else if (msg.type === 'close') {
    server.closeAllConnections();
    server.close();
    const t0 = Date.now();
    await blog.close();
    process.send!({ type: 'closed', ms: Date.now() - t0 }, () => process.exit(0));
  }
});
process.on('disconnect', () => process.exit(0));
