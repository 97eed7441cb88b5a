/**
 * `dynsup apply FILE [--dry-run]`: the changed file checked here (every problem at FILE:LINE, exit 2),
 * then planned and carried out by the running supervisor (src/supervise/rollout.ts), locally or over NATS.
 */
import { loadCluster } from '../config/load.js';
import { readSavedAllocation } from '../slurm/saved.js';
import { control, target } from './client.js';
import type { Flags } from './flags.js';

interface ApplyAnswer {
  readonly lines: readonly string[];
  readonly applied: boolean;
}

export async function applyCommand([file]: string[], flags: Flags): Promise<number> {
  const stateDir = flags['state-dir'] as string | undefined;
  // The file as written (its own head.address, not --head's): the supervisor compares it with what runs.
  // Local paths are not checked here: the cluster may run on other machines than this one.
  const next = loadCluster(file!, { stateDir, slurm: readSavedAllocation, checkLocalPaths: false });
  const t = await target(file!, flags);
  const dryRun = flags['dry-run'] === true;
  const r = (await control(t, flags, { op: 'apply', cluster: next, dryRun })) as ApplyAnswer;
  process.stdout.write(`plan for ${file}:\n${r.lines.map((l) => `  ${l}\n`).join('')}`);
  process.stdout.write(dryRun ? 'dry run: nothing changed\n' : 'applied\n');
  return 0;
}
