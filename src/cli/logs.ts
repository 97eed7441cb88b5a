/** `dynsup logs`: print (and follow) the per-replica log files. Reads files only; needs no supervisor. */
import { existsSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadCluster } from '../config/load.js';
import { readSavedAllocation } from '../slurm/saved.js';
import { runtimePaths } from '../api/runtime-files.js';
import { LineSplitter } from '../logs/line-splitter.js';
import { BatchedOutput } from '../logs/batched-output.js';
import { TerminalMux } from '../logs/terminal.js';
import { DynsupError } from '../util/errors.js';
import { escapeLine } from '../util/terminal-escape.js';
import { formatEvent } from '../logs/event-format.js';
import { timesAt } from '../logs/log-times.js';
import type { Flags } from './flags.js';
import { control, credentials, target } from './client.js';
import type { TailResult } from '../api/tail.js';
import { natsUrl } from '../controlplane/urls.js';
import { logNamesOf } from '../supervise/gang-launch.js';

export async function logsCommand([file, target]: string[], flags: Flags): Promise<number> {
  const cluster = loadCluster(file!, { stateDir: flags['state-dir'] as string | undefined, slurm: readSavedAllocation, checkLocalPaths: false });
  const { logDir } = runtimePaths(cluster.stateDir);
  const special = ['nats', 'etcd', 'dynsup'];
  let names: string[];
  const all = cluster.replicas.map((r) => ({ plan: r, logs: logNamesOf(cluster, r) }));
  if (!target) names = all.flatMap((r) => r.logs);
  else if (special.includes(target) || all.some((r) => r.logs.includes(target))) names = [target];
  else if (all.some((r) => r.plan.name === target)) names = all.find((r) => r.plan.name === target)!.logs;
  else {
    names = all.filter((r) => r.plan.group === target).flatMap((r) => r.logs);
    if (!names.length) throw new DynsupError('E_USAGE', `no replica or group named '${target}' (groups: ${cluster.groups.map((g) => g.name).join(', ')})`);
  }
  // Checked by flags.ts before anything runs.
  const lines = flags.lines === undefined ? undefined : Number(flags.lines);
  const out = new BatchedOutput(process.stdout);
  const mux = names.length > 1 ? new TerminalMux(out, names) : undefined;
  // What workers print is shown with its escape sequences and control characters escaped, pipe or TTY (a
  // pipe often ends at a terminal too); their colours are kept on a colour TTY. The files keep every byte.
  const keepSgr = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
  const emit = (name: string, line: Buffer) => {
    // dynsup's own event log is JSON: shown as readable lines (with the date: it spans runs).
    if (name === 'dynsup') out.write(`${formatEvent(line.toString('utf8'), { date: true, colour: keepSgr })}\n`);
    else if (mux) mux.line(name, line);
    else out.write(Buffer.concat([escapeLine(line, { keepSgr }), Buffer.from('\n')]));
  };
  if (typeof flags.head === 'string') return remoteLogs(file!, target, names, lines, flags, emit);
  const files = names.map((n) => ({ name: n, path: join(logDir, `${n}.log`), offset: 0 }));
  // Without -f, a last line the worker has not ended yet is shown too (with -f it comes once ended).
  const partial = !flags.follow;
  if (lines !== undefined && files.length > 1) {
    // The last N lines of each, interleaved by when they arrived (the .times marks beside each log).
    const shown: { name: string; line: Buffer; at: number; order: number }[] = [];
    for (const [order, f] of files.entries()) {
      if (!existsSync(f.path)) continue;
      const size = (await stat(f.path)).size;
      const got: { line: Buffer; offset: number }[] = [];
      f.offset = await readRange(
        f.path,
        await startOfLast(f.path, lines, size),
        size,
        (line, offset) => got.push({ line: Buffer.from(line), offset }),
        partial,
      ); // copied: the read buffer is reused
      const times = await timesAt(
        f.path,
        got.map((g) => g.offset),
      );
      let at = 0;
      got.forEach((g, i) => shown.push({ name: f.name, line: g.line, at: (at = times[i] ?? at), order }));
    }
    // Stable: lines of one replica keep their order; equal times keep the replicas' order.
    shown.sort((x, y) => x.at - y.at || x.order - y.order);
    for (const l of shown) emit(l.name, l.line);
  } else {
    for (const f of files) {
      if (!existsSync(f.path)) continue;
      const size = (await stat(f.path)).size;
      f.offset = await readRange(f.path, lines === undefined ? 0 : await startOfLast(f.path, lines, size), size, (l) => emit(f.name, l), partial);
    }
  }
  if (!flags.follow) return 0;
  // Follow: poll sizes (cheap, works for files written by another process and across rotation).
  for (;;) {
    for (const f of files) {
      const size = await stat(f.path).then(
        (s) => s.size,
        () => -1,
      );
      if (size < 0) continue;
      if (size < f.offset) f.offset = 0;
      if (size > f.offset) f.offset = await readRange(f.path, f.offset, size, (l) => emit(f.name, l));
    }
    await sleep(100);
  }
}

