/**
 * A long-lived process for the digest specs: `digest-worker.ts <url> <prefix> <views> <noCache 0|1>`, then one
 * command per stdin line: `render <template>` prints `{"html":…,"fragments":{name: status}}` on one line.
 */
import { createInterface } from 'node:readline';
import { createEngine } from '../../lib';

async function main(): Promise<void> {
  const [url, prefix, views, noCache] = process.argv.slice(2);
  const engine = createEngine({ store: url, prefix, views, noCache: noCache === '1', timeout: 1000, leakGuard: 'off' });
  try {
    for await (const line of createInterface({ input: process.stdin })) {
      const [cmd, arg] = line.trim().split(/\s+/);
      if (cmd !== 'render') throw new Error(`unknown command ${cmd}`);
      const r = await engine.explain(arg);
      process.stdout.write(`${JSON.stringify({ html: r.html, fragments: Object.fromEntries(r.fragments.map((f) => [f.name, f.status])) })}\n`);
    }
  } finally {
    await engine.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
