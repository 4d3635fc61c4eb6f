/** Fastify through `@fastify/view`, with `fastifyViewEngine(engine)`, over real HTTP (fastify.inject is not used). */
import Fastify, { type FastifyInstance } from 'fastify';
import view from '@fastify/view';
import Keyv from 'keyv';
import { createEngine, fastifyViewEngine, KeyvStore, type Engine } from '../lib';
import { counter, views } from './support/views';

const apps: FastifyInstance[] = [];
afterAll(async () => {
  await Promise.all(apps.map((a) => a.close()));
});

async function serve(engine: Engine, dir: string, routes: (app: FastifyInstance) => void): Promise<string> {
  const app = Fastify();
  apps.push(app);
  await app.register(view, { engine: { nunjucks: fastifyViewEngine(engine) }, templates: dir });
  routes(app);
  return app.listen({ port: 0, host: '127.0.0.1' });
}

const files = {
  'page.njk': '<% extends "layout.njk" %><% block body %><% cache 60 box who %>[{{ who | count }}]<% endcache %> at {{ n }}<% endblock %>',
  'layout.njk': '<main><% block body %><% endblock %></main>',
  'broken.njk': 'line one\n{{ nope() }}',
};

describe('fastifyViewEngine(engine) with @fastify/view', () => {
  it.each([
    ['the memory store', () => undefined],
    ['an async Keyv store (several render passes)', () => new KeyvStore(new Keyv())],
  ])('renders fragcache templates with fragments cached across requests, on %s', async (_what, store) => {
    const dir = views(files);
    const engine = createEngine({ views: dir, store: store() });
    const c = counter();
    engine.env.addFilter('count', c.filter);
    const base = await serve(engine, dir, (app) => {
      app.get('/', (req, reply) => {
        const q = req.query as { who?: string; n?: string };
        return reply.view('page', { who: q.who, n: q.n });
      });
    });
    const get = async (q: string) => {
      const r = await fetch(`${base}/?${q}`);
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toMatch(/text\/html/);
      return r.text();
    };
    expect(await get('who=ann&n=1')).toBe('<main>[ann] at 1</main>');
    expect(await get('who=ann&n=2')).toBe('<main>[ann] at 2</main>');
    expect(await get('who=bob&n=3')).toBe('<main>[bob] at 3</main>');
    expect(c.runs()).toBe(2);
    expect(engine.stats().hits).toBe(1);
    await engine.close();
  });

  it('a template error becomes a 500 through Fastify\'s error handler, and the server keeps serving', async () => {
    const dir = views(files);
    const engine = createEngine({ views: dir });
    engine.env.addFilter('count', (x: unknown) => x);
    const errors: Error[] = [];
    const base = await serve(engine, dir, (app) => {
      app.setErrorHandler((err, _req, reply) => {
        errors.push(err as Error);
        return reply.status(500).send('template failed');
      });
      app.get('/broken', (_req, reply) => reply.view('broken'));
      app.get('/ok', (_req, reply) => reply.view('page', { who: 'x', n: 1 }));
    });
    const r = await fetch(`${base}/broken`);
    expect(r.status).toBe(500);
    expect(await r.text()).toBe('template failed');
    expect(String(errors[0])).toMatch(/broken\.njk/);
    expect(await (await fetch(`${base}/ok`)).text()).toBe('<main>[x] at 1</main>');
    await engine.close();
  });

  it('reply.viewAsync and inline sources render through the engine too', async () => {
    const dir = views(files);
    const engine = createEngine({ views: dir });
    engine.env.addFilter('count', (x: unknown) => x);
    const base = await serve(engine, dir, (app) => {
      app.get('/async', async (_req, reply) => reply.type('text/html').send(await reply.viewAsync('page', { who: 'y', n: 2 })));
      // A raw source, which @fastify/view accepts (its types only say string).
      app.get('/raw', (_req, reply) => reply.view({ raw: '<% cache 60 r %>raw {{ v }}<% endcache %>' } as unknown as string, { v: 7 }));
    });
    expect(await (await fetch(`${base}/async`)).text()).toBe('<main>[y] at 2</main>');
    expect(await (await fetch(`${base}/raw`)).text()).toBe('raw 7');
    expect(await (await fetch(`${base}/raw`)).text()).toBe('raw 7');
    expect(engine.stats().fragments.r).toMatchObject({ misses: 1, hits: 1 });
    await engine.close();
  });
});
