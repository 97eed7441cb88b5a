import { loadCluster } from '../config/load.js';
import { readSavedAllocation } from '../slurm/saved.js';
import { liveSupervisor, runtimePaths } from '../control/runtime-files.js';
import { requestControl } from '../control/socket.js';
import { DynsupError } from '../util/errors.js';
import type { Flags } from './commands.js';

export async function restartCommand([file, target]: string[], flags: Flags): Promise<number> {
  const cluster = loadCluster(file!, { stateDir: flags['state-dir'] as string | undefined, slurm: readSavedAllocation });
  const paths = runtimePaths(cluster.stateDir);
  if (!(await liveSupervisor(paths))) throw new DynsupError('E_NOT_RUNNING', `cluster ${cluster.name} is not running (no supervisor in ${cluster.stateDir})`);
  const names = (await requestControl(paths.socket, { op: 'restart', target: target! }, 10 * 60_000)) as string[];
  process.stdout.write(`restarted ${names.join(', ')}\n`);
  return 0;
}
