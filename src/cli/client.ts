/**
 * How a command reaches the supervisor: its local socket when it runs on this machine, otherwise NATS
 * request/reply to the head (address from the file, or --head), with the cluster's credentials
 * (<stateDir>/run/credentials.json, or --creds FILE).
 */
import { loadCluster } from '../config/load.js';
import type { ClusterConfig } from '../config/types.js';
import { credentialsPath, readCredentials, type Credentials } from '../controlplane/credentials.js';
import { connect } from 'node:net';
import type { ClusterSnapshot } from '../api/etcd-state.js';
import { liveSupervisor, runtimePaths, type LockInfo } from '../api/runtime-files.js';
import { requestControl, type ControlRequest } from '../api/socket.js';
import { readSavedAllocation } from '../slurm/saved.js';
import { natsUrl } from '../controlplane/urls.js';
import { DynsupError } from '../util/errors.js';
import type { Flags } from './flags.js';

export interface Target {
  readonly cluster: ClusterConfig;
  /** The supervisor on this machine, if any. */
  readonly local: LockInfo | null;
}

export async function target(file: string, flags: Flags): Promise<Target> {
  let cluster = loadCluster(file, { stateDir: flags['state-dir'] as string | undefined, slurm: readSavedAllocation, checkLocalPaths: false });
  if (typeof flags.head === 'string') cluster = { ...cluster, headAddress: flags.head };
  const local = typeof flags.head === 'string' ? null : await liveSupervisor(runtimePaths(cluster.stateDir));
  return { cluster, local };
}

export async function credentials(t: Target, flags: Flags): Promise<Credentials> {
  return readCredentials(typeof flags.creds === 'string' ? flags.creds : credentialsPath(t.cluster.stateDir));
}

/** Send a control request: local socket first, then NATS. */
export async function control(t: Target, flags: Flags, req: ControlRequest, timeoutMs = 10 * 60_000): Promise<unknown> {
  if (t.local) return requestControl(runtimePaths(t.cluster.stateDir).socket, req, timeoutMs);
  if (!t.cluster.nats.enabled)
    throw new DynsupError('E_NOT_RUNNING', `cluster ${t.cluster.name} is not running on this machine (and NATS is disabled, so it cannot be reached remotely)`);
  const creds = await credentials(t, flags);
  // Loaded only when used: nats and etcd3 (with grpc) cost a local `status` a third of its time.
  const { requestOverNats } = await import('../api/nats-control.js');
  return requestOverNats(natsUrl(t.cluster), t.cluster.name, creds, req, timeoutMs);
}

/**
 * What etcd remembers of the cluster (when the supervisor does not answer); null when etcd is off, does not
 * listen (checked first, cheaply: no etcd client is loaded for a cluster that is down) or refuses to answer.
 */
export async function etcdSnapshot(t: Target, flags: Flags): Promise<ClusterSnapshot | null> {
  if (!t.cluster.etcd.enabled || !(await listening(t.cluster.headAddress, t.cluster.etcd.port))) return null;
  const creds = await readCredentials(typeof flags.creds === 'string' ? flags.creds : credentialsPath(t.cluster.stateDir), { partial: true }).catch(() => null);
  const [{ readClusterState }, { etcdAccess }, { readEtcdCa }] = await Promise.all([
    import('../api/etcd-state.js'),
    import('../controlplane/etcd-auth.js'),
    import('../controlplane/etcd-tls.js'),
  ]);
  // With controlPlane.etcd.tls: the CA in this state dir (from another machine: a copy of <stateDir>/tls/etcd/ca.pem there).
  const ca = t.cluster.etcd.tls ? await readEtcdCa(t.cluster.stateDir) : null;
  if (t.cluster.etcd.tls && !ca) return null;
  return readClusterState(etcdAccess(t.cluster, creds, ca), t.cluster.name);
}

/** Whether something accepts TCP connections at host:port (within `ms`). */
export function listening(host: string, port: number, ms = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host, port });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(ms, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}
