/**
 * Keeping everything a worker starts inside something that can be killed as a whole.
 *
 * - cgroup v2, where the agent may create cgroups (root, or a delegated subtree): every replica gets its
 *   own cgroup; stopping ends with `cgroup.kill`, which takes descendants that called `setsid` (MPI's
 *   orted, daemons) too, and `cgroup.events` says when the last one is gone.
 * - elsewhere: the worker's process group, plus a sweep of the user's processes whose environment holds
 *   the replica's token (DYNSUP_TOKEN), which finds descendants that left the group.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const TOKEN_VAR = 'DYNSUP_TOKEN';

export interface Box {
  readonly kind: 'cgroup' | 'pgroup';
  /** argv prefix that moves the worker into the box before it execs (the pid stays the worker's). */
  wrap(argv: readonly string[]): string[];
  /** Signal everything in the box (the leader's group, and for cgroups every member). */
  signal(pgid: number | null, sig: NodeJS.Signals): void;
  /** Kill everything in the box at once. */
  kill(pgid: number | null): void;
  /** The pids now in the box (the leader's group or cgroup, and token holders). */
  pids(pgid: number | null): number[];
  /** Whether anything of the box is still alive (zombies do not count). */
  alive(pgid: number | null): boolean;
  /** Remove the box itself (once empty). */
  dispose(): void;
}

/** The cgroup v2 directory the agent creates replica cgroups under, or null when it cannot. */
export function cgroupBase(scope: string, inside = false): string | null {
  try {
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
    const line = mounts.find((l) => l.split(' - ')[1]?.startsWith('cgroup2 '));
    if (!line) return null;
    const mountPoint = line.split(' ')[4]!;
    const own =
      readFileSync('/proc/self/cgroup', 'utf8')
        .split('\n')
        .find((l) => l.startsWith('0::'))
        ?.slice(3) ?? '/';
    // As root: a tree of our own at the hierarchy's top (not inside an ssh session's scope, which logind
    // may kill with the session). Otherwise, or `inside` (a Slurm step: workers must stay in the job's
    // cgroup, which Slurm kills and accounts): below our own cgroup, which works where it was delegated.
    const candidates = process.getuid?.() === 0 && !inside ? [join(mountPoint, 'dynsup')] : [join(mountPoint, own, 'dynsup')];
    for (const c of candidates) {
      const dir = join(c, scope);
      try {
        mkdirSync(dir, { recursive: true });
        // Proof that it is usable: a leaf can be created and removed, and it has cgroup.kill (Linux >= 5.14).
        const probe = join(dir, `probe-${process.pid}`);
        mkdirSync(probe);
        const ok = existsSync(join(probe, 'cgroup.kill'));
        rmdirSync(probe);
        if (ok) return dir;
      } catch {
        /* not allowed here */
      }
    }
  } catch {
    /* no /proc */
  }
  return null;
}

export function makeBox(base: string | null, replica: string, token: string): Box {
  return base ? cgroupBox(join(base, replica.replace(/[^A-Za-z0-9_.-]/g, '_')), token) : pgroupBox(token);
}

function signalGroup(pgid: number | null, sig: NodeJS.Signals | 0): void {
  if (!pgid) return;
  try {
    process.kill(-pgid, sig);
  } catch {
    /* gone */
  }
}

function cgroupBox(dir: string, token: string): Box {
  mkdirSync(dir, { recursive: true });
  const procs = (): number[] => {
    try {
      return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    } catch {
      return [];
    }
  };
  const fallback = pgroupBox(token);
  return {
    kind: 'cgroup',
    // The shell writes its own pid into the cgroup and execs the worker: same pid, already inside.
    wrap: (argv) => ['/bin/sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', dir, ...argv],
    signal(pgid, sig) {
      signalGroup(pgid, sig);
      for (const p of procs()) {
        try {
          process.kill(p, sig);
        } catch {
          /* gone */
        }
      }
    },
    kill(pgid) {
      signalGroup(pgid, 'SIGKILL');
      try {
        writeFileSync(join(dir, 'cgroup.kill'), '1');
      } catch {
        fallback.kill(pgid);
      }
    },
    alive(pgid) {
      try {
        return /populated 1/.test(readFileSync(join(dir, 'cgroup.events'), 'utf8'));
      } catch {
        return fallback.alive(pgid);
      }
    },
    // The cgroup holds everything the worker started (as signal() and alive() rely on): no /proc sweep.
    pids: () => procs(),
    dispose() {
      try {
        rmdirSync(dir);
      } catch {
        /* still busy or gone */
      }
    },
  };
}

/** Live (non-zombie) pids of this user whose process group is `pgid` or whose environment holds the token. */
export function sweep(pgid: number | null, token: string): number[] {
  const needle = Buffer.from(`\0${TOKEN_VAR}=${token}\0`);
  const found: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return found;
  }
  for (const e of entries) {
    const c = e.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${e}/stat`, 'utf8');
    } catch {
      continue;
    }
    const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
    if (f[0] === 'Z') continue;
    if (pgid && Number(f[2]) === pgid) {
      found.push(pid);
      continue;
    }
    try {
      // A leading NUL so the first variable matches too.
      const env = Buffer.concat([Buffer.from([0]), readFileSync(`/proc/${e}/environ`), Buffer.from([0])]);
      if (env.includes(needle)) found.push(pid);
    } catch {
      /* another user's, or gone */
    }
  }
  return found;
}

function pgroupBox(token: string): Box {
  return {
    kind: 'pgroup',
    wrap: (argv) => [...argv],
    signal(pgid, sig) {
      signalGroup(pgid, sig);
      for (const p of sweep(null, token)) {
        try {
          process.kill(p, sig);
        } catch {
          /* gone */
        }
      }
    },
    kill(pgid) {
      signalGroup(pgid, 'SIGKILL');
      for (const p of sweep(pgid, token)) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    },
    alive: (pgid) => sweep(pgid, token).length > 0,
    pids: (pgid) => sweep(pgid, token),
    dispose() {},
  };
}
