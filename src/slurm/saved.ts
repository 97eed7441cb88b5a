/**
 * The allocation a running `dynsup up --slurm` works in, recorded in <stateDir>/run/slurm.json, so that
 * status, logs, restart and down (run later, maybe from a login node) know the nodes the file itself
 * does not list.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { SlurmAllocation } from './allocation.js';

/**
 * What saveAllocation reads of a resolved cluster (ClusterConfig has these): described here rather than
 * imported, so that slurm/ stays below config/ (config/load.ts resolves allocations with slurm/).
 */
export interface AllocatedCluster {
  readonly allocation?: { readonly jobId?: string | undefined; readonly nodes: readonly string[] } | undefined;
  readonly stateDir: string;
  readonly headAddress: string;
  readonly nodes: readonly { readonly name: string; readonly address: string; readonly gpus: number }[];
}

export function savedAllocationPath(stateDir: string): string {
  return join(stateDir, 'run', 'slurm.json');
}

export async function saveAllocation(cluster: AllocatedCluster): Promise<void> {
  const a = cluster.allocation;
  if (!a) return;
  const file = savedAllocationPath(cluster.stateDir);
  await mkdir(join(cluster.stateDir, 'run'), { recursive: true, mode: 0o700 });
  const saved: SlurmAllocation = {
    jobId: a.jobId,
    nodes: a.nodes,
    headAddress: cluster.headAddress,
    addresses: Object.fromEntries(cluster.nodes.map((n) => [n.name, n.address])),
    gpusPerNode: cluster.nodes[0]?.gpus,
  };
  await writeFile(`${file}.tmp`, `${JSON.stringify(saved)}\n`, { mode: 0o600 });
  await rename(`${file}.tmp`, file);
  // Runtime files of earlier jobs (their processes ended with them; their spools hold the workers' output) go.
  const run = join(cluster.stateDir, 'run');
  for (const d of await readdir(run).catch(() => [] as string[])) {
    if (d.startsWith('slurm-') && d !== `slurm-${a.jobId ?? 'none'}`) await rm(join(run, d), { recursive: true, force: true });
  }
}

export async function forgetAllocation(stateDir: string): Promise<void> {
  await rm(savedAllocationPath(stateDir), { force: true });
}

/** For loadCluster's `slurm` option: the recorded allocation, or undefined (never throws). */
export function readSavedAllocation(stateDir: string): SlurmAllocation | undefined {
  try {
    const a = JSON.parse(readFileSync(savedAllocationPath(stateDir), 'utf8')) as Partial<SlurmAllocation>;
    if (!Array.isArray(a.nodes) || !a.nodes.length || !a.nodes.every((n) => typeof n === 'string')) return undefined;
    return {
      jobId: typeof a.jobId === 'string' ? a.jobId : undefined,
      nodes: a.nodes,
      headAddress: typeof a.headAddress === 'string' ? a.headAddress : undefined,
      gpusPerNode: typeof a.gpusPerNode === 'number' ? a.gpusPerNode : undefined,
      addresses: a.addresses && typeof a.addresses === 'object' ? a.addresses : undefined,
    };
  } catch {
    return undefined;
  }
}
