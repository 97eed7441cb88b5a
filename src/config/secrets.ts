/**
 * Which values of a cluster file are secrets, to be shown as *** in dynsup's own output and logs: values of
 * environment variables whose name looks secret, and values substituted from such variables.
 */
import type { ConfigSource } from './source.js';
import type { WorkerGroup } from './types.js';

const SECRET_NAME = /(TOKEN|SECRET|PASSW(OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH)/i;
/** Shorter values are not redacted: replacing every `1` or `yes` in the output would hide more than it protects. */
const MIN_SECRET_LENGTH = 4;

export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name);
}

export function collectSecrets(source: ConfigSource, groups: readonly WorkerGroup[]): string[] {
  const secrets = new Set<string>();
  for (const [name, value] of source.substituted) if (isSecretName(name) && value.length >= MIN_SECRET_LENGTH) secrets.add(value);
  for (const g of groups) for (const [k, v] of Object.entries(g.env)) if (isSecretName(k) && v.length >= MIN_SECRET_LENGTH) secrets.add(v);
  return [...secrets];
}
