/**
 * Child process of page-heap.spec: `node --expose-gc --import tsx page-heap.ts <maxBytes> <requests>` serves a
 * small cachePage route on a bounded memory store, sends it requests with distinct 15 KB query strings, and
 * prints the heap growth (after full collections) and the store's counted bytes as JSON.
 */
import http from 'node:http';
import { once } from 'node:events';
import express from 'express';
import { FragmentCache, MemoryStore } from '../../lib';
import { cachePage } from '../../lib/express';

const gc = (globalThis as { gc?: () => void }).gc!;

function heap(): number {
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage().heapUsed;
}

function get(port: number, path: string, agent: http.Agent): Promise<void> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, (res) => {
        res.resume();
        res.on('end', resolve);
      })
      .on('error', reject);
  });
}

async function main(): Promise<void> {
  const maxBytes = Number(process.argv[2]);
  const requests = Number(process.argv[3]);
  const store = new MemoryStore({ maxBytes });
  const app = express();
  app.get('/small', cachePage(600, { store: new FragmentCache(store) }), (req, res) => void res.send('a small page'));
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  const filler = 'x'.repeat(15 * 1024);
  // Warm-up: code paths, sockets and caches of the process, not entries (their URLs differ from the test's).
  for (let i = 0; i < 200; i++) await get(port, `/small?warm=${i}`, agent);
  await new Promise((r) => setTimeout(r, 50));
  const before = heap();
  for (let i = 0; i < requests; i += 8) {
    await Promise.all(Array.from({ length: 8 }, (_, j) => get(port, `/small?n=${i + j}&pad=${filler}`, agent)));
  }
  await new Promise((r) => setTimeout(r, 100)); // the last stores land after their responses
  const after = heap();
  agent.destroy();
  server.close();
  process.stdout.write(JSON.stringify({ growth: after - before, counted: store.bytes }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
