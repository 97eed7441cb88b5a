/** `dynsup up`: the supervisor process (foreground), or a detached one that `up -d` waits for. */
import { spawn } from 'node:child_process';
import { mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { loadCluster } from '../config/load.js';
import type { ClusterConfig } from '../config/types.js';
import { requestControl } from '../api/socket.js';
import { liveSupervisor, readLock, runtimePaths } from '../api/runtime-files.js';
import { runSupervisor } from '../daemon/supervisor-process.js';
import type { ClusterStatus } from '../supervise/supervisor.js';
import { DynsupError, EXIT_RUNTIME } from '../util/errors.js';
import { allocationFromEnv, nodeAddresses, resolveHeadAddress, type AddressCandidate } from '../slurm/allocation.js';
import type { Flags } from './flags.js';

const BIN = fileURLToPath(new URL('../../bin/dynsup.js', import.meta.url));

export async function upCommand([file]: string[], flags: Flags): Promise<number> {
  const stateDir = flags['state-dir'] as string | undefined;
  let cluster: ClusterConfig;
  let head: AddressCandidate | undefined;
  if (flags.slurm) {
    // Slurm mode: the allocation's nodes replace the file's; the head is where we run (the batch host).
    const alloc = allocationFromEnv(process.env);
    const addresses = await nodeAddresses(alloc.nodes);
    const PENDING = '\0pending';
    cluster = loadCluster(file!, { stateDir, slurm: { ...alloc, addresses, headAddress: PENDING } });
    if (cluster.headAddress === PENDING) {
      // No head.address in the file: the address of the node we run on, as the other nodes reach it.
      const here = process.env.SLURMD_NODENAME;
      head = await resolveHeadAddress(here && alloc.nodes[0] === here ? here : undefined);
      cluster = loadCluster(file!, { stateDir, slurm: { ...alloc, addresses, headAddress: head.address } });
    }
  } else {
    cluster = loadCluster(file!, { stateDir, slurmPreview: false });
  }
  if (flags.detach) return detach(cluster, file!, flags);
  return runSupervisor(cluster, { terminal: !flags['supervisor-child'], head });
}

/** `up -d`: start the supervisor in the background and wait until the cluster is up (or failed). */
async function detach(cluster: ClusterConfig, file: string, flags: Flags): Promise<number> {
  const paths = runtimePaths(cluster.stateDir);
  // A second `up -d` must not report the first one's cluster as its own (its child exits on the lock).
  const running = await liveSupervisor(paths);
  if (running) {
    throw new DynsupError(
      'E_ALREADY_RUNNING',
      `cluster ${cluster.name} is already running: supervisor pid ${running.pid} on ${running.host} (started ${new Date(running.startedAt).toISOString()}); stop it with: dynsup down ${file}`,
    );
  }
  mkdirSync(paths.logDir, { recursive: true });
  const outFile = join(paths.logDir, 'supervisor.out');
  const out = openSync(outFile, 'a');
  const args = [
    BIN,
    'up',
    file,
    '--supervisor-child',
    ...(flags.slurm ? ['--slurm'] : []),
    ...(flags['state-dir'] ? ['--state-dir', flags['state-dir'] as string] : []),
  ];
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', out, out] });
  child.unref();
  let exited: number | null | undefined;
  child.once('exit', (code) => (exited = code));
  const timeoutS = Number(flags.timeout ?? 300); // checked by flags.ts
  const deadline = Date.now() + timeoutS * 1000;
  while (Date.now() < deadline) {
    if (exited !== undefined) {
      process.stderr.write(`dynsup up: the supervisor exited (code ${exited}) before the cluster was up. Last lines of ${outFile}:\n${tail(outFile, 20)}\n`);
      return exited === 2 ? 2 : EXIT_RUNTIME;
    }
    const status = (await requestControl(paths.socket, { op: 'status' }, 5000).catch(() => null)) as ClusterStatus | null;
    if (status) {
      const failed = status.replicas.filter((r) => r.state === 'failed');
      if (failed.length) {
        process.stderr.write(`dynsup up: ${failed.map((r) => `${r.name} failed: ${r.message}`).join('; ')}\n`);
        return EXIT_RUNTIME;
      }
      // Only our child's answer counts: a supervisor started meanwhile by someone else makes it exit.
      const ours = (await readLock(paths))?.pid === child.pid;
      if (ours && status.replicas.length === cluster.replicas.length && status.replicas.every((r) => isUp(cluster, r))) {
        process.stdout.write(
          `cluster ${cluster.name} is up: ${status.replicas.length} replica${status.replicas.length === 1 ? '' : 's'}, supervisor pid ${child.pid} (logs: dynsup logs ${file} -f)\n`,
        );
        return 0;
      }
    }
    await sleep(200);
  }
  process.stderr.write(`dynsup up: the cluster was not up after ${timeoutS}s; the supervisor (pid ${child.pid}) keeps trying. See dynsup status ${file}\n`);
  return EXIT_RUNTIME;
}

function isUp(cluster: ClusterConfig, r: ClusterStatus['replicas'][number]): boolean {
  const group = cluster.groups.find((g) => g.name === r.group);
  return group?.health ? r.state === 'ready' : r.state === 'running' || r.state === 'ready';
}

function tail(file: string, n: number): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '(no output)';
  }
}
