/**
 * `fragcache serve`: a preview server. `/<path>` renders the template at that path (`/page` →
 * `page.njk`) with data from `<data-dir>/<path>.{json,yaml,yml}`; pages reload when a template or data
 * file changes (Server-Sent Events); `?fragcache=debug` outlines each fragment with its name, hit/miss and age.
 * @module
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import chokidar from 'chokidar';
import type { Engine } from '../engine';
import { OptionError } from '../errors';
import type { FragmentTrace } from '../render';
import { isMemory, loadConfig, type ConfigFlags } from './config';
import { dataFileFor, loadData } from './data';
import * as fmt from './format';
import { CliError, colorsFor, formatError } from './io';
import { closeQuietly, openEngine } from './open';

/** Options of the serve command. */
export interface ServeOptions extends ConfigFlags {
  /** Port (validated by the command line parser; 0 picks a free one). */
  port?: number;
  host?: string;
  dataDir?: string;
}

const EVENTS = '/__fragcache/events';
const EXTENSIONS = ['.njk', '.html', '.nunjucks', '.j2'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Live reload: an EventSource that reloads the page on a `reload` event. */
const RELOAD = `<script>(function(){var s=new EventSource(${JSON.stringify(EVENTS)});s.addEventListener('reload',function(){s.close();location.reload();});})();</script>`;

/** The debug view's look: each fragment outlined (green hit, red miss, amber stale), labelled with name, status and age. */
const DEBUG_CSS = `<style id="fragcache-debug">
fragcache-fragment{display:block;position:relative;margin:4px;padding:18px 4px 4px;outline:3px solid #888;outline-offset:-3px}
fragcache-fragment[data-status=hit]{outline-color:#00c853}
fragcache-fragment[data-status=miss]{outline-color:#ff1744}
fragcache-fragment[data-status=stale]{outline-color:#ffab00}
fragcache-fragment::before{content:attr(data-name) " · " attr(data-status) " · " attr(data-age) "s";position:absolute;top:0;left:0;font:11px/16px monospace;padding:0 4px;background:#222;color:#fff}
</style>`;

/** Inserts `html` before `</body>` (or `</head>`), else at the end. */
function inject(page: string, html: string, before: 'body' | 'head' = 'body'): string {
  const i = page.toLowerCase().lastIndexOf(`</${before}>`);
  return i < 0 ? page + html : page.slice(0, i) + html + page.slice(i);
}

/** The template a request path names, if one exists under the views. */
function resolveTemplate(views: readonly string[], urlPath: string): string | undefined {
  const rel = decodeURIComponent(urlPath).replace(/^\/+/, '').replace(/\/+$/, '');
  if (rel.split('/').includes('..')) return undefined;
  const candidates = EXTENSIONS.includes(path.extname(rel)) ? [rel] : [...EXTENSIONS.map((e) => rel + e), ...EXTENSIONS.map((e) => `${rel ? rel + '/' : ''}index${e}`)];
  for (const c of candidates) for (const v of views) if (existsSync(path.join(v, c)) && statSync(path.join(v, c)).isFile()) return c;
  return undefined;
}

/** Every template under the views (for the index page), skipping the data folder. */
function listTemplates(views: readonly string[], dataDir: string): string[] {
  const out = new Set<string>();
  const walk = (root: string, dir: string) => {
    for (const d of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, d.name);
      if (d.isDirectory()) {
        if (full !== dataDir && !d.name.startsWith('.') && d.name !== 'node_modules') walk(root, full);
      } else if (EXTENSIONS.includes(path.extname(d.name))) out.add(path.relative(root, full).split(path.sep).join('/'));
    }
  };
  for (const v of views) if (existsSync(v)) walk(v, v);
  return [...out].sort();
}

function debugPanel(fragments: readonly FragmentTrace[]): string {
  const rows = fragments
    .map((f) => `<tr data-status="${f.status}"><td>${'&nbsp;'.repeat(f.depth * 2)}${esc(f.name)}</td><td>${esc(fmt.vary(f.vary))}</td><td>${f.status}</td><td>${fmt.ms(f.ms)}</td><td>${fmt.size(f.size)}</td><td>${fmt.seconds(f.ttlLeft)}</td></tr>`)
    .join('');
  return `<details id="fragcache-panel" open style="position:fixed;bottom:0;right:0;max-height:40vh;overflow:auto;background:#fff;border:1px solid #888;font:12px monospace;z-index:99999"><summary>fragcache: ${fragments.length} fragments</summary><table><tr><th>fragment</th><th>vary</th><th>status</th><th>time</th><th>size</th><th>ttl left</th></tr>${rows}</table></details>`;
}

