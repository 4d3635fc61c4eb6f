/** Loopback helpers for the benchmarks. */
import { once } from 'node:events';
import net from 'node:net';

/** A free loopback TCP port. */
export async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}
