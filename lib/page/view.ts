/**
 * The Express view engine: `res.render(view, locals)` renders fragcache templates (views resolved from the
 * engine's `views`), without replacing the app's other view engines.
 * @module
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { STORE_BUDGET } from '../budget';
import type { Engine } from '../engine';
import { OptionError } from '../errors';

/** Options of `engine.express(app, options)`. */
export interface ExpressViewOptions {
  /** File extensions rendered by fragcache (default `["njk"]`). Other extensions keep their own engines. */
  extensions?: string[];
  /**
   * Make the first extension the app's `view engine` (so `res.render("page")` finds `page.njk`). Default: only
   * when the app has no `view engine` yet.
   */
  defaultEngine?: boolean;
}

/** The parts of an Express app this module uses (Express itself is never imported at run time). */
export interface ExpressAppLike {
  get(setting: string): unknown;
  set(setting: string, value: unknown): unknown;
}

type ViewOptions = { defaultEngine?: string; root: string | string[]; engines: Record<string, unknown> };
type ViewClass = new (name: string, options: ViewOptions) => { path?: string; render(options: object, cb: (err: unknown, html?: string) => void): void };

/** The app setting under which the engine is kept (the page cache middlewares find it there). */
export const ENGINE_SETTING = 'fragcache engine';

/**
 * Key, on `res.locals`, of the epoch ms at which the app first saw the request: a time before the route loaded
 * its data, given to renders as `since` (Express copies `res.locals`, symbols too, into the render options).
 */
export const REQUEST_START = Symbol.for('fragcache.requestStart');

function dotted(ext: string): string {
  return ext.startsWith('.') ? ext : `.${ext}`;
}

/**
 * Registers `engine` as the renderer of its extensions in `app`. It installs a `view` class that handles
 * only those extensions and hands every other name to the class the app had before, so EJS, Pug… keep working
 * and keep resolving from the app's `views` setting.
 */
export function useEngine(engine: Engine, app: ExpressAppLike, options: ExpressViewOptions = {}): void {
  if (typeof app?.get !== 'function' || typeof app?.set !== 'function') throw new OptionError('app', app, 'expected an Express application');
  const extensions = options.extensions ?? ['njk'];
  if (!Array.isArray(extensions) || !extensions.length || !extensions.every((e) => typeof e === 'string' && /^\.?[\w.-]+$/.test(e))) {
    throw new OptionError('extensions', extensions, 'expected a non-empty list of file extensions like "njk"');
  }
  const exts = extensions.map(dotted);
  const Base = app.get('view') as ViewClass;
  if (typeof Base !== 'function') throw new OptionError('app', app, 'expected an Express application (it has no "view" setting)');

  class FragcacheView {
    path?: string;
    name = "";
    private template = '';

    constructor(name: string, opts: ViewOptions) {
      const ext = path.extname(name) || (opts.defaultEngine ? dotted(opts.defaultEngine) : '');
      // Not ours: the app's previous view class does everything, as if fragcache were not there.
      if (!exts.includes(ext)) return new Base(name, opts) as unknown as FragcacheView;
      this.name = path.extname(name) ? name : name + ext;
      for (const root of engine.views) {
        const file = path.resolve(root, this.name);
        if (file.startsWith(root + path.sep) && existsSync(file) && statSync(file).isFile()) {
          this.path = file;
          this.template = path.relative(root, file).split(path.sep).join('/');
          break;
        }
      }
      // Express reports "Failed to lookup view … in views directory …" using `root`.
      (this as unknown as { root: string[] }).root = engine.views;
    }

    render(locals: object, cb: (err: unknown, html?: string) => void): void {
      let called = false;
      const once = (err: unknown, html?: string) => {
        if (called) return;
        called = true;
        cb(err, html);
      };
      // Template errors become `next(err)` in Express. A callback that throws is handled by the guard around
      // `res.render` (next(err)); only a direct `app.render` callback can get here, with no request to answer.
      const start = (locals as Record<symbol, unknown>)[REQUEST_START];
      // (With the request's store budget, when the page cache made one: the page's look-up and this render share it.)
      const options = { since: typeof start === 'number' ? start : undefined, [STORE_BUDGET]: (locals as Record<symbol, unknown>)[STORE_BUDGET] };
      engine.render(this.template, locals, options).then(
        (html) => once(null, html),
        (err) => once(err),
      ).catch((err) => process.emitWarning(`fragcache: the render callback threw: ${String((err as Error)?.message ?? err)}`, { code: 'FRAGCACHE_VIEW' }));
    }
  }

  app.set('view', FragcacheView);
  app.set(ENGINE_SETTING, engine);
  guardRenderCallbacks(app);
  stampRequests(app);
  if (options.defaultEngine ?? !app.get('view engine')) app.set('view engine', exts[0].slice(1));
}

const STAMPED = Symbol.for('fragcache.requestStamp');

/**
 * Records when each request reached the app (before any middleware or route loaded data), on `res.locals`. A
 * sub-app keeps the time its parent recorded, which is earlier.
 */
function stampRequests(app: ExpressAppLike): void {
  const a = app as unknown as Record<string | symbol, unknown> & { handle?: (req: unknown, res: unknown, next: unknown) => unknown };
  if (typeof a.handle !== 'function' || a[STAMPED]) return;
  const handle = a.handle;
  a[STAMPED] = true;
  a.handle = function (this: unknown, req: unknown, res: unknown, next: unknown) {
    if (res && typeof res === 'object') {
      const r = res as { locals?: Record<symbol, unknown> };
      r.locals ??= Object.create(null) as Record<symbol, unknown>;
      r.locals[REQUEST_START] ??= Date.now();
    }
    return handle.call(this, req, res, next);
  };
}

type RenderCallback = (err: unknown, html?: string) => void;
interface ResponseLike {
  req?: { next?: (err?: unknown) => void };
  send?(body: unknown): unknown;
}
const GUARDED = Symbol.for('fragcache.renderGuard');

/**
 * Makes `res.render` of this app safe with asynchronous engines: the callback (the route's, or Express's
 * default one that sends the HTML) runs inside a try/catch, and what it throws goes to `next(err)`, as a
 * throw in a route does. Without this, a throw after an asynchronous render (fragcache renders are) would
 * leave the request hanging. The app's own `response` object is patched, never Express's prototype.
 */
function guardRenderCallbacks(app: ExpressAppLike): void {
  const response = (app as { response?: Record<string | symbol, unknown> }).response;
  if (!response || typeof response.render !== 'function' || response[GUARDED]) return;
  const render = response.render as (this: ResponseLike, view: string, options?: unknown, cb?: RenderCallback) => void;
  response[GUARDED] = true;
  response.render = function (this: ResponseLike, view: string, options?: unknown, callback?: RenderCallback) {
    const done: RenderCallback | undefined = typeof options === 'function' ? (options as RenderCallback) : callback;
    const opts = typeof options === 'function' ? undefined : options;
    const req = this.req;
    const res = this;
    const respond: RenderCallback =
      done ??
      ((err, html) => {
        if (err) return req?.next?.(err);
        res.send?.(html);
      });
    return render.call(this, view, opts, (err, html) => {
      try {
        respond(err, html);
      } catch (thrown) {
        if (typeof req?.next !== 'function') throw thrown;
        req.next(thrown);
      }
    });
  };
}