function errorPage(title: string, detail: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head><body><h1 style="font:bold 16px sans-serif;color:#b00">${esc(title)}</h1><pre style="white-space:pre-wrap">${esc(detail)}</pre></body></html>`;
}

/** Starts the server; resolves when it stops (SIGINT/SIGTERM). */
export async function serve(options: ServeOptions): Promise<void> {
  const config = loadConfig(options);
  const port = options.port ?? 3000;
  const dataDir = path.resolve(options.dataDir ?? path.join(config.views[0], 'data'));
  const shown = (p: string) => path.relative(process.cwd(), p) || '.';
  const missing = config.views.filter((v) => !existsSync(v));
  if (missing.length) throw new CliError(`views folder not found: ${missing.map(shown).join(', ')}`);
  if (options.dataDir !== undefined && !existsSync(dataDir)) throw new CliError(`data folder not found: ${shown(dataDir)}`);
  const engine: Engine = await openEngine(config, { noCache: true });
  const log = colorsFor(process.stderr);
  engine.on('error', (e) => process.stderr.write(`${log.yellow('warning')}: ${e.message}\n`));
  engine.on('warning', (w) => process.stderr.write(`${log.yellow('warning')}: ${w.message}\n`));
  const clients = new Set<http.ServerResponse>();
  /** Renders in progress: a change waits for them, so none stores what changed after the cache was emptied. */
  const inflight = new Set<Promise<unknown>>();

  const server = http.createServer((req, res) => {
    void handle(req, res).catch((err) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/html; charset=utf-8' });
      res.end(errorPage('fragcache serve: internal error', String((err as Error)?.message ?? err)));
    });
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === EVENTS) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
      res.write(': connected\n\n');
      clients.add(res);
      req.on('close', () => clients.delete(res));
      return;
    }
    const send = (status: number, html: string) => {
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(inject(html, RELOAD));
    };
    if (url.pathname === '/' && !resolveTemplate(config.views, '/')) {
      const items = listTemplates(config.views, dataDir)
        .map((t) => `<li><a href="/${esc(t)}">${esc(t)}</a> · <a href="/${esc(t)}?fragcache=debug">debug</a></li>`)
        .join('');
      return send(200, `<!doctype html><html><head><meta charset="utf-8"><title>fragcache serve</title></head><body><h1>Templates</h1><ul>${items}</ul></body></html>`);
    }
    const template = resolveTemplate(config.views, url.pathname);
    if (!template) return send(404, errorPage('Not found', `no template for ${url.pathname} under ${config.views.join(', ')}`));
    const debug = url.searchParams.get('fragcache') === 'debug';
    const started = performance.now();
    const since = Date.now(); // before the data file is read: what renders store is never older than an invalidation
    try {
      const dataFile = dataFileFor(dataDir, template);
      const data = dataFile ? loadData(dataFile) : {};
      const rendering = engine.explain(template, data, { annotate: debug, since });
      inflight.add(rendering);
      const result = await rendering.finally(() => inflight.delete(rendering));
      let html = result.html;
      if (debug) html = inject(inject(html, DEBUG_CSS, 'head'), debugPanel(result.fragments));
      send(200, html);
      const counts = ['hit', 'miss', 'stale'].map((s) => `${result.fragments.filter((f) => f.status === s).length} ${s}`).join(', ');
      process.stderr.write(`${log.dim(new Date().toISOString().slice(11, 19))} GET ${url.pathname}${url.search} → ${template} ${fmt.ms(performance.now() - started)} (${counts})\n`);
    } catch (err) {
      const text = formatError(err, { views: config.views, colors: colorsFor({ isTTY: false } as NodeJS.WriteStream) });
      process.stderr.write(`${formatError(err, { views: config.views, colors: log })}\n`);
      send(500, errorPage(`Error rendering ${template}`, text));
    }
  }

  // A fragment's key changes with its block's source and the templates it depends on (dependency digests:
  // the loader has noCache, so an edited template recompiles with new digests and exactly the fragments
  // that depend on it miss), not with its data: after a data change, cached fragments would be served stale
  // until their TTL. So a data change empties what this server cached before the pages reload. The in-process memory store is emptied
  // whole; on a shared store only the entries this server rendered or served are deleted (whatever
  // else is under the prefix belongs to other processes).
  const memory = isMemory(config.store);
  const seen = new Set<string>();
  if (!memory) for (const ev of ['hit', 'miss', 'stale', 'store'] as const) engine.on(ev, (e) => void seen.add(e.key));
  async function forget(): Promise<void> {
    if (memory) {
      for (const cache of new Set(engine.caches.values())) await cache.clear();
      return;
    }
    const keys = [...seen];
    seen.clear();
    for (let i = 0; i < keys.length; i += 500) {
      const batch = keys.slice(i, i + 500);
      try {
        await engine.cache.guard.run('deleteMany', () => engine.cache.store.deleteMany(batch));
      } catch (err) {
        for (const k of keys.slice(i)) seen.add(k); // tried again on the next change
        throw err;
      }
    }
  }

  // Reload every open page when a template or a data file changes, once the cache no longer holds what changed.
  const watcher = chokidar.watch([...config.views, dataDir].filter((p) => existsSync(p)), { ignoreInitial: true, ignored: /(^|[/\\])(\.|node_modules)/ });
  let changes = Promise.resolve();
  watcher.on('all', (event, file) => {
    changes = changes.then(async () => {
      try {
        await Promise.allSettled([...inflight]);
        if (path.resolve(file).startsWith(dataDir + path.sep)) await forget();
      } catch (err) {
        process.stderr.write(`${log.yellow('warning')}: could not empty the cache after ${path.relative(process.cwd(), file)} changed: ${(err as Error)?.message ?? err}\n`);
      }
      for (const c of clients) c.write(`event: reload\ndata: ${JSON.stringify({ event, file: path.relative(process.cwd(), file) })}\n\n`);
    });
  });
  await new Promise<void>((resolve) => watcher.once('ready', () => resolve()));

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new OptionError('--port', port, 'expected a free port (this one is in use)') : err),
    );
    server.listen(port, options.host ?? '127.0.0.1', () => resolve());
  }).catch(async (err) => {
    await watcher.close();
    await closeQuietly(engine.cache.store);
    throw err;
  });
  const addr = server.address() as { address: string; port: number };
  const host = addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  process.stdout.write(`fragcache serve: http://${host}:${addr.port}/  (views ${config.views.map((v) => path.relative(process.cwd(), v) || '.').join(', ')}, data ${path.relative(process.cwd(), dataDir) || '.'}, store ${engine.cache.store.kind})\n`);

  await new Promise<void>((resolve) => {
    const stop = () => {
      for (const c of clients) c.end();
      server.close(() => resolve());
      server.closeAllConnections();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await watcher.close();
  await closeQuietly(engine.cache.store);
}
