/**
 * Per-cluster control credentials: generated on the first `up`, kept in <stateDir>/run/credentials.json
 * (mode 0600). NATS is started so that only holders of these can publish or subscribe on dynsup.>, which
 * is how another user on the network is kept from stopping your workers.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DynsupError } from '../util/errors.js';

export interface Credentials {
  readonly natsUser: string;
  readonly natsPassword: string;
}

export function credentialsPath(stateDir: string): string {
  return join(stateDir, 'run', 'credentials.json');
}

export async function loadOrCreateCredentials(stateDir: string): Promise<Credentials> {
  const file = credentialsPath(stateDir);
  const existing = await readCredentials(file).catch(() => null);
  if (existing) return existing;
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const creds: Credentials = { natsUser: 'dynsup', natsPassword: randomBytes(24).toString('base64url') };
  await writeFile(file, JSON.stringify(creds), { mode: 0o600, flag: 'w' });
  return creds;
}

export async function readCredentials(file: string): Promise<Credentials> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new DynsupError('E_NOT_RUNNING', `no control credentials at ${file} (copy it from the head's stateDir, or pass --creds FILE): ${(err as Error).message}`);
  }
  let c: Partial<Credentials> | null;
  try {
    c = JSON.parse(text) as Partial<Credentials> | null;
  } catch (err) {
    throw new DynsupError('E_USAGE', `${file}: not a dynsup credentials file (${(err as Error).message})`, { cause: err });
  }
  if (typeof c?.natsUser !== 'string' || typeof c.natsPassword !== 'string') throw new DynsupError('E_USAGE', `${file}: not a dynsup credentials file`);
  return { natsUser: c.natsUser, natsPassword: c.natsPassword };
}

/** NATS subjects of a cluster's control plane. */
export const subjects = (cluster: string) => ({
  control: `dynsup.${cluster}.control`,
  log: (replica: string) => `dynsup.${cluster}.log.${replica}`,
  logs: `dynsup.${cluster}.log.>`,
});
