/**
 * A Memcached that dies and comes back never takes a page down (private memcached only).
 */
import { createEngine, StoreError, type FragcacheError } from '../lib';
import { describeWith, memcached, need, privateMemcached, uniquePrefix, until } from './support/servers';

const PAGE = '<% for i in range(3) %><% cache 300, "row", i %>[{{ i }}:{{ v }}]<% endcache %><% endfor %>';
const page = (v: string) => Array.from({ length: 3 }, (_, i) => `[${i}:${v}]`).join('');

describeWith(need(memcached, true), 'Memcached faults (private server)', () => {
  it('killed: pages render uncached within the budget, nothing is logged to the console, caching resumes after a restart', async () => {
    const server = await privateMemcached(); // always a private server here: it gets killed
    const engine = createEngine({ store: server.url, prefix: uniquePrefix('mcf'), breaker: { retryAfter: 300 } });
    const errors: FragcacheError[] = [];
    engine.on('error', (e) => errors.push(e));
    const logged = jest.spyOn(console, 'log');
    try {
      expect(await engine.renderString(PAGE, { v: 'a' })).toBe(page('a'));
      expect(await engine.renderString(PAGE, { v: 'b' })).toBe(page('a'));
      await server.kill();
      for (let i = 0; i < 10; i++) {
        const t0 = performance.now();
        expect(await engine.renderString(PAGE, { v: `d${i}` })).toBe(page(`d${i}`));
        expect(performance.now() - t0).toBeLessThan(500);
      }
      expect(errors[0]).toBeInstanceOf(StoreError);
      await expect(engine.invalidate('row')).rejects.toBeInstanceOf(StoreError);
      expect(logged).not.toHaveBeenCalled();
      await server.start();
      // memjs reconnects on a request: the breaker's probe (every retryAfter, 300 ms here) finds the server back.
      const took = await until('caching to resume', async () => {
        const before = engine.stats().hits;
        await engine.renderString(PAGE, { v: 'x' });
        await engine.renderString(PAGE, { v: 'y' });
        return engine.stats().hits >= before + 3;
      }, 5000, 20);
      expect(took).toBeLessThan(1500);
    } finally {
      logged.mockRestore();
      await engine.close();
      await server.stop();
    }
  }, 20_000);
});
