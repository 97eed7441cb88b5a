import { setTimeout as sleep } from 'node:timers/promises';
import { formatDuration } from '../config/duration.js';
import { hostname } from 'node:os';
import { ControlAuthError } from '../api/control-auth.js';
import { readLock, readState, runtimePaths } from '../api/runtime-files.js';
import { pidAlive } from '../util/process.js';
import type { ReplicaStatus } from '../supervise/replica.js';
import type { ClusterStatus } from '../supervise/supervisor.js';
import { DynsupError, errorMessage } from '../util/errors.js';
import { control, etcdSnapshot, listening, target, type Target } from './client.js';
import type { Flags } from './flags.js';
import { table } from './table.js';

/**
 * What `status` found. `running`: the supervisor answered. `unauthorised`: it runs, but refuses (or this
 * machine lacks) the credentials. `unknown`: something runs at the head that cannot be asked without them.
 * `stopped`: it ran and is gone (the last known state follows). `never-started`: nothing of it on this
 * machine. `not-running`: nothing answers at the head given with --head.
 */
export type ClusterState = 'running' | 'unauthorised' | 'unknown' | 'stopped' | 'never-started' | 'not-running';

export interface Shown {
  state: ClusterState;
  source: 'supervisor' | 'etcd' | 'state-file' | 'none';
  headline: string;
  status: ClusterStatus | null;
  supervisor: unknown;
}

/** Exit code of `status` in each state: 0 running, 2 when credentials are what is wrong, 1 otherwise. */
const EXIT: Record<ClusterState, number> = { running: 0, unauthorised: 2, unknown: 2, stopped: 1, 'never-started': 1, 'not-running': 1 };

/** Ask the supervisor; if it does not answer, tell why from etcd and the local runtime files, with the last known state. */
async function collect(t: Target, flags: Flags): Promise<Shown> {
  const name = t.cluster.name;
  try {
    const status = (await control(t, flags, { op: 'status' }, 10_000)) as ClusterStatus;
    const who = t.local
      ? `pid ${t.local.pid} on ${t.local.host}, up ${formatDuration(Date.now() - t.local.startedAt)}`
      : `reached over NATS at ${t.cluster.headAddress}:${t.cluster.nats.port}`;
    return { state: 'running', source: 'supervisor', headline: `cluster ${name}: supervisor ${who}`, status, supervisor: t.local };
  } catch (err) {
    const why = errorMessage(err);
    const paths = runtimePaths(t.cluster.stateDir);
    const etcd = await etcdSnapshot(t, flags).catch(() => null);
    if (err instanceof DynsupError && err.code === 'E_AUTH') {
      // Does it run? The supervisor refused us (so it runs), or its lock here, or its leader key's live lease, says so.
      const lock = await readLock(paths);
      const leader = etcd?.leader;
      const who =
        lock && lock.host === hostname() && pidAlive(lock.pid)
          ? lock
          : leader && (leader.host === hostname() ? pidAlive(leader.pid) : leader.leased)
            ? leader
            : null;
      if (who || err instanceof ControlAuthError) {
        return {
          state: 'unauthorised',
          source: 'none',
          headline: `cluster ${name}: supervisor running${who ? ` (pid ${who.pid} on ${who.host})` : ''}, but not to be controlled from here: ${why}`,
          status: null,
          supervisor: who,
        };
      }
      if (t.cluster.nats.enabled && (await listening(t.cluster.headAddress, t.cluster.nats.port))) {
        return {
          state: 'unknown',
          source: 'none',
          headline: `cluster ${name}: NATS answers at ${t.cluster.headAddress}:${t.cluster.nats.port}, but without credentials the supervisor cannot be asked: ${why}`,
          status: null,
          supervisor: null,
        };
      }
    }
    if (etcd && etcd.replicas.length) {
      const cp = etcd.replicas.filter((r) => r.group === 'controlPlane');
      return {
        state: 'stopped',
        source: 'etcd',
        headline: `cluster ${name}: supervisor NOT running (${why}); last known state from etcd${etcd.leader ? ` (last supervisor pid ${etcd.leader.pid} on ${etcd.leader.host})` : ''}:`,
        status: { cluster: name, controlPlane: cp, replicas: etcd.replicas.filter((r) => r.group !== 'controlPlane') },
        supervisor: etcd.leader,
      };
    }
    if (typeof flags.head === 'string') {
      return {
        state: 'not-running',
        source: 'none',
        headline: `cluster ${name}: not running at ${t.cluster.headAddress} (${why})`,
        status: null,
        supervisor: null,
      };
    }
    const snap = await readState(paths);
    if (snap) {
      return {
        state: 'stopped',
        source: 'state-file',
        headline: `cluster ${name}: stopped: supervisor NOT running (pid ${snap.supervisor.pid} last seen ${new Date(snap.updatedAt).toISOString()}); last known state:`,
        status: snap,
        supervisor: snap.supervisor,
      };
    }
    return {
      state: 'never-started',
      source: 'none',
      headline: `cluster ${name}: never started on this machine (no state in ${t.cluster.stateDir}); if it runs elsewhere: dynsup status ${t.cluster.file} --head ADDR --creds FILE`,
      status: null,
      supervisor: null,
    };
  }
}

