import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadCluster } from '../config/load.js';
import { readSavedAllocation } from '../slurm/saved.js';
import { hostname } from 'node:os';
import { liveSupervisor, readLock, runtimePaths } from '../api/runtime-files.js';
import { pidAlive } from '../util/process.js';
import { stopJob } from '../slurm/job.js';
import { requestControl } from '../api/socket.js';
import type { Flags } from './flags.js';
import { cleanupLeftovers } from '../daemon/supervisor-process.js';
import { control, target } from './client.js';
import type { ClusterConfig } from '../config/types.js';

function maxGraceMs(cluster: ClusterConfig): number {
  return Math.max(10_000, ...cluster.groups.map((g) => g.stop.graceMs));
}

export async function downCommand([file]: string[], flags: Flags): Promise<number> {
  const cluster = loadCluster(file!, { stateDir: flags['state-dir'] as string | undefined, slurm: readSavedAllocation, checkLocalPaths: false });
  const paths = runtimePaths(cluster.stateDir);
  const live = await liveSupervisor(paths);
  if (live) {
    process.stderr.write(`stopping cluster ${cluster.name} (supervisor pid ${live.pid})...\n`);
    await requestControl(paths.socket, { op: 'down' }, 10 * 60_000).catch(() => undefined);
    // Wait for the supervisor to finish, so that "down" returning means "nothing runs".
    const deadline = Date.now() + maxGraceMs(cluster) + 60_000;
    while (pidAlive(live.pid) && Date.now() < deadline) await sleep(50);
    if (pidAlive(live.pid)) {
      process.stderr.write(`dynsup down: the supervisor (pid ${live.pid}) is still stopping; see ${paths.logDir}/dynsup.log\n`);
      return 1;
    }
    const unreachable = await unreachableNodes(paths.logDir, live.startedAt);
    if (unreachable) process.stderr.write(`${unreachable}\n`);
    // The supervisor shut every agent it could reach down itself.
    process.stderr.write(`cluster ${cluster.name} is down\n`);
    return 0;
  } else if (typeof flags.head === 'string') {
    // From another machine: ask over NATS, then wait until the supervisor stops answering.
    const t = await target(file!, flags);
    process.stderr.write(`stopping cluster ${cluster.name} at ${t.cluster.headAddress}...\n`);
    await control(t, flags, { op: 'down' });
    const deadline = Date.now() + maxGraceMs(cluster) + 60_000;
    while (
      Date.now() < deadline &&
      (await control(t, flags, { op: 'status' }, 2000).then(
        () => true,
        () => false,
      ))
    )
      await sleep(200);
    process.stderr.write(`cluster ${cluster.name} is down\n`);
    return 0;
  } else {
    const lock = await readLock(paths);
    const job = cluster.allocation && !cluster.allocation.preview ? cluster.allocation.jobId : undefined;
    if (job && lock && lock.host !== hostname()) {
      // Slurm mode, asked from another machine (a login node): the supervisor is job ${job}'s batch step.
      process.stderr.write(`stopping cluster ${cluster.name}: asking Slurm job ${job} (supervisor on ${lock.host}) to stop...\n`);
      if (!(await stopJob(job, 10 * 60_000))) process.stderr.write(`Slurm job ${job} is not running\n`);
    } else {
      process.stderr.write(`no supervisor running for cluster ${cluster.name}; cleaning up anything left behind\n`);
    }
  }
  // Belt and braces: any agent of this cluster still running (a supervisor that crashed) stops its workers.
  const missed = await cleanupLeftovers(cluster);
  // A crashed supervisor's lock, socket and last state go too (unless it runs elsewhere: a Slurm batch host).
  const lock = await readLock(paths);
  if (!lock || (lock.host === hostname() && !pidAlive(lock.pid))) {
    await Promise.all([paths.lock, paths.socket, paths.state].map((f) => rm(f, { force: true })));
  }
  if (missed.length) {
    process.stderr.write(`could not reach node(s) ${missed.join(', ')}: their workers stop by themselves within the lease (${cluster.leaseMs / 1000}s)\n`);
  }
  process.stderr.write(`cluster ${cluster.name} is down\n`);
  return 0;
}

/** The supervisor's own word on nodes it could not reach while stopping (its event log), if any. */
async function unreachableNodes(logDir: string, since: number): Promise<string | null> {
  const text = await readFile(join(logDir, 'dynsup.log'), 'utf8').catch(() => '');
  for (const line of text.split('\n').reverse()) {
    try {
      const e = JSON.parse(line) as { time?: number; msg?: string };
      if ((e.time ?? 0) < since) break;
      if (e.msg?.startsWith('could not reach node')) return e.msg;
    } catch {
      /* not JSON */
    }
  }
  return null;
}
