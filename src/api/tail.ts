/** The last lines of replicas' log files, for `dynsup logs` from a machine that cannot read them. */
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { timesAt } from '../logs/log-times.js';
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
  /** When each line arrived (ms; null: not known), for interleaving several replicas by time. */
  readonly times?: (number | null)[];
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
    const last = await lastLines(file, n, snap.size);
    if (log.stats.rotations === snap.rotations) return { replica, ...(await withTimes(file, last)), seq: snap.lines };
  }
  return { replica, ...(await withTimes(file, await lastLines(file, n))) };
}

async function withTimes(file: string, last: { lines: string[]; offsets: number[] }): Promise<{ lines: string[]; times: (number | null)[] }> {
  const times = await timesAt(file, last.offsets);
  return { lines: last.lines, times: times.map((t) => t ?? null) };
}

/** The last `n` complete lines among the file's first `end` bytes (default: all of it), with their offsets. */
async function lastLines(file: string, n: number, end?: number): Promise<{ lines: string[]; offsets: number[] }> {
  const size = Math.min(
    await stat(file).then(
      (s) => s.size,
      () => 0,
    ),
    end ?? Infinity,
  );
  if (!size || !n) return { lines: [], offsets: [] };
  const len = Math.min(size, MAX_BYTES);
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, size - len);
    const all = buf.subarray(0, bytesRead).toString('utf8').split('\n');
    // A last line without its newline yet is not a line so far: it comes with the live output.
    all.pop();
    const offsets: number[] = [];
    let at = size - len;
    for (const l of all) {
      offsets.push(at);
      at += Buffer.byteLength(l) + 1;
    }
    return { lines: all.slice(-n), offsets: offsets.slice(-n) };
  } finally {
    await fh.close();
  }
}
