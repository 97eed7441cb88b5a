/** Per replica GPU telemetry from its node's sample (src/agent/gpu-sampler.ts). Pure. */
import type { NodeGpuSample } from '../agent/protocol.js';

export interface ReplicaGpuTelemetry {
  /** When the node sampled (its clock). */
  readonly at: number;
  /** The replica's GPUs, by placement index; null where nvidia-smi could not tell. */
  readonly gpus: readonly {
    readonly index: number;
    readonly memoryUsedMiB: number | null;
    readonly memoryTotalMiB: number | null;
    readonly utilizationPct: number | null;
  }[];
  /** Sums over its GPUs, and the mean utilisation; null when any GPU's value is unknown. */
  readonly memoryUsedMiB: number | null;
  readonly memoryTotalMiB: number | null;
  readonly utilizationPct: number | null;
  /** Compute processes on its GPUs that are not its own: a leak of an earlier run, another user's job. */
  readonly others: readonly { readonly pid: number; readonly gpu: number; readonly usedMemoryMiB: number | null; readonly owner: string | null }[];
}

const sum = (xs: readonly (number | null)[]): number | null => (xs.every((x) => x !== null) ? xs.reduce<number>((a, b) => a + b!, 0) : null);

/** Undefined when the replica has no GPUs or its node has no sample (no nvidia-smi there): no columns. */
export function replicaGpuTelemetry(name: string, gpuIds: readonly number[], sample: NodeGpuSample | null | undefined): ReplicaGpuTelemetry | undefined {
  if (!sample || !gpuIds.length) return undefined;
  const gpus = gpuIds.map((i) => {
    const g = sample.gpus.find((x) => x.index === i);
    return { index: i, memoryUsedMiB: g?.memoryUsedMiB ?? null, memoryTotalMiB: g?.memoryTotalMiB ?? null, utilizationPct: g?.utilizationPct ?? null };
  });
  const util = sum(gpus.map((g) => g.utilizationPct));
  return {
    at: sample.at,
    gpus,
    memoryUsedMiB: sum(gpus.map((g) => g.memoryUsedMiB)),
    memoryTotalMiB: sum(gpus.map((g) => g.memoryTotalMiB)),
    utilizationPct: util === null ? null : Math.round((util / gpus.length) * 10) / 10,
    others: sample.processes
      .filter((p) => gpuIds.includes(p.gpuIndex) && p.owner !== name)
      .map((p) => ({ pid: p.pid, gpu: p.gpuIndex, usedMemoryMiB: p.usedMemoryMiB, owner: p.owner })),
  };
}
