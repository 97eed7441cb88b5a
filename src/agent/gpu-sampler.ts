/**
 * GPU telemetry on a node: the agent samples nvidia-smi once per interval for the whole node (not once per
 * replica) and says whose each compute process is, so the head can show per replica the memory and
 * utilisation of its GPUs and the processes on them that are not its own (a leak of an earlier run,
 * another user). Without nvidia-smi the sampler stops for good after its first try: no error, no column.
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { TOKEN_VAR } from './containment.js';
import { queryGpus, type GpuSnapshot } from './nvidia-smi.js';
import type { NodeGpuSample } from './protocol.js';

export interface OwnedWorker {
  readonly name: string;
  /** The worker's current token (its processes carry it in their environment) and leader pid. */
  readonly token: string;
  readonly pid: number | null;
}

const finite = (n: number): number | null => (Number.isFinite(n) ? n : null);

/** The worker a pid belongs to: its environment holds the worker's token, or its process group is the worker's. */
export function ownerOf(pid: number, workers: readonly OwnedWorker[], proc = '/proc'): string | null {
  try {
    const env = readFileSync(`${proc}/${pid}/environ`).toString('latin1');
    const m = new RegExp(`(?:^|\\0)${TOKEN_VAR}=([^\\0]*)`).exec(env);
    if (m) {
      const w = workers.find((x) => x.token && x.token === m[1]);
      if (w) return w.name;
    }
  } catch {
    /* another user's process, or gone: try its process group */
  }
  try {
    const stat = readFileSync(`${proc}/${pid}/stat`, 'utf8');
    const pgid = Number(stat.slice(stat.lastIndexOf(') ') + 2).split(' ')[2]);
    const w = workers.find((x) => x.pid !== null && (x.pid === pid || x.pid === pgid));
    if (w) return w.name;
  } catch {
    /* gone */
  }
  return null;
}

/** A snapshot with owners, as sent to the head (unknown values null: JSON has no NaN). */
export function toSample(snap: GpuSnapshot, at: number, owner: (pid: number) => string | null): NodeGpuSample {
  return {
    at,
    gpus: snap.gpus.map((g) => ({
      index: g.index,
      uuid: g.uuid,
      memoryUsedMiB: finite(g.memoryUsedMiB),
      memoryTotalMiB: finite(g.memoryTotalMiB),
      utilizationPct: finite(g.utilizationPct),
    })),
    processes: snap.processes.map((p) => ({ pid: p.pid, gpuIndex: p.gpuIndex, usedMemoryMiB: finite(p.usedMemoryMiB), owner: owner(p.pid) })),
  };
}

/**
 * Sample every `intervalMs` until `signal` aborts; `send` gets each sample. Returns when nvidia-smi is not
 * there. A failing nvidia-smi (no driver, a hung GPU) is reported once per distinct message to `log`.
 */
export async function sampleGpus(opts: {
  intervalMs: number;
  signal: AbortSignal;
  workers: () => readonly OwnedWorker[];
  send: (s: NodeGpuSample) => void;
  log: (line: string) => void;
}): Promise<void> {
  let lastError = '';
  while (!opts.signal.aborted) {
    try {
      const snap = await queryGpus({ signal: opts.signal, timeoutMs: Math.max(5000, opts.intervalMs) });
      if (!snap) return opts.log('GPU telemetry: no nvidia-smi on PATH; not sampling');
      lastError = '';
      const ws = opts.workers();
      opts.send(toSample(snap, Date.now(), (pid) => ownerOf(pid, ws)));
    } catch (err) {
      if (opts.signal.aborted) return;
      const msg = err instanceof Error ? err.message : String(err);
      if (msg !== lastError) opts.log(`GPU telemetry: ${msg}`);
      lastError = msg;
    }
    await sleep(opts.intervalMs, undefined, { signal: opts.signal }).catch(() => undefined);
  }
}
