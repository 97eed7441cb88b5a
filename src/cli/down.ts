import { setTimeout as sleep } from 'node:timers/promises';
import { loadCluster } from '../config/load.js';
import { readSavedAllocation } from '../slurm/saved.js';
import { hostname } from 'node:os';
import { liveSupervisor, pidAlive, readLock, runtimePaths } from '../control/runtime-files.js';
import { stopJob } from '../slurm/job.js';
import { requestControl } from '../control/socket.js';
import type { Flags } from './commands.js';
import { cleanupLeftovers } from './up.js';
import { control, target } from './client.js';
import type { ClusterConfig } from '../config/types.js';

function maxGraceMs(cluster: ClusterConfig): number {
  return Math.max(10_000, ...cluster.groups.map((g) => g.stop.graceMs));
}

export async function downCommand([file]: string[], flags: Flags): Promise<number> {
  const cluster = loadCluster(file!, { stateDir: flags['state-dir'] as string | undefined, slurm: readSavedAllocation });
  const paths = runtimePaths(cluster.stateDir);
  const live = await liveSupervisor(paths);
  if (live) {
    process.stderr.write(`stopping cluster ${cluster.name} (supervisor pid ${live.pid})...\n`);
    await requestControl(paths.socket, { op: 'down' }, 10 * 60_000);
    // Wait for the supervisor to finish, so that "down" returning means "nothing runs".
    const deadline = Date.now() + maxGraceMs(cluster) + 60_000;
    while (pidAlive(live.pid) && Date.now() < deadline) await sleep(50);
  } else if (typeof flags.head === 'string') {
    // From another machine: ask over NATS, then wait until the supervisor stops answering.
    const t = await target(file!, flags);
    process.stderr.write(`stopping cluster ${cluster.name} at ${t.cluster.headAddress}...\n`);
    await control(t, flags, { op: 'down' });
    const deadline = Date.now() + maxGraceMs(cluster) + 60_000;
    while (Date.now() < deadline && (await control(t, flags, { op: 'status' }, 2000).then(() => true, () => false))) await sleep(200);
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
  // Belt and braces: whatever a runtime file still names is killed, and the runtime files removed.
  await cleanupLeftovers(cluster);
  process.stderr.write(`cluster ${cluster.name} is down\n`);
  return 0;
}
