/**
 * Spec helpers for apps over real HTTP: `serve` listens on a free loopback port and the servers close after the
 * spec file; `asyncStore` is a memory store seen as a remote one (no same-tick access, `shared`), as Redis is.
 */
import { once } from 'node:events';
import type http from 'node:http';
import type { Express } from 'express';
import { MemoryStore, type Store } from '../../lib';

const servers: http.Server[] = [];
afterAll(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** Listens on a free loopback port; the server is closed after the spec file. */
export async function serve(app: Express): Promise<http.Server> {
  const s = app.listen(0, '127.0.0.1');
  servers.push(s);
  await once(s, 'listening');
  return s;
}

/** The same memory store seen as a remote one (no same-tick access, `shared`), as Redis is. */
export function asyncStore(inner = new MemoryStore()): Store & { inner: MemoryStore } {
  return {
    inner,
    kind: 'async-memory',
    shared: true,
    getMany: (k) => inner.getMany(k),
    setMany: (w) => inner.setMany(w),
    add: (k, e, t) => inner.add(k, e, t),
    deleteMany: (k) => inner.deleteMany(k),
    clear: (p) => inner.clear(p),
    keys: (p) => inner.keys(p),
    close: async () => {},
  };
}
