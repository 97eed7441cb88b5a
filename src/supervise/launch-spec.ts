/** What a replica is started with: argv, cwd and the environment contract. Pure. */
import type { ClusterConfig, NodeConfig, ReplicaPlan, WorkerGroup } from '../config/types.js';
import type { WorkerSpec } from '../agent/protocol.js';
import { etcdUrl, natsUrl } from '../controlplane/urls.js';
import type { EtcdTlsMaterial } from '../controlplane/etcd-tls.js';

/** A gang member's place in its replica: node rank, how many nodes, and where the leader (rank 0) is. */
export interface GangRank {
  readonly rank: number;
  readonly nnodes: number;
  readonly leaderHost: string;
}

/**
 * `{port}`, `{ports.<name>}`, `{index}`, `{replica}`, `{node}`, `{host}`, `{group}`, `{gpus}`, and for gangs
 * `{rank}`, `{nnodes}`, `{leader}` (a single-node replica is rank 0 of 1 and its own leader) in commands,
 * env values, cwd, hooks and health URLs.
 */
export function expandPlaceholders(s: string, replica: ReplicaPlan, host?: string, gang?: GangRank): string {
  return s.replace(/\{(port|index|replica|node|host|group|gpus|rank|nnodes|leader|ports\.[A-Za-z0-9_]+)\}/g, (whole, key: string) => {
    if (key.startsWith('ports.')) {
      const p = replica.ports?.[key.slice(6)];
      return p === undefined ? whole : String(p);
    }
    switch (key) {
      case 'host':
        return host ?? whole;
      case 'port':
        return replica.port === undefined ? whole : String(replica.port);
      case 'index':
        return String(replica.index);
      case 'replica':
        return replica.name;
      case 'node':
        return replica.node;
      case 'group':
        return replica.group;
      case 'rank':
        return String(gang?.rank ?? 0);
      case 'nnodes':
        return String(gang?.nnodes ?? 1);
      case 'leader':
        return gang?.leaderHost ?? host ?? whole;
      default:
        return replica.gpuIds.join(',');
    }
  });
}

/** Variables dynsup owns: a file's `env` cannot override these (the placement decides them). */
const OWNED = [
  'DYNSUP_CLUSTER',
  'DYNSUP_WORKER',
  'DYNSUP_GROUP',
  'DYNSUP_REPLICA_INDEX',
  'DYNSUP_NODE',
  'DYNSUP_PORT',
  'DYNSUP_NODE_RANK',
  'DYNSUP_NNODES',
  'DYNSUP_LEADER_HOST',
  'CUDA_VISIBLE_DEVICES',
];

/**
 * Credentials workers are given: NATS's (with controlPlane.nats.workerCredentials, in NATS_SERVER) and
 * etcd's `workers` user (with controlPlane.etcd.auth: ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD, as Dynamo reads them).
 */
export interface WorkerAuth {
  readonly nats?: { readonly user: string; readonly password: string } | undefined;
  readonly etcd?: { readonly user: string; readonly password: string } | undefined;
  /** controlPlane.etcd.tls: the CA's PEM and a client certificate (see etcdTlsEnv). */
  readonly etcdTls?: EtcdTlsMaterial | undefined;
}

/**
 * What a worker needs to reach an etcd with controlPlane.etcd.tls. Dynamo's etcd client reads the PEM text
 * itself from ETCD_AUTH_CA (not a path), and turns TLS on only when ETCD_AUTH_CLIENT_CERT and
 * ETCD_AUTH_CLIENT_KEY are set too; tools that want a file (etcdctl --cacert) get DYNSUP_ETCD_CA_FILE, a file
 * on the worker's node that its agent writes (WorkerSpec.files).
 */
export const ETCD_CA_FILE_VAR = 'DYNSUP_ETCD_CA_FILE';
function etcdTlsEnv(tls: EtcdTlsMaterial): Record<string, string> {
  return { ETCD_AUTH_CA: tls.ca, ETCD_AUTH_CLIENT_CERT: tls.clientCert, ETCD_AUTH_CLIENT_KEY: tls.clientKey };
}

