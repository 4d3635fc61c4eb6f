/**
 * A separate process running the example blog on a shared store: `example-worker.ts <store url> <prefix>
 * <users>` prints its port, then serves until SIGTERM.
 */
import { once } from 'node:events';
import { createApp } from '../../examples/express/server';
import { makeUsers } from './leak-load';

async function main(): Promise<void> {
  const [store, prefix, users] = process.argv.slice(2);
  // A generous budget: on a loaded machine a blown one serves uncached (correct, but the check wants hits).
  const blog = createApp({ store, prefix, users: makeUsers(Number(users)), timeout: 2000 });
  // Store errors (time budgets blown on a loaded machine) are allowed: counted, said once at the end.
  let errors = 0;
  blog.engine.on('error', () => void errors++);
  const server = blog.app.listen(0, '127.0.0.1');
  server.keepAliveTimeout = 65_000; // longer than the load generator keeps idle sockets: no reuse race
  await once(server, 'listening');
  process.stdout.write(`${(server.address() as { port: number }).port}\n`);
  process.on('SIGTERM', () => {
    if (errors) console.error(`example worker ${process.pid}: ${errors} store errors reported (served uncached meanwhile)`);
    server.closeAllConnections();
    server.close(() => void blog.close().finally(() => process.exit(0)));
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
