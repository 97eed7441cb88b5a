import { setTimeout as sleep } from 'node:timers/promises';
import { formatDuration } from '../config/duration.js';
import { readState, runtimePaths } from '../control/runtime-files.js';
import type { ReplicaStatus } from '../supervise/replica.js';
import type { ClusterStatus } from '../supervise/supervisor.js';
import { errorMessage } from '../util/errors.js';
import { control, etcdSnapshot, target, type Target } from './client.js';
import type { Flags } from './flags.js';
import { table } from './table.js';

export interface Shown {
  running: boolean;
  source: 'supervisor' | 'etcd' | 'state-file' | 'none';
  headline: string;
  status: ClusterStatus | null;
  supervisor: unknown;
}

/** Ask the supervisor; if it does not answer, fall back to etcd, then to the local state file. */
async function collect(t: Target, flags: Flags): Promise<Shown> {
  const name = t.cluster.name;
  try {
    const status = (await control(t, flags, { op: 'status' }, 10_000)) as ClusterStatus;
    const who = t.local ? `pid ${t.local.pid} on ${t.local.host}, up ${formatDuration(Date.now() - t.local.startedAt)}` : `reached over NATS at ${t.cluster.headAddress}:${t.cluster.nats.port}`;
    return { running: true, source: 'supervisor', headline: `cluster ${name}: supervisor ${who}`, status, supervisor: t.local };
  } catch (err) {
    const why = errorMessage(err);
    const etcd = await etcdSnapshot(t).catch(() => null);
    if (etcd && etcd.replicas.length) {
      const cp = etcd.replicas.filter((r) => r.group === 'controlPlane');
      return {
        running: false,
        source: 'etcd',
        headline: `cluster ${name}: supervisor NOT running (${why}); last known state from etcd${etcd.leader ? ` (last supervisor pid ${etcd.leader.pid} on ${etcd.leader.host})` : ''}:`,
        status: { cluster: name, controlPlane: cp, replicas: etcd.replicas.filter((r) => r.group !== 'controlPlane') },
        supervisor: etcd.leader,
      };
    }
    const snap = await readState(runtimePaths(t.cluster.stateDir));
    if (snap) {
      return {
        running: false,
        source: 'state-file',
        headline: `cluster ${name}: supervisor NOT running (pid ${snap.supervisor.pid} last seen ${new Date(snap.updatedAt).toISOString()}); last known state:`,
        status: snap,
        supervisor: snap.supervisor,
      };
    }
    return { running: false, source: 'none', headline: `cluster ${name}: not running (${why})`, status: null, supervisor: null };
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
    g.others.length ? g.others.map((p) => `${p.pid}@${p.gpu}${p.usedMemoryMiB === null ? '' : ` ${gib(p.usedMemoryMiB)}GiB`}${p.owner ? ` (${p.owner})` : ''}`).join(', ') : '-',
  ];
}

export function render(shown: Shown): string {
  let out = `${shown.headline}\n`;
  if (!shown.status) return out;
  const now = Date.now();
  const row = (r: ReplicaStatus) => [
    r.name,
    r.node,
    r.state + (r.message && (r.state === 'backoff' || r.state === 'failed') ? ` (${r.message})` : r.adopted ? ' (adopted)' : ''),
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
  const rankRows = (r: ReplicaStatus) => (r.ranks ?? []).map((k) => [`  ${k.name}`, k.node, k.state, k.pid ? String(k.pid) : '-', ...header.slice(4).map(() => '')]);
  out += `\n${table(header, all.flatMap((r) => [[...row(r), ...(gpu ? gpuCells(r) : [])], ...rankRows(r)]))}`;
  return out;
}

export async function statusCommand([file]: string[], flags: Flags): Promise<number> {
  const t = await target(file!, flags);
  if (flags.watch) {
    // Redraw in place until interrupted.
    for (;;) {
      const shown = await collect(await target(file!, flags), flags);
      process.stdout.write(`\x1b[H\x1b[2J${render(shown)}\n(every 1s; Ctrl-C to quit)\n`);
      await sleep(1000);
    }
  }
  const shown = await collect(t, flags);
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ cluster: t.cluster.name, running: shown.running, source: shown.source, supervisor: shown.supervisor, ...shown.status }, null, 2)}\n`);
  } else process.stdout.write(render(shown));
  return shown.running ? 0 : 1;
}
