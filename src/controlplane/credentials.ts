/**
 * Per-cluster control credentials: generated on the first `up`, kept in <stateDir>/run/credentials.json
 * (mode 0600). NATS is started so that only holders of the NATS password reach the cluster's account
 * (dynsup.>), and every control request must be signed with `controlKey` (api/control-auth.ts), which only this
 * file holds: that is how another user on the network, or a worker, is kept from stopping your workers.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DynsupError } from '../util/errors.js';

export interface Credentials {
  readonly natsUser: string;
  readonly natsPassword: string;
  /** Signs control requests and their answers (HMAC-SHA256 key, base64url). */
  readonly controlKey: string;
  /** etcd's `root` password, with controlPlane.etcd.auth (generated on the first up with auth on). */
  readonly etcdRootPassword?: string | undefined;
  /** The password of etcd's `workers` user, handed to workers (ETCD_AUTH_PASSWORD), with controlPlane.etcd.auth. */
  readonly etcdWorkerPassword?: string | undefined;
}

export function credentialsPath(stateDir: string): string {
  return join(stateDir, 'run', 'credentials.json');
}

const secret = () => randomBytes(24).toString('base64url');

/**
 * The cluster's credentials, created on the first `up`; what a file from an older dynsup lacks (the control
 * key, the etcd passwords when `etcd.auth` asks for them) is added, keeping what it has.
 */
export async function loadOrCreateCredentials(stateDir: string, opts: { etcdAuth?: boolean } = {}): Promise<Credentials> {
  const file = credentialsPath(stateDir);
  const existing = await readCredentials(file, { partial: true }).catch(() => null);
  const creds: Credentials = {
    natsUser: existing?.natsUser ?? 'dynsup',
    natsPassword: existing?.natsPassword ?? secret(),
    controlKey: existing?.controlKey || newControlKey(),
    etcdRootPassword: existing?.etcdRootPassword ?? (opts.etcdAuth ? secret() : undefined),
    etcdWorkerPassword: existing?.etcdWorkerPassword ?? (opts.etcdAuth ? secret() : undefined),
  };
  if (JSON.stringify(creds) === JSON.stringify(existing)) return creds;
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await writeFile(file, JSON.stringify(creds), { mode: 0o600, flag: 'w' });
  return creds;
}

/** The credentials in `file` (a copy of <stateDir>/run/credentials.json); `partial`: one without a control key too. */
export async function readCredentials(file: string, opts: { partial?: boolean } = {}): Promise<Credentials> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new DynsupError('E_AUTH', `no control credentials at ${file} (copy it from the head's stateDir, or pass --creds FILE): ${(err as Error).message}`);
  }
  let c: Partial<Credentials> | null;
  try {
    c = JSON.parse(text) as Partial<Credentials> | null;
  } catch (err) {
    throw new DynsupError('E_USAGE', `${file}: not a dynsup credentials file (${(err as Error).message})`, { cause: err });
  }
  if (typeof c?.natsUser !== 'string' || typeof c.natsPassword !== 'string') throw new DynsupError('E_USAGE', `${file}: not a dynsup credentials file`);
  if (typeof c.controlKey !== 'string' && !opts.partial) {
    throw new DynsupError(
      'E_AUTH',
      `${file}: has no control key (written by an older dynsup): copy <stateDir>/run/credentials.json from the head again (the running supervisor added one)`,
    );
  }
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  return {
    natsUser: c.natsUser,
    natsPassword: c.natsPassword,
    controlKey: str(c.controlKey) ?? '',
    etcdRootPassword: str(c.etcdRootPassword),
    etcdWorkerPassword: str(c.etcdWorkerPassword),
  };
}

/** NATS subjects of a cluster's control plane. */
export const subjects = (cluster: string) => ({
  control: `dynsup.${cluster}.control`,
  log: (replica: string) => `dynsup.${cluster}.log.${replica}`,
  logs: `dynsup.${cluster}.log.>`,
});

/** A new random control key (base64url of 32 bytes): signs control requests (api/control-auth.ts). */
export function newControlKey(): string {
  return randomBytes(32).toString('base64url');
}
