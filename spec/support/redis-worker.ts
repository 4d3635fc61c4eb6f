/**
 * A separate process for the Redis specs: `redis-worker.ts <url> <prefix> render <value>` prints the page,
 * `… invalidate` drops the fragment. Each run is its own process with its own connection.
 */
import { createEngine } from '../../lib';

async function main(): Promise<void> {
  const [url, prefix, action, value] = process.argv.slice(2);
  const engine = createEngine({ store: url, prefix, timeout: 1000 });
  try {
    if (action === 'render') {
      process.stdout.write(await engine.renderString('<% cache 300, "shared" %>{{ v }}<% endcache %>', { v: value }));
    } else if (action === 'invalidate') {
      await engine.invalidate('shared');
    } else throw new Error(`unknown action ${action}`);
  } finally {
    await engine.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
