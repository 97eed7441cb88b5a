/** "Port already in use" that names the port and, where Linux lets us see it, the process holding it. */
import { createServer } from 'node:net';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { DynsupError } from '../util/errors.js';

export interface PortHolder {
  readonly pid: number;
  readonly command: string;
}

/** Try to bind host:port; throws E_PORT_IN_USE (naming the holder when found) if it cannot. */
export async function assertPortFree(host: string, port: number, what: string): Promise<void> {
  const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
    const srv = createServer();
    srv.once('error', (e: NodeJS.ErrnoException) => resolve(e));
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve(null)));
  });
  if (!err) return;
  if (err.code === 'EADDRINUSE') {
    const holder = await findPortHolder(port);
    const by = holder ? ` by pid ${holder.pid} (${holder.command})` : '';
    throw new DynsupError('E_PORT_IN_USE', `${what}: port ${port} on ${host} is already in use${by}`);
  }
  if (err.code === 'EADDRNOTAVAIL') {
    throw new DynsupError('E_PORT_IN_USE', `${what}: cannot listen on ${host}:${port}: ${host} is not an address of this machine (head.address)`);
  }
  throw new DynsupError('E_PORT_IN_USE', `${what}: cannot listen on ${host}:${port}: ${err.message}`);
}

/** Find the process with a listening TCP socket on `port` via /proc (Linux only; null when not visible). */
export async function findPortHolder(port: number): Promise<PortHolder | null> {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // f[1] local "ADDR:PORT" in hex, f[3] state (0A = LISTEN), f[9] inode
      if (f.length > 9 && f[3] === '0A' && parseInt(f[1]!.split(':')[1] ?? '', 16) === port) inodes.add(f[9]!);
    }
  }
  if (!inodes.size) return null;
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const fds = await readdir(`/proc/${entry}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await readlink(`/proc/${entry}/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m && inodes.has(m[1]!)) {
        const cmd = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean).join(' ');
        return { pid: Number(entry), command: cmd || '?' };
      }
    }
  }
  return null;
}
