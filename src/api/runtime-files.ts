/**
 * The supervisor's runtime files under <stateDir>/run: a lock naming the running supervisor (one per
 * cluster state dir), the last known state of every replica (readable when the supervisor is gone),
 * and the control socket.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { DynsupError } from '../util/errors.js';
import { pidAlive } from '../util/process.js';
import type { ClusterStatus } from '../supervise/supervisor.js';

export interface RuntimePaths {
  readonly runDir: string;
  readonly lock: string;
  readonly state: string;
  readonly socket: string;
  readonly logDir: string;
}

export function runtimePaths(stateDir: string): RuntimePaths {
  const runDir = join(stateDir, 'run');
  return {
    runDir,
    lock: join(runDir, 'supervisor.json'),
    state: join(runDir, 'state.json'),
    socket: join(runDir, 'control.sock'),
    logDir: join(stateDir, 'logs'),
  };
}

export interface LockInfo {
  readonly pid: number;
  readonly host: string;
  readonly startedAt: number;
  readonly file: string;
}

export interface StateSnapshot extends ClusterStatus {
  readonly supervisor: LockInfo;
  readonly updatedAt: number;
}

export async function readLock(paths: RuntimePaths): Promise<LockInfo | null> {
  try {
    return JSON.parse(await readFile(paths.lock, 'utf8')) as LockInfo;
  } catch {
    return null;
  }
}

/** The lock's supervisor if it is alive on this host; null when there is none or it died. */
export async function liveSupervisor(paths: RuntimePaths): Promise<LockInfo | null> {
  const lock = await readLock(paths);
  return lock && lock.host === hostname() && pidAlive(lock.pid) ? lock : null;
}

/** Take the lock, or throw E_ALREADY_RUNNING naming the running supervisor. Returns whether a stale lock was replaced. */
export async function acquireLock(paths: RuntimePaths, file: string): Promise<{ stale: LockInfo | null }> {
  await mkdir(paths.runDir, { recursive: true, mode: 0o700 });
  const info: LockInfo = { pid: process.pid, host: hostname(), startedAt: Date.now(), file };
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(paths.lock, 'wx', 0o600);
      await fh.writeFile(JSON.stringify(info));
      await fh.close();
      return { stale: null };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const held = await readLock(paths);
    if (held && held.host === hostname() && pidAlive(held.pid)) {
      throw new DynsupError(
        'E_ALREADY_RUNNING',
        `cluster already running: supervisor pid ${held.pid} on ${held.host} (started ${new Date(held.startedAt).toISOString()}, state dir ${paths.runDir})`,
      );
    }
    await rm(paths.lock, { force: true });
    if (attempt === 0 && held) {
      const fh = await open(paths.lock, 'wx', 0o600).catch(() => null);
      if (fh) {
        await fh.writeFile(JSON.stringify(info));
        await fh.close();
        return { stale: held };
      }
    }
  }
  throw new DynsupError('E_ALREADY_RUNNING', `could not take the supervisor lock ${paths.lock}`);
}

export async function releaseLock(paths: RuntimePaths): Promise<void> {
  const held = await readLock(paths);
  if (held?.pid === process.pid) await rm(paths.lock, { force: true });
}

export async function writeState(paths: RuntimePaths, snapshot: StateSnapshot): Promise<void> {
  const tmp = `${paths.state}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(snapshot), { mode: 0o600 });
  await rename(tmp, paths.state);
}

export async function readState(paths: RuntimePaths): Promise<StateSnapshot | null> {
  try {
    return JSON.parse(await readFile(paths.state, 'utf8')) as StateSnapshot;
  } catch {
    return null;
  }
}
