/**
 * Fastify: `@fastify/view` renders Nunjucks through whatever object it is given as `engine.nunjucks`, calling
 * its `configure()` once and then `render(name, context, callback)` / `renderString(source, context, callback)`.
 * {@link fastifyViewEngine} hands it an object whose renders go through the engine's (multi-pass) `render`,
 * so fragments work on every store (a plain Nunjucks environment would render synchronously, and fragments
 * of a remote store would then render uncached). Fastify is not imported here.
 * @module
 */
import type { Engine } from './engine';

type Callback = (err: Error | null, html?: string) => void;

/** What `@fastify/view` expects of its `engine.nunjucks`. */
export interface FastifyNunjucks {
  /** Called once by `@fastify/view` with its `templates` and `options` (ignored: the engine's `views` apply). */
  configure(templates?: unknown, options?: unknown): FastifyNunjucksEnv;
}

/** The environment `@fastify/view` renders with. */
export interface FastifyNunjucksEnv {
  render(name: string, context: object, callback: Callback): void;
  renderString(source: string, context: object, callback: Callback): void;
  /** The engine's real Nunjucks Environment (for `onConfigure` hooks that add filters or globals). */
  env: Engine['env'];
}

/**
 * The `engine.nunjucks` value for `@fastify/view`: views render through `engine.render`, template errors reach
 * Fastify's error handler (a 500 by default), never the process.
 *
 * @example
 * import view from '@fastify/view';
 * import { createEngine, fastifyViewEngine } from 'fragcache';
 * const engine = createEngine({ views: 'templates' });
 * app.register(view, { engine: { nunjucks: fastifyViewEngine(engine) }, templates: 'templates' });
 * app.get('/', (req, reply) => reply.view('page.njk', { user }));
 */
export function fastifyViewEngine(engine: Engine): FastifyNunjucks {
  const settle = (p: Promise<string>, cb: Callback) => p.then((html) => cb(null, html), (err: Error) => cb(err));
  const env: FastifyNunjucksEnv = {
    render: (name, context, cb) => settle(engine.render(name, context), cb),
    renderString: (source, context, cb) => settle(engine.renderString(source, context), cb),
    env: engine.env,
  };
  return { configure: () => env };
}
