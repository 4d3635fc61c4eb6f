/**
 * The page cache's security rules (issue 9), each over real HTTP against Express 5: decided on the headers
 * as they go out, placement safe by construction, isolation of apps, checks of shared entries, invalidation
 * of every copy. See docs/security.md for the list.
 */
import http from 'node:http';
import express, { type RequestHandler } from 'express';
import request from 'supertest';
import onHeaders from 'on-headers';
import { FragmentCache, MemoryStore, PageCacheError } from '../lib';
import { cacheMiddleware, cachePage, invalidatePage, pageCache } from '../lib/express';
import { asyncStore, serve } from './support/http';



const fresh = () => new FragmentCache(new MemoryStore());

/** A store event: the page write happens just after the response. */
const stored = (cache: FragmentCache) => new Promise((r) => cache.once('store', r));

/** An auth layer mounted BEFORE the cache that marks its answers at header time (on-headers), as many do. */
function apiKeyAuth(mark: (res: express.Response) => void): RequestHandler {
  return (req, res, next) => {
    if (req.headers['x-api-key']) {
      res.locals.user = `key-${req.headers['x-api-key']}`;
      onHeaders(res, () => mark(res));
    }
    next();
  };
}

describe('never store what the final response forbids', () => {
  it.each([
    ['Cache-Control: private, no-store', (res: express.Response) => void res.setHeader('Cache-Control', 'private, no-store')],
    ['Cache-Control: no-cache', (res: express.Response) => void res.setHeader('Cache-Control', 'no-cache')],
    ['Set-Cookie', (res: express.Response) => void res.setHeader('Set-Cookie', 'sid=1')],
    ['Vary: *', (res: express.Response) => void res.setHeader('Vary', '*')],
  ])('a hook of an earlier middleware that adds %s keeps the authenticated page out, and ours headers off', async (_name, mark) => {
    const cache = fresh();
    const app = express();
    let runs = 0;
    app.use(apiKeyAuth(mark));
    app.use(cacheMiddleware({ ttl: 60, store: cache }));
    app.get('/me', (req, res) => void (runs++, res.json({ user: res.locals.user ?? 'anonymous' })));
    const s = await serve(app);
    const authed = await request(s).get('/me').set('X-Api-Key', 'secret');
    expect(authed.body).toEqual({ user: 'key-secret' });
    expect(authed.headers['cache-status']).toMatch(/stored=\?0/);
    expect(authed.headers.expires).toBeUndefined();
    expect(String(authed.headers['cache-control'] ?? '')).not.toMatch(/max-age/);
    const anon = await request(s).get('/me');
    expect([anon.headers['x-cache'], anon.body]).toEqual(['MISS', { user: 'anonymous' }]);
    expect(runs).toBe(2);
  });

  it('a response not stored for its status gets no max-age or Expires of ours', async () => {
    const app = express();
    app.use(cacheMiddleware({ ttl: 60, store: fresh() }));
    app.get('/gone', (req, res) => void res.status(404).send('gone'));
    app.get('/fail', (req, res) => void res.status(500).send('fail'));
    const s = await serve(app);
    for (const [url, status] of [['/gone', 404], ['/fail', 500], ['/nowhere', 404]] as const) {
      const r = await request(s).get(url).expect(status);
      expect([url, r.headers['cache-control'], r.headers.expires, r.headers['cache-status']]).toEqual([url, undefined, undefined, 'fragcache; fwd=uri-miss; stored=?0; detail=status']);
    }
  });

  it('a Vary added by a hook of an earlier middleware is a part of the key', async () => {
    const cache = fresh();
    const app = express();
    app.use((req, res, next) => (onHeaders(res, () => void res.append('Vary', 'X-Api-Key')), next()));
    app.use(cacheMiddleware({ ttl: 60, store: cache }));
    app.get('/me', (req, res) => void res.send(`user ${req.headers['x-api-key'] ?? 'anonymous'}`));
    const s = await serve(app);
    const w = stored(cache);
    await request(s).get('/me').set('X-Api-Key', 'secret');
    await w;
    const anon = await request(s).get('/me');
    expect([anon.headers['x-cache'], anon.text]).toEqual(['MISS', 'user anonymous']);
    const again = await request(s).get('/me').set('X-Api-Key', 'secret');
    expect([again.headers['x-cache'], again.text]).toEqual(['HIT', 'user secret']);
  });

  it('s-maxage overrides max-age for this shared cache; both headers are kept', async () => {
    const realNow = Date.now.bind(Date);
    let offset = 0;
    const spy = jest.spyOn(Date, 'now').mockImplementation(() => realNow() + offset);
    try {
      const app = express();
      let runs = 0;
      app.use(cacheMiddleware({ ttl: 600, store: fresh() }));
      app.get('/s', (req, res) => void (runs++, res.set('Cache-Control', 'max-age=300, s-maxage=5').send('s')));
      const s = await serve(app);
      const a = await request(s).get('/s');
      expect(a.headers['cache-control']).toBe('max-age=300, s-maxage=5');
      expect((await request(s).get('/s')).headers['x-cache']).toBe('HIT');
      offset += 6000;
      expect((await request(s).get('/s')).headers['x-cache']).toBe('MISS');
      expect(runs).toBe(2);
    } finally {
      spy.mockRestore();
    }
  });

  it("a route's own Expires is kept and gives the lifetime; one in the past is never stored", async () => {
    const app = express();
    const at = new Date(Math.floor(Date.now() / 1000) * 1000 + 30_000).toUTCString();
    let runs = 0;
    app.use(cacheMiddleware({ ttl: 600, store: fresh() }));
    app.get('/future', (req, res) => void (runs++, res.set('Expires', at).send('f')));
    app.get('/past', (req, res) => void (runs++, res.set('Expires', 'Thu, 01 Jan 1970 00:00:00 GMT').send('p')));
    const s = await serve(app);
    const f = await request(s).get('/future');
    expect(f.headers.expires).toBe(at);
    expect(Number(/max-age=(\d+)/.exec(f.headers['cache-control'])?.[1])).toBeLessThanOrEqual(30);
    expect((await request(s).get('/future')).headers['x-cache']).toBe('HIT');
    const p = await request(s).get('/past');
    expect([p.headers.expires, p.headers['cache-status']]).toEqual(['Thu, 01 Jan 1970 00:00:00 GMT', 'fragcache; fwd=uri-miss; stored=?0; detail=expires']);
    expect((await request(s).get('/past')).headers['x-cache']).toBe('MISS');
    expect(runs).toBe(3);
  });
});

