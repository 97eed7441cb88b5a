/** `dynsup sbatch`: the cluster as one Slurm batch job whose batch step is `dynsup up FILE --slurm`. */
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { loadCluster } from '../config/load.js';
import { previewAllocation } from '../slurm/allocation.js';
import { minimumNodes } from '../slurm/roles.js';
import { batchJob, parseSubmitted, renderBatchScript, slurmTime, SLURM_TIME_ERROR, type SbatchFlags } from '../slurm/sbatch.js';
import { DynsupError } from '../util/errors.js';
import type { Flags } from './flags.js';

const BIN = fileURLToPath(new URL('../../bin/dynsup.js', import.meta.url));

/** The flags, checked (exit 2 on nonsense). Paths are relative to the current directory, as usual for flags. */
export function sbatchFlags(flags: Flags): SbatchFlags {
  const str = (k: string) => {
    const v = flags[k];
    if (typeof v !== 'string') return undefined;
    if (!v || /[\n\r"\\]/.test(v)) throw new DynsupError('E_USAGE', `--${k}: ${JSON.stringify(v)} is empty or contains a line break, '"' or '\\'`);
    return v;
  };
  let nodes: number | undefined;
  if (typeof flags.nodes === 'string') {
    nodes = Number(flags.nodes);
    if (!/^\d+$/.test(flags.nodes) || nodes < 1) throw new DynsupError('E_USAGE', `--nodes: expected a positive integer, got ${JSON.stringify(flags.nodes)}`);
  }
  let time: string | undefined;
  if (typeof flags.time === 'string') {
    time = slurmTime(flags.time) ?? undefined;
    if (!time) throw new DynsupError('E_USAGE', `--time: ${SLURM_TIME_ERROR}, got ${JSON.stringify(flags.time)}`);
  }
  const output = str('output');
  return { nodes, time, partition: str('partition'), account: str('account'), jobName: str('job-name'), output: output && resolve(output) };
}

export async function sbatchCommand([file]: string[], flags: Flags, extra: readonly string[] = []): Promise<number> {
  const stateDir = flags['state-dir'] as string | undefined;
  const f = sbatchFlags(flags);
  // Check the whole file against an allocation of the size we ask for, before anything is queued.
  // (A file with a slurm: section and no nodes: is laid out on slurm.nodes placeholder nodes by default.)
  const first = loadCluster(file!, { stateDir, ...(f.nodes ? { slurm: previewAllocation(f.nodes) } : {}) });
  const nodes = f.nodes ?? first.allocation?.nodes.length ?? first.slurm?.nodes ?? minimumNodes(first.slurm?.roles ?? {});
  const cluster = first.allocation ? first : loadCluster(file!, { stateDir, slurm: previewAllocation(nodes) });
  const job = batchJob(cluster.slurm, f, { nodes, jobName: cluster.name, output: join(cluster.stateDir, 'logs', 'slurm-%j.out') });
  let script: string;
  try {
    script = renderBatchScript(job, { node: process.execPath, bin: BIN, file: resolve(file!), stateDir: stateDir && resolve(stateDir) });
  } catch (err) {
    throw new DynsupError('E_USAGE', (err as Error).message);
  }
  const args = ['--parsable', ...extra];
  if (flags['dry-run']) {
    process.stdout.write(script);
    process.stderr.write(`dynsup sbatch: dry run; would submit this script on stdin with: sbatch ${args.join(' ')}\n`);
    return 0;
  }
  // slurmd opens the output file before the script runs: its directory must exist.
  const outDir = dirname(job.output);
  if (!outDir.includes('%')) mkdirSync(outDir, { recursive: true });
  const r = await execa('sbatch', args, { input: script, reject: false, timeout: 120_000 }).catch((err: Error) => ({
    failed: true,
    exitCode: undefined,
    stdout: '',
    stderr: err.message,
  }));
  const id = r.exitCode === 0 ? parseSubmitted(String(r.stdout)) : null;
  if (!id) {
    const why = String(r.stderr).trim() || String(r.stdout).trim() || `exit ${r.exitCode ?? '?'}`;
    throw new DynsupError('E_LAUNCH', `sbatch failed: ${/ENOENT/.test(why) ? 'sbatch not found on PATH (is this a Slurm login node?)' : why}`);
  }
  process.stdout.write(`${id}\n`);
  process.stderr.write(
    `submitted batch job ${id} (${job.nodes} node${job.nodes === 1 ? '' : 's'}, cluster ${cluster.name}); output: ${job.output.replace(/%j/g, id)}; stop it with: scancel ${id}\n`,
  );
  return 0;
}