const gib = (mib: number | null): string => (mib === null ? '?' : (mib / 1024).toFixed(1));

/** GPU MEM, GPU UTIL and OTHER PROCS cells (telemetry from the node's nvidia-smi). */
export function gpuCells(r: ReplicaStatus): [string, string, string] {
  const g = r.gpu;
  if (!g) return ['-', '-', '-'];
  return [
    `${gib(g.memoryUsedMiB)}/${gib(g.memoryTotalMiB)} GiB`,
    g.utilizationPct === null ? '?' : `${g.utilizationPct}%`,
    g.others.length
      ? g.others.map((p) => `${p.pid}@${p.gpu}${p.usedMemoryMiB === null ? '' : ` ${gib(p.usedMemoryMiB)}GiB`}${p.owner ? ` (${p.owner})` : ''}`).join(', ')
      : '-',
  ];
}

export function render(shown: Shown): string {
  let out = `${shown.headline}\n`;
  if (!shown.status) return out;
  const now = Date.now();
  const row = (r: ReplicaStatus) => [
    r.name,
    r.node,
    r.state +
      (r.message && (r.state === 'backoff' || r.state === 'failed' || r.state === 'blocked' || r.state === 'starting')
        ? ` (${r.message})`
        : r.adopted
          ? ' (adopted)'
          : ''),
    r.pid ? String(r.pid) : '-',
    String(r.restarts),
    r.lastExit ? `${r.lastExit.signal ?? `code ${r.lastExit.code}`}${r.lastExit.reason ? ` (${r.lastExit.reason})` : ''}` : '-',
    r.gpus.length ? r.gpus.join(',') : '-',
    r.startedAt && r.pid ? formatDuration(now - r.startedAt) : '-',
  ];
  const all = [...shown.status.controlPlane, ...shown.status.replicas];
  // GPU telemetry columns only when some node has nvidia-smi (and replicas GPUs).
  const gpu = all.some((r) => r.gpu);
  const header = ['REPLICA', 'NODE', 'STATE', 'PID', 'RESTARTS', 'LAST EXIT', 'GPUS', 'UPTIME', ...(gpu ? ['GPU MEM', 'GPU UTIL', 'OTHER PROCS'] : [])];
  // A gang's row, then one row per member (node, pid, state), indented under it.
  const rankRows = (r: ReplicaStatus) =>
    (r.ranks ?? []).map((k) => [`  ${k.name}`, k.node, k.state, k.pid ? String(k.pid) : '-', ...header.slice(4).map(() => '')]);
  out += `\n${table(
    header,
    all.flatMap((r) => [[...row(r), ...(gpu ? gpuCells(r) : [])], ...rankRows(r)]),
  )}`;
  return out;
}

function json(t: Target, shown: Shown, indent?: number): string {
  const { state, source, supervisor, status, headline } = shown;
  return JSON.stringify({ cluster: t.cluster.name, running: state === 'running', state, source, message: headline, supervisor, ...status }, null, indent);
}

export async function statusCommand([file]: string[], flags: Flags): Promise<number> {
  const t = await target(file!, flags);
  if (flags.watch) {
    // On a terminal: redraw in place until interrupted. Elsewhere (a pipe, a file): one report after the
    // other, without screen-clearing escapes (with --json: one JSON object per line).
    const tty = Boolean(process.stdout.isTTY);
    for (;;) {
      const now = await target(file!, flags);
      const shown = await collect(now, flags);
      if (flags.json) process.stdout.write(`${json(now, shown)}\n`);
      else if (tty) process.stdout.write(`\x1b[H\x1b[2J${render(shown)}\n(every 1s; Ctrl-C to quit)\n`);
      else process.stdout.write(`${new Date().toISOString()}\n${render(shown)}\n`);
      await sleep(1000);
    }
  }
  const shown = await collect(t, flags);
  process.stdout.write(flags.json ? `${json(t, shown, 2)}\n` : render(shown));
  return EXIT[shown.state];
}
