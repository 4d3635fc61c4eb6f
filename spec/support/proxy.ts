/**
 * A fault-injecting TCP proxy for the specs (loopback only): put it between a client and a private server and
 * make the link fail in the ways real networks do, while the server itself stays healthy.
 *
 * Faults: {@link FaultProxy.kill} (reset every open connection), {@link FaultProxy.stall} (stop forwarding,
 * both ways, until resumed; bytes are kept, not lost), {@link FaultProxy.latency} (delay every chunk),
 * {@link FaultProxy.garbleNext} (corrupt the next reply), {@link FaultProxy.inject} (send bytes the server never
 * sent), {@link FaultProxy.splitNext} (deliver the next reply in two pieces) and {@link FaultProxy.holdReplies}
 * (keep replies back for a while, then deliver them all).
 */
import { once } from 'node:events';
import net from 'node:net';

type Direction = 'up' | 'down';

/** One proxied connection: the client's socket and the server's. */
interface Link {
  client: net.Socket;
  server: net.Socket;
  /** Chunks are forwarded in order through this chain (latency and holds delay it). */
  chain: Record<Direction, Promise<void>>;
}

export interface FaultProxy {
  /** Port the proxy listens on (127.0.0.1). */
  port: number;
  /** Connections accepted so far (a reconnect is a new one). */
  readonly accepted: number;
  /** Connections open now. */
  readonly open: number;
  /** Resets every open connection (both sides), as a crashed middlebox would. New connections still work. */
  kill(): void;
  /**
   * Stops forwarding (both ways, open and new connections) until {@link resume}; nothing is lost, and a side
   * that closes meanwhile is not told to the other (a black-holing link).
   */
  stall(): void;
  resume(): void;
  /** Delays every chunk by `ms` each way (0: none). */
  latency(ms: number): void;
  /**
   * Corrupts the next chunk the server sends: by default its first byte becomes `!` (no RESP type starts so,
   * nor a memcached binary magic), which is the "one garbled reply" of a flaky link.
   */
  garbleNext(mutate?: (chunk: Buffer) => Buffer): void;
  /** Sends bytes to every connected client as if the server had sent them. */
  inject(bytes: Buffer | string): void;
  /** Delivers the next server chunk in two writes, split after `at` bytes, `gapMs` apart. */
  splitNext(at: number, gapMs?: number): Promise<void>;
  /** Holds every server reply back for `ms`, then delivers them in order. */
  holdReplies(ms: number): void;
  /** Calls `fn` with every chunk as it is forwarded (`undefined`: stop). */
  tap(fn: ((dir: Direction, chunk: Buffer) => void) | undefined): void;
  close(): Promise<void>;
}

/** Starts a proxy to `127.0.0.1:targetPort`. */
export async function faultProxy(targetPort: number): Promise<FaultProxy> {
  const links = new Set<Link>();
  let accepted = 0;
  let stalled: { promise: Promise<void>; release(): void } | undefined;
  let delay = 0;
  let holdUntil = 0;
  let garble: ((chunk: Buffer) => Buffer) | undefined;
  let split: { at: number; gapMs: number; done(): void } | undefined;
  let tapFn: ((dir: Direction, chunk: Buffer) => void) | undefined;

  const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

  function forward(link: Link, dir: Direction, chunk: Buffer): void {
    const to = dir === 'up' ? link.server : link.client;
    link.chain[dir] = link.chain[dir].then(async () => {
      if (stalled) await stalled.promise;
      if (delay) await sleep(delay);
      if (dir === 'down' && holdUntil > Date.now()) await sleep(holdUntil - Date.now());
      if (to.destroyed) return;
      tapFn?.(dir, chunk);
      if (dir === 'down' && garble) {
        chunk = garble(chunk);
        garble = undefined;
      }
      if (dir === 'down' && split && chunk.length > 1) {
        const s = split;
        split = undefined;
        const at = Math.min(Math.max(1, s.at), chunk.length - 1);
        to.write(chunk.subarray(0, at));
        await sleep(s.gapMs);
        if (!to.destroyed) to.write(chunk.subarray(at));
        s.done();
        return;
      }
      to.write(chunk);
    });
  }

  const server = net.createServer((client) => {
    accepted++;
    client.setNoDelay(true);
    const upstream = net.connect(targetPort, '127.0.0.1');
    upstream.setNoDelay(true);
    const link: Link = { client, server: upstream, chain: { up: Promise.resolve(), down: Promise.resolve() } };
    links.add(link);
    const drop = () => {
      // While stalled nothing gets through, not even a close: the other side learns of it on resume.
      if (stalled) return void stalled.promise.then(drop);
      links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (c) => forward(link, 'up', c));
    upstream.on('data', (c) => forward(link, 'down', c));
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');

  const proxy: FaultProxy = {
    port: (server.address() as net.AddressInfo).port,
    get accepted() {
      return accepted;
    },
    get open() {
      return links.size;
    },
    kill() {
      for (const l of [...links]) {
        l.client.resetAndDestroy();
        l.server.destroy();
        links.delete(l);
      }
    },
    stall() {
      if (stalled) return;
      let release!: () => void;
      const promise = new Promise<void>((r) => (release = r));
      stalled = { promise, release };
    },
    resume() {
      const s = stalled;
      stalled = undefined;
      s?.release();
    },
    latency(ms) {
      delay = ms;
    },
    garbleNext(mutate = (c) => Buffer.concat([Buffer.from('!'), c.subarray(1)])) {
      garble = mutate;
    },
    inject(bytes) {
      for (const l of links) if (!l.client.destroyed) l.client.write(bytes);
    },
    splitNext(at, gapMs = 2) {
      return new Promise<void>((done) => (split = { at, gapMs, done }));
    },
    holdReplies(ms) {
      holdUntil = Date.now() + ms;
    },
    tap(fn) {
      tapFn = fn;
    },
    async close() {
      proxy.resume();
      for (const l of links) {
        l.client.destroy();
        l.server.destroy();
      }
      links.clear();
      await new Promise((r) => server.close(r));
    },
  };
  return proxy;
}
