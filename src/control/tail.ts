/** The last lines of replicas' log files, for `dynsup logs` from a machine that cannot read them. */
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Supervisor } from '../supervise/supervisor.js';

const MAX_LINES = 10_000;
const MAX_BYTES = 4 << 20;

export interface TailResult {
  readonly replica: string;
  readonly lines: string[];
  /**
   * The number (as published with live lines) of the last line returned: a follower drops live lines
   * up to it, so the boundary between history and live output has no line twice. Absent when unknown.
   */
  readonly seq?: number;
}

export async function tailLogs(sup: Supervisor, target: string | undefined, lines: number): Promise<TailResult[]> {
  const names = (target ? sup.select(target) : sup.replicas).flatMap((r) => r.logNames);
  const n = Math.min(Math.max(0, lines), MAX_LINES);
  return Promise.all(names.map((replica) => tailOne(sup, replica, n)));
}

async function tailOne(sup: Supervisor, replica: string, n: number): Promise<TailResult> {
  const file = join(sup.cluster.stateDir, 'logs', `${replica}.log`);
  const log = sup.replicaLog(replica);
  if (log) {
    // Read only up to a point where we know how many lines were handed out: exactly those are in it.
    const snap = await log.snapshot();
    const lines = await lastLines(file, n, snap.size);
    if (log.stats.rotations === snap.rotations) return { replica, lines, seq: snap.lines };
  }
  return { replica, lines: await lastLines(file, n) };
}

/** The last `n` complete lines among the file's first `end` bytes (default: all of it). */
async function lastLines(file: string, n: number, end?: number): Promise<string[]> {
  const size = Math.min(await stat(file).then((s) => s.size, () => 0), end ?? Infinity);
  if (!size || !n) return [];
  const len = Math.min(size, MAX_BYTES);
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, size - len);
    const all = buf.subarray(0, bytesRead).toString('utf8').split('\n');
    // A last line without its newline yet is not a line so far: it comes with the live output.
    all.pop();
    return all.slice(-n);
  } finally {
    await fh.close();
  }
}
