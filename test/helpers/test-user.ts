/**
 * The users test sshd daemons log in as (scripts/testbed/test-user.sh creates them, idempotently):
 *  - 'clean' → dynsup-t: shell /bin/sh, an empty home, no rc files. What every test logs in as.
 *  - 'rc'    → dynsup-rc: shell /bin/bash whose ~/.bashrc and ~/.profile `sleep 1` and print a line to
 *    stdout and one to stderr: a real-world login (conda/module/pyenv init), kept slow and noisy on purpose.
 * Never this machine's root: its dotfiles (and their speed) are not the tests' business.
 */
import { execFile } from 'node:child_process';
import { chmod, chown, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const TEST_USER_SH = fileURLToPath(new URL('../../scripts/testbed/test-user.sh', import.meta.url));

export type LoginKind = 'clean' | 'rc';

export interface TestUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
}

const ensured = new Map<LoginKind, Promise<TestUser>>();

/** Creates (or repairs) the user once per process; see scripts/testbed/test-user.sh. Needs root. */
export function ensureTestUser(kind: LoginKind = 'clean'): Promise<TestUser> {
  let p = ensured.get(kind);
  if (!p) {
    p = execFileP('bash', [TEST_USER_SH, 'ensure', kind], { timeout: 90_000 }).then(({ stdout }) => {
      const [name, uid, gid, home] = stdout.trim().split(' ');
      if (!name || !home || !/^\d+$/.test(uid ?? '') || !/^\d+$/.test(gid ?? '')) throw new Error(`test-user.sh: unexpected output ${JSON.stringify(stdout)}`);
      return { name, uid: Number(uid), gid: Number(gid), home };
    });
    p.catch(() => ensured.delete(kind));
    ensured.set(kind, p);
  }
  return p;
}

/**
 * A fresh directory (under `parent`, default /tmp) owned by `user`, mode 0755: for what a command run as
 * the test user writes (reports, pid files, runtime dirs). Root (the test) still reads and writes it.
 */
export async function userDir(user: TestUser, prefix: string, parent = '/tmp'): Promise<string> {
  const dir = await mkdtemp(join(parent, prefix));
  await giveTo(user, dir);
  return dir;
}

/** Hands an existing directory (made by the test, as root) to `user`: owner, and mode 0755. */
export async function giveTo(user: TestUser, dir: string): Promise<void> {
  await chown(dir, user.uid, user.gid);
  await chmod(dir, 0o755);
}
