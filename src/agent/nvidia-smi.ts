/**
 * What the node's GPUs hold right now, from `nvidia-smi`: memory and utilisation per GPU, and the compute
 * processes on each. Used by the agent's telemetry (one call pair per node per interval) and by the
 * GPU-release gate before a relaunch. The parsers are pure; `queryGpus` runs the two queries.
 *
 * Bundled into the node agent (scripts/build/agent.mjs): Node built-ins only.
 *
 * Fields nvidia-smi cannot give ("[N/A]", "[Not Supported]", empty: MIG, some Grace or vGPU setups,
 * processes of another container) are NaN: test with Number.isFinite before comparing. A line without an
 * index or a uuid (for a GPU) or a pid (for a process) is skipped, as is anything that is not a CSV row
 * (blank output, a "No devices were found" message).
 */
import { execFile } from 'node:child_process';
import { DynsupError } from '../util/errors.js';

export interface GpuSample {
  index: number;
  uuid: string;
  memoryUsedMiB: number;
  memoryTotalMiB: number;
  utilizationPct: number;
}
export interface GpuProcess {
  pid: number;
  gpuUuid: string;
  /** The index of the GPU with `gpuUuid` in the same snapshot; -1 when that uuid is not among them. */
  gpuIndex: number;
  usedMemoryMiB: number;
}
export interface GpuSnapshot {
  gpus: GpuSample[];
  processes: GpuProcess[];
}

export const GPU_QUERY = ['--query-gpu=index,uuid,memory.used,memory.total,utilization.gpu', '--format=csv,noheader,nounits'];
export const APPS_QUERY = ['--query-compute-apps=pid,gpu_uuid,used_memory', '--format=csv,noheader,nounits'];

/** Default bound on one nvidia-smi call: a GPU in a bad state can make it hang for minutes. */
const DEFAULT_TIMEOUT_MS = 15_000;

/** A numeric field; NaN for "[N/A]", "[Not Supported]", "N/A", empty or anything else not a number. */
function num(field: string | undefined): number {
  const s = (field ?? '').trim();
  // nounits normally drops them; tolerate "1234 MiB" and "45 %" from a caller that forgot it.
  const m = /^(-?\d+(?:\.\d+)?)\s*(?:MiB|%)?$/.exec(s);
  return m ? Number(m[1]) : NaN;
}

function rows(text: string, minFields: number): string[][] {
  const out: string[][] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line) continue;
    const fields = line.split(',').map((f) => f.trim());
    if (fields.length < minFields) continue;
    out.push(fields);
  }
  return out;
}

/** `nvidia-smi --query-gpu=index,uuid,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits` */
export function parseGpuCsv(text: string): GpuSample[] {
  const gpus: GpuSample[] = [];
  for (const [index, uuid, used, total, util] of rows(text, 5)) {
    const i = num(index);
    if (!Number.isInteger(i) || i < 0 || !uuid || uuid.startsWith('[')) continue;
    gpus.push({ index: i, uuid: uuid!, memoryUsedMiB: num(used), memoryTotalMiB: num(total), utilizationPct: num(util) });
  }
  return gpus;
}

/** `nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits`; `gpus` maps uuids to indexes. */
export function parseComputeAppsCsv(text: string, gpus: GpuSample[]): GpuProcess[] {
  const byUuid = new Map(gpus.map((g) => [g.uuid, g.index]));
  const procs: GpuProcess[] = [];
  for (const [pid, uuid, used] of rows(text, 3)) {
    const p = num(pid);
    if (!Number.isInteger(p) || p <= 0 || !uuid || uuid.startsWith('[')) continue;
    procs.push({ pid: p, gpuUuid: uuid!, gpuIndex: byUuid.get(uuid!) ?? -1, usedMemoryMiB: num(used) });
  }
  return procs;
}

/** Rejection value of `run` when the binary does not exist (queryGpus: null, not an error). */
const NOT_FOUND = Symbol('nvidia-smi not found');

function run(bin: string, args: string[], opts: { signal?: AbortSignal; env?: NodeJS.ProcessEnv; timeoutMs: number }): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      bin,
      args,
      { env: opts.env ?? process.env, signal: opts.signal, timeout: opts.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 8 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return reject(NOT_FOUND);
        if (err.name === 'AbortError') return reject(err);
        if ((err as { killed?: boolean }).killed) return reject(new DynsupError('E_TIMEOUT', `${bin} ${args[0]}: no answer in ${opts.timeoutMs} ms`));
        const why = (stderr || stdout).trim().split('\n')[0] || err.message;
        reject(new DynsupError('E_NODE', `${bin} ${args[0]}: ${why}`, { cause: err }));
      },
    );
  });
}

/**
 * One snapshot of the node's GPUs: the two queries, run together. null when nvidia-smi is not on PATH
 * (`env.PATH` when `env` is given) or `bin` does not exist; rejects when nvidia-smi fails (no driver, a
 * hung GPU past `timeoutMs`) or `signal` aborts.
 */
export async function queryGpus(opts: { signal?: AbortSignal; bin?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<GpuSnapshot | null> {
  const bin = opts.bin ?? 'nvidia-smi';
  const o = { signal: opts.signal, env: opts.env, timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS };
  try {
    const [gpuText, appsText] = await Promise.all([run(bin, GPU_QUERY, o), run(bin, APPS_QUERY, o)]);
    const gpus = parseGpuCsv(gpuText);
    return { gpus, processes: parseComputeAppsCsv(appsText, gpus) };
  } catch (err) {
    if (err === NOT_FOUND) return null;
    throw err;
  }
}