describe('placement safe by construction: pageCache() update / fetch', () => {
  /** A pretend session: the `sid` cookie names the user; a new visitor gets a cookie at header time. */
  const session: RequestHandler = (req, res, next) => {
    const sid = /(?:^|;\s*)sid=(\w+)/.exec(req.headers.cookie ?? '')?.[1];
    (req as unknown as { user?: string }).user = sid;
    if (!sid) onHeaders(res, () => void res.setHeader('Set-Cookie', 'sid=new'));
    next();
  };

  it('an allow-list mounted before fetch is never bypassed by a hit', async () => {
    const pages = pageCache({ ttl: 60, store: fresh() });
    const app = express();
    let runs = 0;
    app.use(pages.update);
    app.use((req, res, next) => (req.headers['x-client'] === 'office' ? next() : void res.status(403).send('refused')));
    app.use(pages.fetch);
    app.get('/internal', (req, res) => void (runs++, res.send('internal report')));
    const s = await serve(app);
    await request(s).get('/internal').set('X-Client', 'office').expect(200);
    expect((await request(s).get('/internal').set('X-Client', 'office')).headers['x-cache']).toBe('HIT');
    const outsider = await request(s).get('/internal');
    expect([outsider.status, outsider.text]).toEqual([403, 'refused']);
    expect(runs).toBe(1);
  });

  it('a key that reads what the session set separates users; the session cookie of a new visitor keeps its page out', async () => {
    const pages = pageCache({ ttl: 60, store: fresh(), key: (req) => (req as unknown as { user?: string }).user ?? null, allowCookies: true });
    const app = express();
    let runs = 0;
    app.use(pages.update);
    app.use(session);
    app.use(pages.fetch);
    app.get('/home', (req, res) => void (runs++, res.send(`hello ${(req as unknown as { user?: string }).user ?? 'visitor'}`)));
    const s = await serve(app);
    const v = await request(s).get('/home');
    expect([v.text, v.headers['set-cookie']?.[0], v.headers['cache-status']]).toEqual(['hello visitor', 'sid=new', 'fragcache; fwd=uri-miss; stored=?0; detail=set-cookie']);
    for (const user of ['alice', 'bob']) await request(s).get('/home').set('Cookie', `sid=${user}`);
    for (const user of ['alice', 'bob']) {
      const r = await request(s).get('/home').set('Cookie', `sid=${user}`);
      expect([r.headers['x-cache'], r.text]).toEqual(['HIT', `hello ${user}`]);
      expect(r.headers['cache-control']).toMatch(/private/); // keyed per user: no proxy may share it
    }
    expect(runs).toBe(3);
  });

  it('fetch without update before it is refused with an error saying the order', async () => {
    const pages = pageCache({ store: fresh() });
    const app = express();
    app.use(pages.fetch);
    app.get('/x', (req, res) => void res.send('x'));
    app.use(((err, req, res, _next) => void res.status(500).send(err.message)) as express.ErrorRequestHandler);
    const s = await serve(app);
    expect((await request(s).get('/x').expect(500)).text).toMatch(/mount `pages.update` before `pages.fetch`/);
  });

  it('the key is a snapshot: a later middleware rewriting a header cannot steer where the page is stored', async () => {
    const cache = fresh();
    const app = express();
    let runs = 0;
    app.use(cacheMiddleware({ ttl: 60, store: cache }));
    // After the cache: rewrites the header the page varies on (say, a "normaliser" an attacker can drive).
    app.use((req, res, next) => {
      if (req.headers['x-force']) req.headers['x-variant'] = String(req.headers['x-force']);
      next();
    });
    app.get('/v', (req, res) => void (runs++, res.set('Vary', 'X-Variant').send(`variant ${req.headers['x-variant']}`)));
    const s = await serve(app);
    const w = stored(cache);
    await request(s).get('/v').set('X-Variant', 'a').set('X-Force', 'evil');
    await w;
    // Stored under the look-up key of that request (X-Variant: a), never under X-Variant: evil.
    const victim = await request(s).get('/v').set('X-Variant', 'evil');
    expect([victim.headers['x-cache'], victim.text]).toEqual(['MISS', 'variant evil']);
    expect(runs).toBe(2);
  });
});