/** Where the last `n` lines of the file's first `size` bytes begin (an unended last line counts as one). */
async function startOfLast(path: string, n: number, size: number): Promise<number> {
  if (n === 0) return size;
  // Scan backwards, without reading a huge file whole.
  const fh = await open(path, 'r');
  try {
    let pos = size;
    let count = 0;
    const buf = Buffer.alloc(64 * 1024);
    while (pos > 0) {
      const len = Math.min(buf.length, pos);
      pos -= len;
      await fh.read(buf, 0, len, pos);
      for (let i = len - 1; i >= 0; i--) {
        if (buf[i] === 10 && pos + i !== size - 1 && ++count >= n) return pos + i + 1;
      }
    }
    return 0;
  } finally {
    await fh.close();
  }
}

/**
 * Emit the complete lines in [from, to), each with its offset; returns the offset after the last complete
 * line. `partial`: emit an unended last line too (it is then included in the offset returned).
 */
async function readRange(path: string, from: number, to: number, emit: (line: Buffer, offset: number) => void, partial = false): Promise<number> {
  const fh = await open(path, 'r');
  try {
    let offset = from;
    let consumed = from;
    let at = from;
    const buf = Buffer.alloc(256 * 1024);
    const splitter = new LineSplitter(1 << 20, (line, truncated) => {
      emit(line, at);
      at += line.length + truncated + 1;
    });
    let pending = 0;
    while (offset < to) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, to - offset), offset);
      if (!bytesRead) break;
      const chunk = buf.subarray(0, bytesRead);
      const lastNl = chunk.lastIndexOf(10);
      if (lastNl >= 0) {
        splitter.push(chunk.subarray(0, lastNl + 1));
        consumed = offset + lastNl + 1;
        pending = 0;
        // Re-read the unterminated tail together with the next chunk.
        offset = consumed;
      } else {
        pending += bytesRead;
        offset += bytesRead;
        if (pending > 1 << 20) {
          splitter.push(chunk);
          consumed = offset;
        }
      }
    }
    if (partial && consumed < to) {
      const rest = Buffer.alloc(Math.min(to - consumed, 1 << 20));
      const { bytesRead } = await fh.read(rest, 0, rest.length, consumed);
      splitter.push(rest.subarray(0, bytesRead));
      splitter.flush();
      consumed = to;
    }
    return consumed;
  } finally {
    await fh.close();
  }
}

/** From another machine: history through the supervisor (tail request), live lines from NATS subjects. */
async function remoteLogs(
  file: string,
  what: string | undefined,
  names: string[],
  lines: number | undefined,
  flags: Flags,
  emit: (name: string, line: Buffer) => void,
): Promise<number> {
  const t = await target(file, flags);
  const creds = await credentials(t, flags);
  const stop = new AbortController();
  process.once('SIGINT', () => stop.abort());
  // Subscribe before asking for history so that nothing printed in between is missed; lines that are in
  // both (numbered up to the history's last) are shown once.
  const pending: [string, Buffer, number | undefined][] = [];
  const seen = new Map<string, number>();
  let live = false;
  const show = (replica: string, line: Buffer, seq: number | undefined): void => {
    if (seq !== undefined && seq <= (seen.get(replica) ?? 0)) return;
    emit(replica, line);
  };
  // Loaded only when following from another machine: nats is not a local `logs`'s business.
  const { followOverNats } = flags.follow ? await import('../api/nats-control.js') : { followOverNats: undefined };
  const following = followOverNats
    ? followOverNats(
        natsUrl(t.cluster),
        t.cluster.name,
        creds,
        what ? names : null,
        (replica, chunk, firstSeq) => {
          const ls = chunk.toString('utf8').split('\n');
          if (ls.at(-1) === '') ls.pop();
          ls.forEach((l, i) => {
            const seq = firstSeq + i;
            if (live) show(replica, Buffer.from(l), seq);
            else pending.push([replica, Buffer.from(l), seq]);
          });
        },
        stop.signal,
      )
    : undefined;
  const history = (await control(t, flags, { op: 'tail', target: what, lines: lines ?? (flags.follow ? 10 : 1000) })) as TailResult[];
  // Several replicas: interleaved by when each line arrived (as a local `logs -n`), each replica's in order.
  const byTime = history
    .flatMap((h, order) => {
      let at = 0;
      return h.lines.map((line, i) => ({ replica: h.replica, line, order, at: (at = h.times?.[i] ?? at) }));
    })
    .sort((a, b) => a.at - b.at || a.order - b.order);
  for (const x of byTime) emit(x.replica, Buffer.from(x.line));
  for (const h of history) if (h.seq !== undefined) seen.set(h.replica, h.seq);
  live = true;
  for (const [r, l, seq] of pending.splice(0)) show(r, l, seq);
  await following;
  return 0;
}
