import { loadCluster } from '../config/load.js';
import { readSavedAllocation } from '../slurm/saved.js';
import { formatDuration } from '../config/duration.js';
import { liveSupervisor, readState, runtimePaths } from '../control/runtime-files.js';
import { requestControl } from '../control/socket.js';
import type { ReplicaStatus } from '../supervise/replica.js';
import type { ClusterStatus } from '../supervise/supervisor.js';
import type { Flags } from './commands.js';
import { table } from './table.js';

export async function statusCommand([file]: string[], flags: Flags): Promise<number> {
  const cluster = loadCluster(file!, { stateDir: flags['state-dir'] as string | undefined, slurm: readSavedAllocation });
  const paths = runtimePaths(cluster.stateDir);
  const live = await liveSupervisor(paths);
  let status: ClusterStatus | null = null;
  if (live) status = (await requestControl(paths.socket, { op: 'status' }, 10_000).catch(() => null)) as ClusterStatus | null;
  const snapshot = status ? null : await readState(paths);
  const shown = status ?? snapshot;
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ cluster: cluster.name, running: Boolean(live), supervisor: live, ...shown }, null, 2)}\n`);
    return live ? 0 : 1;
  }
  if (live) process.stdout.write(`cluster ${cluster.name}: supervisor pid ${live.pid} on ${live.host}, up ${formatDuration(Date.now() - live.startedAt)}\n`);
  else if (snapshot) process.stdout.write(`cluster ${cluster.name}: supervisor NOT running (pid ${snapshot.supervisor.pid} last seen ${new Date(snapshot.updatedAt).toISOString()}); last known state:\n`);
  else process.stdout.write(`cluster ${cluster.name}: not running (no state in ${cluster.stateDir})\n`);
  if (!shown) return 1;
  const now = Date.now();
  const row = (r: ReplicaStatus) => [
    r.name,
    r.node,
    r.state + (r.message && (r.state === 'backoff' || r.state === 'failed') ? ` (${r.message})` : ''),
    r.pid ? String(r.pid) : '-',
    String(r.restarts),
    r.lastExit ? (r.lastExit.signal ?? `code ${r.lastExit.code}`) : '-',
    r.gpus.length ? r.gpus.join(',') : '-',
    r.startedAt && r.pid ? formatDuration(now - r.startedAt) : '-',
  ];
  process.stdout.write('\n');
  process.stdout.write(table(['REPLICA', 'NODE', 'STATE', 'PID', 'RESTARTS', 'LAST EXIT', 'GPUS', 'UPTIME'], [...shown.controlPlane, ...shown.replicas].map(row)));
  return live ? 0 : 1;
}
