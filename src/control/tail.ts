/** The last lines of replicas' log files, for `dynsup logs` from a machine that cannot read them. */
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Supervisor } from '../supervise/supervisor.js';

const MAX_LINES = 10_000;
const MAX_BYTES = 4 << 20;

export async function tailLogs(sup: Supervisor, target: string | undefined, lines: number): Promise<{ replica: string; lines: string[] }[]> {
  const names = target ? sup.select(target).map((r) => r.name) : sup.replicas.map((r) => r.name);
  const n = Math.min(Math.max(0, lines), MAX_LINES);
  return Promise.all(names.map(async (replica) => ({ replica, lines: await lastLines(join(sup.cluster.stateDir, 'logs', `${replica}.log`), n) })));
}

async function lastLines(file: string, n: number): Promise<string[]> {
  const size = await stat(file).then((s) => s.size, () => 0);
  if (!size || !n) return [];
  const len = Math.min(size, MAX_BYTES);
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    const all = buf.toString('utf8').split('\n');
    if (all.at(-1) === '') all.pop();
    return all.slice(-n);
  } finally {
    await fh.close();
  }
}