describe('isolation and integrity', () => {
  it('two apps of one process have separate page caches: a forged Host on the public app never reads the internal one', async () => {
    const internal = express();
    internal.use(cacheMiddleware({ ttl: 60 }));
    internal.get('/report', (req, res) => void res.send('internal salaries'));
    const pub = express();
    pub.use(cacheMiddleware({ ttl: 60 }));
    pub.get('/hello', (req, res) => void res.send('public'));
    const si = await serve(internal);
    const sp = await serve(pub);
    const host = 'intranet.example';
    await request(si).get('/report').set('Host', host);
    expect((await request(si).get('/report').set('Host', host)).headers['x-cache']).toBe('HIT');
    const forged = await request(sp).get('/report').set('Host', host);
    expect(forged.status).toBe(404);
    expect(forged.text).not.toContain('salaries');
  });

  it('the host in the key is the host the app sees: no case folding of ours', async () => {
    const app = express();
    app.use(cacheMiddleware({ ttl: 60, store: fresh() }));
    app.get('/h', (req, res) => void res.send(`host ${req.host}`));
    const s = await serve(app);
    await request(s).get('/h').set('Host', 'Site.example');
    const other = await request(s).get('/h').set('Host', 'site.example');
    expect([other.headers['x-cache'], other.text]).toEqual(['MISS', 'host site.example']);
  });

  it.each([
    ['a Set-Cookie header', (m: Record<string, unknown>) => void ((m.headers as Record<string, unknown>)['set-cookie'] = 'sid=attacker')],
    ['a status never stored', (m: Record<string, unknown>) => void (m.status = 500)],
    ['a header value with a line break', (m: Record<string, unknown>) => void ((m.headers as Record<string, unknown>)['x-note'] = 'a\r\nSet-Cookie: x=1')],
    ['a malformed header name', (m: Record<string, unknown>) => void ((m.headers as Record<string, unknown>)['bad name'] = 'x')],
    ['a malformed Vary list', (m: Record<string, unknown>) => void (m.vary = ['*'])],
  ])('an entry from a shared store with %s is a miss, reported once', async (_what, spoil) => {
    const store = asyncStore();
    const cache = new FragmentCache(store);
    const errors: Error[] = [];
    cache.on('error', (e) => errors.push(e));
    const app = express();
    let runs = 0;
    app.get('/p', cachePage(60, { store: cache }), (req, res) => void (runs++, res.send('page')));
    const s = await serve(app);
    const w = stored(cache);
    await request(s).get('/p');
    await w;
    // Someone with access to the store rewrites the page entry.
    const keys: string[] = [];
    for await (const k of store.keys!('fc:1:pg:')) keys.push(k);
    expect(keys).toHaveLength(1);
    const [entry] = await store.getMany(keys);
    const meta = structuredClone(entry!.meta!) as Record<string, unknown>;
    spoil(meta);
    await store.setMany([{ key: keys[0]!, entry: { ...entry!, meta }, ttlMs: 60_000 }]);
    const r = await request(s).get('/p');
    expect([r.status, r.headers['x-cache'], r.headers['set-cookie'], r.text]).toEqual([200, 'MISS', undefined, 'page']);
    await store.setMany([{ key: keys[0]!, entry: { ...entry!, meta }, ttlMs: 60_000 }]); // spoiled again
    expect((await request(s).get('/p')).headers['x-cache']).toBe('MISS');
    expect(runs).toBe(3);
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/ignored the entry/)]);
  });
});

