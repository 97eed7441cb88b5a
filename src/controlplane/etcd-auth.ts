/**
 * etcd's authentication (controlPlane.etcd.auth): users and roles in the etcd dynsup starts, so that only
 * holders of the cluster's credentials can touch dynsup's keys (dynsup/<cluster>/...: the leader key, the
 * replicas' states), workers can use every other key, and anonymous clients are refused.
 *
 *   root     the root role: dynsup itself (the supervisor, `status` from another machine)
 *   workers  read and write on every key outside dynsup/ (ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD of workers)
 *
 * Passwords are generated on the first `up` with auth on, into the credentials file. The setup is done on
 * every `up` (idempotent): it turns authentication on in a data dir that has it off, and off again when the
 * file no longer asks for it (with the root password from the credentials file).
 */
import { Etcd3, Range } from 'etcd3';
import type { ClusterConfig } from '../config/types.js';
import type { Credentials } from './credentials.js';
import { etcdUrl } from './urls.js';
import { caCredentials } from './etcd-tls.js';
import { DynsupError, errorMessage } from '../util/errors.js';

/** How dynsup reaches its etcd: the endpoint, root's password when authentication is on, the CA with TLS. */
export interface EtcdAccess {
  readonly endpoint: string;
  readonly auth?: { readonly username: string; readonly password: string } | undefined;
  /** PEM of the cluster's etcd CA (controlPlane.etcd.tls): the server is verified against it alone. */
  readonly ca?: Buffer | undefined;
}

export const ETCD_WORKER_USER = 'workers';

export function etcdAccess(
  cluster: ClusterConfig,
  creds: Pick<Credentials, 'etcdRootPassword'> | null | undefined,
  ca?: Buffer | null | undefined,
): EtcdAccess {
  const password = cluster.etcd.auth ? creds?.etcdRootPassword : undefined;
  return {
    endpoint: etcdUrl(cluster),
    ...(password ? { auth: { username: 'root', password } } : {}),
    ...(cluster.etcd.tls && ca ? { ca } : {}),
  };
}

/** What workers connect to etcd with (null without authentication). */
export function etcdWorkerAuth(
  cluster: ClusterConfig,
  creds: Pick<Credentials, 'etcdWorkerPassword'> | null | undefined,
): { user: string; password: string } | null {
  return cluster.etcd.auth && creds?.etcdWorkerPassword ? { user: ETCD_WORKER_USER, password: creds.etcdWorkerPassword } : null;
}

const NOT_ENABLED = /authentication is not enabled/;
const REFUSED_ANONYMOUS = /user name is empty|permission denied|invalid auth token/;

/**
 * Make the running etcd's authentication what the file says: on (users, roles, then auth enabled; the
 * workers' password set to the credentials' one) or off. Returns what was done, for the event log.
 */
export async function ensureEtcdAuth(cluster: ClusterConfig, creds: Credentials, ca?: Buffer | null): Promise<string | null> {
  const endpoint = etcdUrl(cluster);
  const rootPassword = creds.etcdRootPassword;
  const tls = caCredentials(cluster.etcd.tls ? ca : null);
  const asRoot = rootPassword ? new Etcd3({ hosts: endpoint, dialTimeout: 3000, ...tls, auth: { username: 'root', password: rootPassword } }) : null;
  const anonymous = new Etcd3({ hosts: endpoint, dialTimeout: 3000, ...tls });
  try {
    // Is authentication on? Anonymous requests are refused when it is.
    const on = await anonymous
      .get('dynsup/')
      .exists()
      .then(
        () => false,
        (err: unknown) => {
          if (REFUSED_ANONYMOUS.test(errorMessage(err))) return true;
          throw err;
        },
      );
    if (!cluster.etcd.auth) {
      if (!on) return null;
      if (!asRoot) {
        throw new DynsupError(
          'E_CONTROL_PLANE',
          `etcd's data dir (${cluster.stateDir}/etcd) has authentication on, controlPlane.etcd.auth is off, and the credentials file has no root password to turn it off: set controlPlane.etcd.auth: true, or remove ${cluster.stateDir}/etcd`,
        );
      }
      await rootCall(asRoot, cluster, (c) => c.auth.authDisable({}));
      return 'etcd authentication turned off (controlPlane.etcd.auth is false; the data dir had it on)';
    }
    if (!asRoot || !creds.etcdWorkerPassword) throw new DynsupError('E_INTERNAL', 'etcd auth: the credentials have no etcd passwords');
    const workerPassword = creds.etcdWorkerPassword;
    if (on) {
      // Users and roles exist already (this setup made them): bring the workers' password up to date.
      await rootCall(asRoot, cluster, (c) => c.user(ETCD_WORKER_USER).setPassword(workerPassword));
      return null;
    }
    const existing = (p: Promise<unknown>) => p.catch((err: unknown) => (/already exists/.test(errorMessage(err)) ? undefined : Promise.reject(err)));
    await existing(anonymous.role('root').create());
    await existing(anonymous.user('root').create(rootPassword!));
    await anonymous.user('root').setPassword(rootPassword!);
    await anonymous.user('root').addRole('root');
    await existing(anonymous.role(ETCD_WORKER_USER).create());
    // Every key below dynsup/ and every key above it (dynsup0: '/' + 1): all but dynsup's own.
    await anonymous.role(ETCD_WORKER_USER).grant([
      { permission: 'Readwrite', range: new Range(Buffer.from([0]), 'dynsup/') },
      { permission: 'Readwrite', range: new Range('dynsup0', Buffer.from([0])) },
    ]);
    await existing(anonymous.user(ETCD_WORKER_USER).create(workerPassword));
    await anonymous.user(ETCD_WORKER_USER).setPassword(workerPassword);
    await anonymous.user(ETCD_WORKER_USER).addRole(ETCD_WORKER_USER);
    await anonymous.auth.authEnable({});
    return `etcd authentication turned on: dynsup uses user root, workers user ${ETCD_WORKER_USER} (everything but dynsup/); anonymous clients are refused`;
  } finally {
    asRoot?.close();
    anonymous.close();
  }
}

async function rootCall<T>(root: Etcd3, cluster: ClusterConfig, fn: (c: Etcd3) => Promise<T>): Promise<T> {
  try {
    return await fn(root);
  } catch (err) {
    if (/authentication failed|invalid user ID or password/.test(errorMessage(err))) {
      throw new DynsupError(
        'E_CONTROL_PLANE',
        `etcd refuses the root password of ${cluster.stateDir}/run/credentials.json (its data dir ${cluster.stateDir}/etcd was set up with other credentials): restore that credentials file, or remove ${cluster.stateDir}/etcd`,
        { cause: err },
      );
    }
    if (NOT_ENABLED.test(errorMessage(err))) return undefined as T;
    throw err;
  }
}
