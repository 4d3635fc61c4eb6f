/**
 * Whole-page caching over a shared, asynchronous store: two instances of the example blog on one private
 * redis-server (fragcache's Redis store), and the same apps once that server is gone.
 */
import { once } from 'node:events';
import http from 'node:http';
import request from 'supertest';
import { createApp } from '../examples/express/server';
import { describeWith, need, privateRedis, redis as redisAvailability, until, type TestServer } from './support/servers';

describeWith(need(redisAvailability, true), 'page cache on Redis (two app instances)', () => {
  let redis: TestServer;
  const apps: { blog: ReturnType<typeof createApp>; server: http.Server }[] = [];

  beforeAll(async () => {
    redis = await privateRedis();
    const prefix = `pg${process.pid}`;
    for (let i = 0; i < 2; i++) {
      const blog = createApp({ store: redis.url, prefix });
      blog.engine.on('error', () => undefined); // store errors once Redis is gone
      const server = blog.app.listen(0, '127.0.0.1');
      await once(server, 'listening');
      apps.push({ blog, server });
    }
  });

  afterAll(async () => {
    for (const a of apps) await new Promise((r) => a.server.close(r));
    await Promise.all(apps.map((a) => a.blog.close().catch(() => undefined)));
    await redis.stop();
  });

  // Both instances answer for the same site.
  const get = (i: number, url: string) => request(apps[i]!.server).get(url).set('Host', 'blog.example');

  it('shares pages between instances, and a save in one drops the page in the other', async () => {
    expect((await get(0, '/articles/5')).headers['x-cache']).toBe('MISS');
    await apps[0]!.blog.engine.settled();
    // The store write happens after the response: wait (bounded) until instance 1 sees it.
    await until('instance 1 to hit the page instance 0 stored', async () => (await get(1, '/articles/5')).headers['x-cache'] === 'HIT');
    const h = await get(1, '/articles/5').set('Cookie', 'uid=alice');
    expect(h.headers['x-cache']).toBe('MISS'); // another user's variant
    expect(h.text).toContain('Hello, Alice');

    await request(apps[0]!.server).put('/articles/5').set('Host', 'blog.example').send({ title: 'Saved on 0' }).expect(200);
    const after = await get(0, '/articles/5');
    expect([after.headers['x-cache'], /<h1>([^<]*)/.exec(after.text)?.[1]]).toEqual(['MISS', 'Saved on 0']);
    // Instance 1 no longer has the old page: it gets the fresh one instance 0 stored.
    await until('instance 1 to serve the saved article', async () => (await get(1, '/articles/5')).text.includes('<h1>Saved on 0</h1>'));
  });

  it('serves pages uncached when Redis is gone', async () => {
    await redis.kill();
    for (let i = 0; i < 3; i++) {
      const r = await get(0, '/articles/4').expect(200);
      expect(r.text).toContain('<h1>Article 4</h1>');
      expect(r.headers['x-cache']).toBe('MISS');
    }
  });
});