describe('invalidation reaches every copy', () => {
  it('invalidatePage(path) drops every copy Express routes to it and every query variant; with a query, only that one', async () => {
    const cache = fresh();
    const app = express();
    let runs = 0;
    app.use(cacheMiddleware({ ttl: 60, store: cache }));
    app.get('/articles/:id', (req, res) => void (runs++, res.send(`article ${req.params.id}`)));
    const s = await serve(app);
    const urls = ['/articles/42', '/Articles/42', '/articles/42/', '/articles/%34%32', '/articles/42?utm_source=mail', '/articles/42?page=2'];
    for (const u of urls) await request(s).get(u);
    for (const u of urls) expect([u, (await request(s).get(u)).headers['x-cache']]).toEqual([u, 'HIT']);
    await invalidatePage('/articles/42?page=2', cache);
    expect((await request(s).get('/articles/42?page=2')).headers['x-cache']).toBe('MISS');
    expect((await request(s).get('/articles/42')).headers['x-cache']).toBe('HIT');
    await invalidatePage('/articles/42', cache);
    for (const u of urls) expect([u, (await request(s).get(u)).headers['x-cache']]).toEqual([u, 'MISS']);
    expect(runs).toBe(urls.length * 2 + 1);
  });

  it('ignoreParams leaves tracking parameters out of the key', async () => {
    const app = express();
    let runs = 0;
    app.use(cacheMiddleware({ ttl: 60, store: fresh(), ignoreParams: [/^utm_/, 'fbclid', 'gclid'] }));
    app.get('/p', (req, res) => void (runs++, res.send(`page ${req.query.page ?? 1}`)));
    const s = await serve(app);
    await request(s).get('/p?page=2&utm_source=mail&utm_medium=x');
    const r = await request(s).get('/p?fbclid=abc&page=2');
    expect([r.headers['x-cache'], r.text]).toEqual(['HIT', 'page 2']);
    expect((await request(s).get('/p?gclid=1')).text).toBe('page 1');
    expect(runs).toBe(2);
  });

  it('a worker that never served a request reaches the shared store its middleware was configured with', async () => {
    const inner = new MemoryStore();
    // The web process: serves and stores.
    const web = express();
    web.get('/news', cachePage(60, { store: new FragmentCache(asyncStore(inner)) }), (req, res) => void res.send('news'));
    const s = await serve(web);
    await request(s).get('/news');
    await new Promise((r) => setTimeout(r, 20));
    expect((await request(s).get('/news')).headers['x-cache']).toBe('HIT');
    // The worker: the same configuration, never a request, then an invalidation without a target.
    cachePage(60, { store: new FragmentCache(asyncStore(inner)) });
    await invalidatePage('/news');
    expect((await request(s).get('/news')).headers['x-cache']).toBe('MISS');
  });

  it('a middleware with no store that never served rejects instead of reaching nothing', async () => {
    await expect(cachePage(60).invalidatePage('/x')).rejects.toThrow(PageCacheError);
    await expect(cachePage(60).invalidatePage('/x')).rejects.toThrow(/has served no page yet/);
  });
});

