/**
 * `verify`: sampled hits are rendered again after the response and compared; a difference (a leak static
 * analysis cannot see, e.g. a filter reading per-request state) is reported and the entry replaced.
 */
import { createEngine, OptionError, type Engine, type FragcacheWarning } from '../lib';
import { describeWith, need, redis, uniquePrefix, type TestServer } from './support/servers';

/** A filter that reads "the current user" from module state, as a request-scoped global would. */
let currentUser = 'ann';
function engineWith(verify: number, store?: string): { e: Engine; warnings: FragcacheWarning[]; runs: () => number } {
  const e = createEngine({ verify, leakGuard: 'off', store, prefix: store ? uniquePrefix('verify') : undefined, timeout: 1000 });
  let n = 0;
  e.env.addFilter('whoami', (x: unknown) => {
    n++;
    return `${String(x)}:${currentUser}`;
  });
  const warnings: FragcacheWarning[] = [];
  e.on('warning', (w) => warnings.push(w));
  return { e, warnings, runs: () => n };
}
const TPL = '<p><% cache 60 greeting %>hello {{ "to" | whoami }}<% endcache %></p>';

describe('verify', () => {
  afterEach(() => {
    currentUser = 'ann';
    jest.restoreAllMocks();
  });

  test('a hit that differs from a fresh render is reported after the response, and the entry replaced', async () => {
    const { e, warnings } = engineWith(1);
    expect(await e.renderString(TPL)).toBe('<p>hello to:ann</p>');
    currentUser = 'bob';
    // Bob is served Ann's fragment (the leak); the check has not run when his response is ready.
    expect(await e.renderString(TPL)).toBe('<p>hello to:ann</p>');
    expect(warnings).toEqual([]);
    await e.settled();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ kind: 'verify', fragment: 'greeting', line: 1, stored: expect.stringContaining('to:ann'), fresh: expect.stringContaining('to:bob') });
    expect(warnings[0].key).toMatch(/^fc:1:f:greeting\//);
    expect(warnings[0].message).toMatch(/greeting \(\(string\):1\): a fresh render differs from the stored entry fc:1:f:greeting\/\S+ at character 9 .*The entry was replaced\./);
    // Replaced: the next hit serves the fresh body, under the same key, with no new miss.
    const misses = e.stats().misses;
    expect(await e.renderString(TPL)).toBe('<p>hello to:bob</p>');
    expect(e.stats().misses).toBe(misses);
    await e.close();
  });

  test('a request whose data predates an invalidation does not report or write back its older output', async () => {
    const e = createEngine({ verify: 1, leakGuard: 'off' });
    const warnings: FragcacheWarning[] = [];
    e.on('warning', (w) => warnings.push(w));
    const tpl = '<% cache 60 box tags=["d"] %>{{ v }}<% endcache %>';
    const t0 = Date.now() - 5; // request A loads "old" here…
    await new Promise((r) => setTimeout(r, 10));
    await e.invalidateTag('d'); // …then the data changes and is invalidated…
    expect(await e.renderString(tpl, { v: 'new' })).toBe('new'); // …request B stores the new output
    // A renders its old data and hits B's entry (the right answer for a fragment): its sampled re-render differs.
    expect(await e.renderString(tpl, { v: 'old' }, { since: t0 })).toBe('new');
    await e.settled();
    expect(warnings).toEqual([]); // not a leak: A's data is simply older
    expect(await e.renderString(tpl, { v: 'whatever' })).toBe('new'); // and "old" was not written back
    await e.close();
  });

  test('a fragment that is a function of its key: sampled, re-rendered, nothing reported', async () => {
    const { e, warnings, runs } = engineWith(1);
    await e.renderString(TPL);
    await e.renderString(TPL);
    await e.renderString(TPL);
    await e.settled();
    expect(runs()).toBe(3); // the miss, then one background re-render per sampled hit
    expect(warnings).toEqual([]);
    expect(e.stats()).toMatchObject({ hits: 2, misses: 1 }); // the checks do not count as traffic
    await e.close();
  });

  test('off by default: hits never render the body again', async () => {
    const { e, runs } = engineWith(0);
    await e.renderString(TPL);
    for (let i = 0; i < 20; i++) await e.renderString(TPL);
    await e.settled();
    expect(runs()).toBe(1);
    await e.close();
  });

  test('a share of hits: sampled when Math.random falls under it', async () => {
    const { e, runs } = engineWith(0.25);
    await e.renderString(TPL);
    const rolls = [0.9, 0.1, 0.3, 0.24];
    jest.spyOn(Math, 'random').mockImplementation(() => rolls.shift() ?? 0.99);
    for (let i = 0; i < 4; i++) await e.renderString(TPL);
    await e.settled();
    expect(runs()).toBe(3); // 1 miss + 2 sampled hits (0.1, 0.24)
    await e.close();
  });

  test('verify must be a share between 0 and 1', () => {
    expect(() => createEngine({ verify: 2 })).toThrow(OptionError);
    expect(() => createEngine({ verify: -0.1 })).toThrow(/verify/);
  });
});

describeWith(need(redis), 'verify on Redis (a remote store: several passes per render)', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await redis.get!();
  });
  afterAll(async () => {
    currentUser = 'ann';
    await server.stop();
  });

  test('the sampled hit is checked after the response and the entry replaced in Redis', async () => {
    const { e, warnings } = engineWith(1, server.url);
    const other = createEngine({ store: server.url, prefix: (e.cache as unknown as { prefix: string }).prefix, leakGuard: 'off', timeout: 1000 });
    other.env.addFilter('whoami', () => 'never rendered');
    try {
      expect(await e.renderString(TPL)).toBe('<p>hello to:ann</p>');
      currentUser = 'bob';
      expect(await e.renderString(TPL)).toBe('<p>hello to:ann</p>');
      expect(warnings).toEqual([]);
      await e.settled();
      expect(warnings.map((w) => w.kind)).toEqual(['verify']);
      // Another engine on the same Redis (as another process would) gets the replaced entry.
      expect(await other.renderString(TPL)).toBe('<p>hello to:bob</p>');
    } finally {
      await e.close();
      await other.close();
    }
  });
});
