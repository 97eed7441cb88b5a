import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Resolve a bare command name on PATH, then in the sbin dirs (Debian puts nats-server in /usr/sbin, often not on a user's PATH). */
export function which(name: string, path = process.env.PATH ?? ''): string {
  if (name.includes('/')) return name;
  for (const dir of [...path.split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin']) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      /* next */
    }
  }
  return name;
}
