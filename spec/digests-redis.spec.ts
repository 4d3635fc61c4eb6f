/**
 * Dependency digests across real processes sharing Redis: a process started after a deploy-style edit misses,
 * a running one misses once its loader sees the change, and an unrelated edit keeps every entry.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { describeWith, need, redis, uniquePrefix, type TestServer } from './support/servers';
import { views } from './support/views';

interface Rendered {
  html: string;
  fragments: Record<string, string>;
}

/** A worker process; `render()` sends one command and resolves with its answer line. */
function worker(url: string, prefix: string, dir: string, noCache: boolean) {
  const child = spawn(process.execPath, [require.resolve('tsx/cli'), path.join(__dirname, 'support', 'digest-worker.ts'), url, prefix, dir, noCache ? '1' : '0'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    async render(template: string): Promise<Rendered> {
      child.stdin.write(`render ${template}\n`);
      const next = await lines.next();
      if (next.done) throw new Error('worker exited');
      return JSON.parse(next.value) as Rendered;
    },
    async stop(): Promise<void> {
      child.stdin.end();
      await new Promise((r) => child.once('exit', r));
    },
  };
}

describeWith(need(redis), 'dependency digests on Redis, across processes', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await redis.get!();
  });
  afterAll(async () => {
    await server.stop();
  });

  it('an edit two levels down misses in a new process and in a running one once its loader sees it; unrelated edits keep every entry', async () => {
    const dir = views({
      'page.njk': '<% import "ui.njk" as ui %><% cache 300 inc %>[<% include "a.njk" %>]<% endcache %><% cache 300 mac %>[{{ ui.m() }}]<% endcache %>',
      'a.njk': 'A<% include "b.njk" %>',
      'b.njk': 'b1',
      'ui.njk': '<% macro m() %>M<% include "c.njk" %><% endmacro %>',
      'c.njk': 'c1',
      'other.njk': 'o1',
    });
    const prefix = uniquePrefix('digest');
    const first = worker(server.url, prefix, dir, true); // noCache: its loader sees edits at the next render
    try {
      expect(await first.render('page.njk')).toEqual({ html: '[Ab1][Mc1]', fragments: { inc: 'miss', mac: 'miss' } });
      expect((await first.render('page.njk')).fragments).toEqual({ inc: 'hit', mac: 'hit' });

      // A deploy changes the partial under the include: a process started afterwards misses that block only.
      writeFileSync(path.join(dir, 'b.njk'), 'b2');
      const second = worker(server.url, prefix, dir, false);
      try {
        expect(await second.render('page.njk')).toEqual({ html: '[Ab2][Mc1]', fragments: { inc: 'miss', mac: 'hit' } });
      } finally {
        await second.stop();
      }

      // The partial under the imported macro: the running process misses as soon as its loader reads the change.
      writeFileSync(path.join(dir, 'c.njk'), 'c2');
      expect(await first.render('page.njk')).toEqual({ html: '[Ab2][Mc2]', fragments: { inc: 'hit', mac: 'miss' } });

      // Unrelated edits: every entry still hits, in the running process and in a new one.
      writeFileSync(path.join(dir, 'other.njk'), 'o2');
      expect((await first.render('page.njk')).fragments).toEqual({ inc: 'hit', mac: 'hit' });
      const third = worker(server.url, prefix, dir, false);
      try {
        expect(await third.render('page.njk')).toEqual({ html: '[Ab2][Mc2]', fragments: { inc: 'hit', mac: 'hit' } });
      } finally {
        await third.stop();
      }
    } finally {
      await first.stop();
    }
  }, 60_000);
});
