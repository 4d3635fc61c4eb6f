/**
 * A separate process for the page fleet spec: `page-fleet-worker.ts <redis url> <prefix>` serves `/cold` (a
 * slow page under cachePage) and `/runs` (how many times this process ran the `/cold` route), prints its port.
 */
import { once } from 'node:events';
import express from 'express';
import { createEngine } from '../../lib';
import { cachePage } from '../../lib/express';

async function main(): Promise<void> {
  const [url, prefix] = process.argv.slice(2);
  const engine = createEngine({ store: url, prefix, timeout: 2000 });
  engine.on('error', (err) => console.error(`page worker ${process.pid}: ${String(err)}`));
  const app = express();
  engine.express(app);
  let runs = 0;
  app.get('/cold', cachePage(60), async (req, res) => {
    runs++;
    await new Promise((r) => setTimeout(r, 300));
    res.send('cold page');
  });
  app.get('/runs', (req, res) => void res.json({ runs }));
  const server = app.listen(0, '127.0.0.1');
  server.keepAliveTimeout = 65_000; // longer than the load generator keeps idle sockets: no reuse race
  await once(server, 'listening');
  process.stdout.write(`${(server.address() as { port: number }).port}\n`);
  process.on('SIGTERM', () => {
    server.closeAllConnections();
    server.close(() => void engine.close().finally(() => process.exit(0)));
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
