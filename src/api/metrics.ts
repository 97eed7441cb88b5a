/** Prometheus text exposition of the supervisor's state, served at http://<head.address>:<metrics.port>/metrics. */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { constants } from 'node:os';
import type { ReplicaLogStats } from '../logs/replica-log.js';
import type { ReplicaState, ReplicaStatus } from '../supervise/replica.js';
import type { ClusterStatus } from '../supervise/supervisor.js';

const STATES: readonly ReplicaState[] = ['pending', 'starting', 'running', 'ready', 'backoff', 'blocked', 'stopping', 'stopped', 'failed'];

function label(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

export function renderMetrics(status: ClusterStatus, logs: ReadonlyMap<string, ReplicaLogStats>): string {
  const c = `cluster="${label(status.cluster)}"`;
  const out: string[] = [];
  const metric = (name: string, type: string, help: string, rows: string[]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...rows);
  };
  metric(
    'dynsup_replicas',
    'gauge',
    'Replicas by group and state.',
    [...new Set(status.replicas.map((r) => r.group))].flatMap((g) =>
      STATES.map((s) => `dynsup_replicas{${c},group="${label(g)}",state="${s}"} ${status.replicas.filter((r) => r.group === g && r.state === s).length}`),
    ),
  );
  metric(
    'dynsup_replica_up',
    'gauge',
    '1 when the replica is running or ready.',
    status.replicas.map(
      (r) => `dynsup_replica_up{${c},replica="${label(r.name)}",node="${label(r.node)}"} ${r.state === 'running' || r.state === 'ready' ? 1 : 0}`,
    ),
  );
  metric(
    'dynsup_replica_restarts_total',
    'counter',
    'Restarts of each replica (crashes and health failures).',
    status.replicas.map((r) => `dynsup_replica_restarts_total{${c},replica="${label(r.name)}"} ${r.restarts}`),
  );
  metric(
    'dynsup_replica_last_exit_code',
    'gauge',
    'Exit code of the last run (128+N when killed by signal N; -1 before any exit).',
    status.replicas.map(
      (r) => `dynsup_replica_last_exit_code{${c},replica="${label(r.name)}"} ${r.lastExit ? (r.lastExit.code ?? 128 + signalNumber(r.lastExit.signal)) : -1}`,
    ),
  );
  metric(
    'dynsup_control_plane_up',
    'gauge',
    '1 when the service answers its health check.',
    status.controlPlane.map((s) => `dynsup_control_plane_up{${c},service="${label(s.name)}"} ${s.state === 'ready' ? 1 : 0}`),
  );
  metric(
    'dynsup_control_plane_restarts_total',
    'counter',
    'Restarts of NATS and etcd.',
    status.controlPlane.map((s) => `dynsup_control_plane_restarts_total{${c},service="${label(s.name)}"} ${s.restarts}`),
  );
  metric(
    'dynsup_log_lines_total',
    'counter',
    'Lines written by each replica.',
    [...logs].map(([r, s]) => `dynsup_log_lines_total{${c},replica="${label(r)}"} ${s.lines}`),
  );
  metric(
    'dynsup_log_bytes_total',
    'counter',
    'Bytes written by each replica.',
    [...logs].map(([r, s]) => `dynsup_log_bytes_total{${c},replica="${label(r)}"} ${s.bytes}`),
  );
  metric(
    'dynsup_log_write_errors_total',
    'counter',
    'Failed log file writes (disk full...).',
    [...logs].map(([r, s]) => `dynsup_log_write_errors_total{${c},replica="${label(r)}"} ${s.writeErrors}`),
  );
  // GPU telemetry (nvidia-smi on the node): only replicas that have it; nothing at all without nvidia-smi.
  const withGpu = status.replicas.filter((r) => r.gpu);
  if (withGpu.length) {
    const per = (f: (g: NonNullable<ReplicaStatus['gpu']>['gpus'][number]) => number | null, unit: (v: number) => number) =>
      withGpu.flatMap((r) =>
        r.gpu!.gpus.flatMap((g) => (f(g) === null ? [] : [`{${c},replica="${label(r.name)}",node="${label(r.node)}",gpu="${g.index}"} ${unit(f(g)!)}`])),
      );
    metric(
      'dynsup_replica_gpu_memory_used_bytes',
      'gauge',
      "GPU memory used on each of the replica's GPUs (all processes).",
      per(
        (g) => g.memoryUsedMiB,
        (v) => v * 2 ** 20,
      ).map((l) => `dynsup_replica_gpu_memory_used_bytes${l}`),
    );
    metric(
      'dynsup_replica_gpu_memory_total_bytes',
      'gauge',
      "GPU memory of each of the replica's GPUs.",
      per(
        (g) => g.memoryTotalMiB,
        (v) => v * 2 ** 20,
      ).map((l) => `dynsup_replica_gpu_memory_total_bytes${l}`),
    );
    metric(
      'dynsup_replica_gpu_utilization_ratio',
      'gauge',
      "Utilisation of each of the replica's GPUs (0-1).",
      per(
        (g) => g.utilizationPct,
        (v) => v / 100,
      ).map((l) => `dynsup_replica_gpu_utilization_ratio${l}`),
    );
    metric(
      'dynsup_replica_gpu_foreign_processes',
      'gauge',
      "Compute processes on the replica's GPUs that are not its own (a leak, another user).",
      withGpu.map((r) => `dynsup_replica_gpu_foreign_processes{${c},replica="${label(r.name)}",node="${label(r.node)}"} ${r.gpu!.others.length}`),
    );
  }
  return `${out.join('\n')}\n`;
}

function signalNumber(sig: string | null): number {
  return sig ? (constants.signals[sig as NodeJS.Signals] ?? 0) : 0;
}

/** A handler for more routes on the same server (the web view): true when it answered the request. */
export type HttpRoutes = (req: IncomingMessage, res: ServerResponse) => boolean;

/** The supervisor's HTTP server: /metrics (unless `render` is null) and whatever `routes` answer. */
export async function serveMetrics(host: string, port: number, render: (() => string) | null, routes?: HttpRoutes): Promise<Server> {
  const server = createServer((req, res) => {
    if (render && (req.url === '/metrics' || req.url?.startsWith('/metrics?'))) {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(render());
    } else if (!routes?.(req, res)) {
      res.writeHead(404).end(render ? 'see /metrics\n' : 'not found\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  server.unref();
  return server;
}
