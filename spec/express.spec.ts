/** The Express view engine: `engine.express(app)` + `res.render`, over real HTTP. */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import express from 'express';
import request from 'supertest';
import { createEngine, OptionError, TemplateError } from '../lib';
import { views, counter } from './support/views';
import { serve } from './support/http';


describe('engine.express(app)', () => {
  it('renders fragcache templates from the engine views, with fragments cached across requests', async () => {
    const dir = views({
      'page.njk': '<% extends "layout.njk" %><% block body %><% cache 60 box who %>[{{ who | count }}]<% endcache %> at {{ n }}<% endblock %>',
      'layout.njk': '<main><% block body %><% endblock %></main>',
    });
    const engine = createEngine({ views: dir });
    const c = counter();
    engine.env.addFilter('count', c.filter);
    const app = express();
    app.set('views', path.join(dir, 'not-here')); // the engine's own views are used, not the app's
    engine.express(app);
    app.get('/', (req, res) => res.render('page', { who: req.query.who, n: req.query.n }));
    const s = await serve(app);
    expect((await request(s).get('/?who=ann&n=1').expect(200)).text).toBe('<main>[ann] at 1</main>');
    expect((await request(s).get('/?who=ann&n=2').expect(200)).text).toBe('<main>[ann] at 2</main>');
    expect((await request(s).get('/?who=bob&n=3').expect(200)).text).toBe('<main>[bob] at 3</main>');
    expect(c.runs()).toBe(2);
    await engine.close();
  });

  it('sends template errors to next(err) and keeps the process alive', async () => {
    const engine = createEngine({ views: views({ 'bad.njk': 'line one\n{{ nofn() }}', 'ok.njk': 'fine' }) });
    const app = express();
    engine.express(app);
    app.get('/bad', (req, res) => res.render('bad'));
    app.get('/missing', (req, res) => res.render('nope'));
    app.get('/ok', (req, res) => res.render('ok'));
    const seen: unknown[] = [];
    app.use(((err, req, res, _next) => {
      seen.push(err);
      res.status(500).send('oops');
    }) as express.ErrorRequestHandler);
    const s = await serve(app);
    await request(s).get('/bad').expect(500, 'oops');
    await request(s).get('/missing').expect(500, 'oops');
    await request(s).get('/ok').expect(200, 'fine');
    expect(seen[0]).toBeInstanceOf(TemplateError);
    expect((seen[0] as TemplateError).template).toBe('bad.njk');
    expect((seen[0] as TemplateError).line).toBe(2);
    expect(String((seen[1] as Error).message)).toMatch(/Failed to lookup view "nope"/);
    await engine.close();
  });

  it('keeps the app’s other view engines working, from the app’s own views', async () => {
    const njk = views({ 'a.njk': 'nunjucks {{ x }}' });
    const other = views({ 'b.txt': 'text $x' });
    const engine = createEngine({ views: njk });
    const app = express();
    app.set('views', other);
    app.engine('txt', (file: string, opts: object, cb: (e: unknown, s?: string) => void) => {
      require('node:fs').readFile(file, 'utf8', (err: unknown, src: string) => cb(err, src?.replace('$x', String((opts as { x: string }).x))));
    });
    engine.express(app);
    app.get('/a', (req, res) => res.render('a', { x: 1 }));
    app.get('/b', (req, res) => res.render('b.txt', { x: 2 }));
    const s = await serve(app);
    await request(s).get('/a').expect(200, 'nunjucks 1');
    await request(s).get('/b').expect(200, 'text 2');
    expect(app.get('view engine')).toBe('njk');
    await engine.close();
  });

  it('renders other extensions when asked, and rejects bad arguments with typed errors', async () => {
    const engine = createEngine({ views: views({ 'x.html': 'html {{ 1 + 1 }}' }) });
    const app = express();
    app.set('view engine', 'pug');
    engine.express(app, { extensions: ['html'] });
    expect(app.get('view engine')).toBe('pug'); // not overridden unless asked
    app.get('/', (req, res) => res.render('x.html'));
    await request(await serve(app)).get('/').expect(200, 'html 2');
    expect(() => engine.express({})).toThrow(OptionError);
    expect(() => engine.express(express(), { extensions: [] })).toThrow(/option "extensions"/);
    await engine.close();
  });

  it('fixed: a res.render callback that throws reaches the error handler (500), never a hung request', async () => {
    const engine = createEngine({ views: views({ 'ok.njk': 'fine {{ n }}' }) });
    const app = express();
    engine.express(app);
    const warnings = jest.spyOn(process, 'emitWarning');
    app.get('/cb', (req, res) => res.render('ok', { n: 1 }, () => {
      throw new Error('callback failed');
    }));
    app.get('/cb2', (req, res) => res.render('ok', (err: unknown, html?: string) => {
      if (err) throw err;
      throw new Error(`after ${html}`);
    }));
    app.get('/fine', (req, res) => res.render('ok', { n: 3 }, (err: unknown, html?: string) => void res.send(html)));
    const seen: string[] = [];
    app.use(((err, req, res, _next) => {
      seen.push((err as Error).message);
      res.status(500).send('handled');
    }) as express.ErrorRequestHandler);
    const s = await serve(app);
    try {
      await request(s).get('/cb').timeout(2000).expect(500, 'handled');
      await request(s).get('/cb2').timeout(2000).expect(500, 'handled');
      await request(s).get('/fine').expect(200, 'fine 3');
      expect(seen).toEqual(['callback failed', 'after fine ']);
      expect(warnings).not.toHaveBeenCalled();
    } finally {
      warnings.mockRestore();
      await engine.close();
    }
  });

  it('does not load Express when the core is imported', () => {
    const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', "require('./lib/index.ts'); console.log(Object.keys(require.cache).some((k) => /node_modules[\\\\/]express[\\\\/]/.test(k)))"], {
      cwd: path.join(__dirname, '..'),
      encoding: 'utf8',
    });
    expect(out.trim()).toBe('false');
  });
});