describe('stampede', () => {
  it('50 concurrent cold requests run the route once (memory store); the others wait for its page', async () => {
    const app = express();
    let runs = 0;
    app.get('/slow', cachePage(60, { store: fresh() }), async (req, res) => {
      runs++;
      await new Promise((r) => setTimeout(r, 100));
      res.send('slow');
    });
    const s = await serve(app);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
    const all = await Promise.all(Array.from({ length: 50 }, () => request(s).get('/slow').agent(agent)));
    agent.destroy();
    expect(all.every((r) => r.text === 'slow')).toBe(true);
    expect(all.filter((r) => r.headers['x-cache'] === 'HIT')).toHaveLength(49);
    expect(runs).toBe(1);
  });

  it('requests for another variant of a URL whose Vary list is known do not wait for each other', async () => {
    const app = express();
    let deStarted!: () => void;
    const de = new Promise<void>((r) => (deStarted = r));
    app.get('/lang', cachePage(60, { store: fresh(), waitMs: 60_000 }), async (req, res) => {
      const lang = String(req.headers['x-lang']);
      if (lang === 'de') deStarted();
      if (lang === 'fr') await de; // fr finishes only once de's route has run: a de waiting for fr would hang
      res.set('Vary', 'X-Lang').send(`lang ${lang}`);
    });
    const s = await serve(app);
    await request(s).get('/lang').set('X-Lang', 'en'); // the URL's Vary list is now known
    await new Promise((r) => setTimeout(r, 20));
    const both = Promise.all([request(s).get('/lang').set('X-Lang', 'fr'), request(s).get('/lang').set('X-Lang', 'de')]);
    const outcome = await Promise.race([both.then((rs) => rs.map((r) => r.text)), new Promise((r) => setTimeout(() => r('waited'), 4000))]);
    expect(outcome).toEqual(['lang fr', 'lang de']);
  });

  it('a waiter whose leader never finishes renders itself after waitMs', async () => {
    const app = express();
    let runs = 0;
    let hold: (() => void) | undefined;
    app.get('/stuck', cachePage(60, { store: fresh(), waitMs: 200 }), (req, res) => {
      runs++;
      if (runs === 1) hold = () => void res.send('late'); // the first one hangs
      else res.send('fresh');
    });
    const s = await serve(app);
    const first = request(s).get('/stuck').then((r) => r);
    await new Promise((r) => setTimeout(r, 50));
    const second = await request(s).get('/stuck');
    expect([second.text, runs]).toEqual(['fresh', 2]);
    hold!();
    await first;
  });
});