export function workerEnv(
  cluster: ClusterConfig,
  group: WorkerGroup,
  replica: ReplicaPlan,
  host?: string,
  auth?: WorkerAuth,
  gang?: GangRank,
): Record<string, string> {
  const env: Record<string, string> = {
    NATS_SERVER: natsUrl(cluster, auth?.nats),
    // CUDA numbers GPUs fastest-first by default; PCI order matches nvidia-smi's indices, which is what
    // placement assigns. A file's env may still override it.
    CUDA_DEVICE_ORDER: 'PCI_BUS_ID',
    ETCD_ENDPOINTS: etcdUrl(cluster),
  };
  if (replica.port !== undefined) env.DYNSUP_PORT = String(replica.port);
  const named = Object.entries(replica.ports ?? {}).map(([name, port]) => [portVar(name), String(port)] as const);
  for (const [k, v] of Object.entries(group.env)) if (!OWNED.includes(k) && !named.some(([n]) => n === k)) env[k] = expandPlaceholders(v, replica, host, gang);
  for (const [k, v] of named) env[k] = v;
  Object.assign(env, {
    DYNSUP_CLUSTER: cluster.name,
    DYNSUP_WORKER: replica.name,
    DYNSUP_GROUP: group.name,
    DYNSUP_REPLICA_INDEX: String(replica.index),
    DYNSUP_NODE: replica.node,
    // Empty, not unset: an unset CUDA_VISIBLE_DEVICES means "all GPUs" to CUDA.
    CUDA_VISIBLE_DEVICES: replica.gpuIds.join(','),
  });
  if (auth?.etcd) Object.assign(env, { ETCD_AUTH_USERNAME: auth.etcd.user, ETCD_AUTH_PASSWORD: auth.etcd.password });
  if (auth?.etcdTls) Object.assign(env, etcdTlsEnv(auth.etcdTls));
  if (gang) {
    Object.assign(env, { DYNSUP_NODE_RANK: String(gang.rank), DYNSUP_NNODES: String(gang.nnodes), DYNSUP_LEADER_HOST: gang.leaderHost });
  }
  return env;
}

/** The variable of a named port: `kv` → DYNSUP_PORT_KV. */
export function portVar(name: string): string {
  return `DYNSUP_PORT_${name.toUpperCase()}`;
}

export function buildLaunchSpec(
  cluster: ClusterConfig,
  group: WorkerGroup,
  replica: ReplicaPlan,
  node?: NodeConfig,
  auth?: WorkerAuth,
  gang?: GangRank,
): WorkerSpec {
  const host = node?.address;
  return {
    argv: group.argv.map((a) => expandPlaceholders(a, replica, host, gang)),
    env: workerEnv(cluster, group, replica, host, auth, gang),
    unsetEnv: group.unsetEnv,
    ...(group.cwd === undefined ? {} : { cwd: expandPlaceholders(group.cwd, replica, host, gang) }),
    graceMs: group.stop.graceMs,
    stopSignal: group.stop.signal,
    restart: group.restart,
    ...(replica.gpuIds.length ? { gpuRelease: { gpus: replica.gpuIds, timeoutMs: group.restart.gpuReleaseTimeoutMs ?? 60_000 } } : {}),
    // Only when set: a spec without hooks hashes as before (workers of an older supervisor stay adoptable).
    ...(group.hooks?.preStart !== undefined ? { preStart: expandPlaceholders(group.hooks.preStart, replica, host) } : {}),
    ...(group.hooks?.postStop !== undefined ? { postStop: expandPlaceholders(group.hooks.postStop, replica, host) } : {}),
    ...(auth?.etcdTls ? { files: { [ETCD_CA_FILE_VAR]: auth.etcdTls.ca } } : {}),
  };
}
