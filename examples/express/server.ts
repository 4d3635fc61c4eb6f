/**
 * Example blog on Express 5 with fragcache: fragment caching (article cards, the expensive article body),
 * a per-user sidebar, whole-page caching of article pages, and invalidation when an article is saved.
 *
 * Run: `npm run example` (port from PORT, default 3000). Try `curl -i localhost:3000/articles/1` twice, then
 * `curl -X PUT -H 'content-type: application/json' -d '{"title":"New"}' localhost:3000/articles/1`.
 */
import type http from 'node:http';
import path from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import { createEngine, type Engine, type EngineOptions, type StoreSpec } from '../../lib';
import { cachePage } from '../../lib/express';
import { Articles, USERS } from './articles';

declare module 'express-serve-static-core' {
  interface Request {
    /** The user of the fake cookie session, if any. */
    user?: (typeof USERS)[string];
  }
}

/** Options of {@link createApp}. */
export interface AppOptions {
  /** Where fragments and pages go (default: memory). */
  store?: StoreSpec;
  /** Key prefix (tests use a unique one on shared stores). */
  prefix?: string;
  /** Time budgets (per call, per request) and circuit breaker of store calls (tests tune them). */
  timeout?: EngineOptions['timeout'];
  requestBudget?: EngineOptions['requestBudget'];
  breaker?: EngineOptions['breaker'];
  /** The users of the cookie session (default: alice and bob). Load tests bring many. */
  users?: Record<string, (typeof USERS)[string]>;
}

/** Builds the app. Tests drive it over HTTP; `close()` waits for invalidations and closes the stores. */
export function createApp(options: AppOptions = {}): { app: express.Express; engine: Engine; articles: Articles; close(): Promise<void> } {
  const engine = createEngine({ views: path.join(__dirname, 'views'), store: options.store, prefix: options.prefix, timeout: options.timeout, requestBudget: options.requestBudget, breaker: options.breaker });
  const articles = new Articles();
  const users = options.users ?? USERS;
  // Saving an article drops its card, its cached body and its cached pages (all tagged `article:<id>`).
  engine.invalidateOn(articles, 'saved', (a: { id: number }) => ({ tags: [`article:${a.id}`] }));

  const app = express();
  app.set('etag', 'weak');
  engine.express(app);
  app.locals.cached = true;

  // A cookie "session" without real auth: `Cookie: uid=alice`.
  app.use((req, res, next) => {
    const uid = /(?:^|;\s*)uid=([^;]*)/.exec(req.headers.cookie ?? '')?.[1];
    req.user = uid && Object.hasOwn(users, uid) ? users[uid] : undefined;
    res.locals.user = req.user;
    res.locals.userId = req.user?.id ?? null;
    next();
  });

  const find = (req: Request, res: Response) => {
    const a = articles.get(Number(req.params.id));
    if (!a) res.status(404).render('404');
    return a;
  };

  app.get('/', (req, res) => res.render('list', { articles: articles.list() }));

  // Whole page cached for 10 minutes, one variant per user (the page shows the user's sidebar), dropped when
  // the article is saved.
  const articlePage = cachePage('10m', {
    key: (req) => req.user?.id ?? null,
    allowCookies: true, // safe: `key` covers everything the page reads from the cookie
    tags: (req) => [`article:${req.params.id}`],
  });
  app.get('/articles/:id', articlePage, (req, res) => {
    const article = find(req, res);
    if (article) res.render('article', { article });
  });

  // The same page without whole-page caching: only its expensive fragment is cached.
  app.get('/fragment/articles/:id', (req, res) => {
    const article = find(req, res);
    if (article) res.render('article', { article });
  });

  // The same page with no caching at all (benchmark baseline).
  app.get('/uncached/articles/:id', (req, res) => {
    const article = find(req, res);
    if (article) res.render('article', { article, cached: false });
  });

  // A constant string the size of an article page (benchmark reference).
  let constant: string | undefined;
  app.get('/const', async (req, res) => {
    constant ??= await engine.render('article.njk', { ...app.locals, article: articles.get(1), cached: false, userId: null });
    res.type('html').send(constant);
  });

  const save = async (req: Request, res: Response) => {
    const a = articles.save(Number(req.params.id), req.body ?? {});
    if (!a) return void res.status(404).json({ error: 'no such article' });
    await engine.settled(); // the invalidation bound to `saved` has finished: the next GET is fresh
    if (req.is('json')) res.json({ id: a.id, title: a.title, updatedAt: a.updatedAt });
    else res.redirect(303, `/articles/${a.id}`);
  };
  app.put('/articles/:id', express.json(), save);
  app.post('/articles/:id', express.urlencoded({ extended: false }), save);

  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    console.error(err);
    res.status(500).type('text').send('Internal error');
  });

  return { app, engine, articles, close: () => engine.close() };
}

/**
 * Graceful shutdown: stop accepting connections, let requests in flight finish, then close the engine (its store
 * connections), after which nothing is left to keep the process alive. Resolves when done.
 */
export async function shutdown(server: http.Server, close: () => Promise<void>): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections(); // keep-alive sockets with no request would hold server.close() open
  await closed;
  await close();
}

if (require.main === module) {
  const { app, close } = createApp({ store: process.env.FRAGCACHE_STORE });
  const port = Number(process.env.PORT ?? 3000);
  const server = app.listen(port, '127.0.0.1', () => console.log(`fragcache example blog on http://127.0.0.1:${port}/`));
  const stop = (signal: string) => {
    console.log(`${signal}: shutting down`);
    shutdown(server, close).catch((err) => {
      console.error(err);
      process.exitCode = 1;
    });
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
