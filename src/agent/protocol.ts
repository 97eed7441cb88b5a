/**
 * The wire protocol between the head and a node's resident agent, shared by both ends (the agent bundle
 * includes this file). One byte stream per node, whatever carries it (a unix socket, an ssh exec channel,
 * an srun step's stdio): frames of `u32 length | u8 type | body`.
 *
 *   type 1: a JSON message (control: run, stop, ack, state, exit, ...)
 *   type 2: worker output: `u16 nameLength | name | f64 offset | bytes` (offset: the chunk's first byte in
 *           the replica's spool, counted from the spool's creation, across restarts)
 *
 * Before the first frame the agent writes PREAMBLE. Everything the channel carried before it (a login
 * shell's rc files echoing things on stdout) is skipped, so a noisy `.bashrc` never reaches a log.
 */
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RestartPolicy } from '../config/types.js';

/**
 * Bumped on any incompatible change; a head and an agent with different versions refuse each other.
 * Compatible additions keep it: a field or message the other end does not know is ignored there (the
 * hello's gpuIntervalMs and its workers' `command`, the agent's `gpus` message, a spec's hooks).
 */
export const PROTOCOL_VERSION = 1;
export const PREAMBLE = Buffer.from('\n\u0000dynsup-agent-protocol\u0000\n');

const T_JSON = 1;
const T_DATA = 2;
/** A frame larger than this is a corrupt stream, not a message. */
const MAX_FRAME = 64 * 2 ** 20;

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** Everything the agent needs to run one replica. Its hash decides whether a running worker can be adopted. */
export interface WorkerSpec {
  readonly argv: readonly string[];
  /** Set on top of the agent's environment, after `unsetEnv` patterns were removed. */
  readonly env: Readonly<Record<string, string>>;
  readonly unsetEnv: readonly string[];
  readonly cwd?: string | undefined;
  readonly stopSignal: NodeJS.Signals;
  readonly graceMs: number;
  readonly restart: RestartPolicy;
  /** Hooks: `sh -c` on the node before each start (failing = a failed start) and after each exit; output to the spool. */
  readonly preStart?: string | undefined;
  readonly postStop?: string | undefined;
  /** Variables kept although an `unsetEnv` pattern matches them (an MPI leader's `srun` needs SLURM_CONF). */
  readonly keepEnv?: readonly string[] | undefined;
  /**
   * An `mpirun` leader: the agent points Open MPI's remote launcher (plm_rsh_agent) at itself, so that the
   * daemons on the gang's other nodes are started by those nodes' agents, through the head (no ssh
   * between nodes; every rank contained like any worker).
   */
  readonly mpiLauncher?: boolean | undefined;
  /**
   * GPUs the worker is given: before it starts again, the agent waits (up to `timeoutMs`) until nvidia-smi
   * shows none of its previous run's processes on them, rather than start it into an out-of-memory.
   */
  readonly gpuRelease?: { readonly gpus: readonly number[]; readonly timeoutMs: number } | undefined;
  /**
   * Files the worker needs on its node (the etcd CA with controlPlane.etcd.tls): variable → content. The agent
   * writes each content to a 0600 file in its run dir (named by its hash: the same content, the same file,
   * across restarts and adoptions) and sets the variable to that file's path.
   */
  readonly files?: Readonly<Record<string, string>> | undefined;
}

/** `blocked`: not started, its GPUs still held by its previous run's processes past restart.gpuReleaseTimeout. */
export type WorkerState = 'starting' | 'running' | 'backoff' | 'blocked' | 'stopping' | 'stopped' | 'failed';

/** What the agent knows of one replica; sent on every change and in the hello. */
export interface WorkerReport {
  readonly name: string;
  readonly specHash: string;
  readonly state: WorkerState;
  readonly pid: number | null;
  readonly restarts: number;
  /** How the last process ended; `reason` when the head had it restarted (unhealthy, fatal log line). */
  readonly lastExit: (ExitInfo & { readonly at: number; readonly reason?: string }) | null;
  readonly startedAt: number | null;
  readonly since: number;
  readonly message: string | null;
  /** Bytes in the spool so far (end offset). */
  readonly spooled: number;
  /** Bytes the head has confirmed it logged: a head that adopts the worker resumes here. */
  readonly acked: number;
  /** How the worker is contained: its own cgroup, or its process group plus an environment-token sweep. */
  readonly containment: 'cgroup' | 'pgroup';
}

/**
 * A worker as the hello lists it: its report, plus what a new head needs to adopt it and cannot rebuild
 * from its own configuration (only here: state reports stay small).
 */
export interface HelloWorker extends WorkerReport {
  /**
   * For a worker run as `sh -c <command>`: the command. An Open MPI daemon a gang's mpirun had the head
   * start has a command line only mpirun knew; a new head rebuilds the member's spec from it to adopt it.
   * Not redacted: never to be logged or shown (it may carry what users passed on their command lines).
   */
  readonly command?: string | undefined;
}

/** One GPU as sampled; null where nvidia-smi could not tell ("[N/A]"). */
export interface GpuReading {
  readonly index: number;
  readonly uuid: string;
  readonly memoryUsedMiB: number | null;
  readonly memoryTotalMiB: number | null;
  readonly utilizationPct: number | null;
}
/** A compute process on one of the node's GPUs; `owner`: the replica whose process it is (null: none of this agent's). */
export interface GpuProcessReading {
  readonly pid: number;
  readonly gpuIndex: number;
  readonly usedMemoryMiB: number | null;
  readonly owner: string | null;
}
export interface NodeGpuSample {
  /** The node's clock. */
  readonly at: number;
  readonly gpus: readonly GpuReading[];
  readonly processes: readonly GpuProcessReading[];
}

export type AgentEvent =
  /** `at`: the node's clock, when it happened there (the head learns of it a little later). */
  | { readonly kind: 'started'; readonly pid: number; readonly at: number }
  | { readonly kind: 'exited'; readonly exit: ExitInfo; readonly uptimeMs: number; readonly at: number }
  | { readonly kind: 'launch-failed'; readonly error: string }
  | { readonly kind: 'restarting'; readonly delayMs: number; readonly restarts: number }
  | { readonly kind: 'failed'; readonly reason: string }
  | { readonly kind: 'stop-escalated'; readonly graceMs: number }
  | { readonly kind: 'stopped'; readonly reason: string }
  | { readonly kind: 'leftovers'; readonly count: number }
  /** The GPU release gate: waiting for, given up on (blocked), or seen the release of the previous run's GPUs. */
  | { readonly kind: 'gpu-wait'; readonly gpu: number; readonly pid: number }
  | { readonly kind: 'gpu-blocked'; readonly gpu: number; readonly pid: number; readonly waitedMs: number }
  | { readonly kind: 'gpu-released'; readonly waitedMs: number }
  /** Said once per node: no nvidia-smi there, so GPU release is not checked. */
  | { readonly kind: 'gpu-unchecked'; readonly reason: string }
  /** A postStop hook failed (a failing preStart is a `launch-failed`: the start failed). */
  | { readonly kind: 'hook-failed'; readonly hook: 'preStart' | 'postStop'; readonly error: string };

export type HeadMessage =
  /** `gpuIntervalMs`: sample nvidia-smi this often (0 or absent: never). */
  | { readonly t: 'hello'; readonly v: number; readonly cluster: string; readonly node: string; readonly leaseMs: number; readonly gpuIntervalMs?: number }
  /**
   * Run (or adopt, when the same spec runs already) a replica; output is streamed from `from`. `start`
   * false: the head reconnected and re-states what it wants; a replica that ended (failed, stopped by its
   * policy or on request) stays so, one the lease stopped is started again.
   */
  | {
      readonly t: 'run';
      readonly name: string;
      readonly spec: WorkerSpec;
      readonly specHash: string;
      readonly from: number;
      readonly start: boolean;
      /** A gang member: the head counts the gang's restarts (the agent does not restart members) and says so. */
      readonly restarts?: number | undefined;
    }
  /** The answer to an agent's `launch`: started (as `name`), or why not. */
  | { readonly t: 'launched'; readonly id: number; readonly error?: string | undefined }
  | { readonly t: 'stop'; readonly name: string; readonly reason: string }
  /** Stop and start again; `counted`: as a crash (unhealthy), else not counted against the crash-loop limit. */
  | { readonly t: 'restart'; readonly name: string; readonly counted: boolean; readonly reason: string }
  | { readonly t: 'signal'; readonly name: string; readonly signal: NodeJS.Signals }
  /** Everything before `offset` is safely in the head's log: the agent may release it. */
  | { readonly t: 'ack'; readonly name: string; readonly offset: number }
  | { readonly t: 'forget'; readonly name: string }
  | { readonly t: 'ping' }
  /** Stop every worker, remove the run dir, exit. */
  | { readonly t: 'shutdown'; readonly graceMs: number };

export type AgentMessage =
  | {
      readonly t: 'hello';
      readonly v: number;
      readonly pid: number;
      readonly build: string;
      readonly cgroup: boolean;
      readonly workers: readonly HelloWorker[];
      readonly error?: string;
    }
  | { readonly t: 'state'; readonly worker: WorkerReport }
  /** The node's GPUs (one nvidia-smi call pair per interval, whatever the number of workers). */
  | { readonly t: 'gpus'; readonly sample: NodeGpuSample }
  | { readonly t: 'event'; readonly name: string; readonly event: AgentEvent }
  | { readonly t: 'pong' }
  /** mpirun on this node asks to start `command` on the gang's node at `host` (relayed from the launcher). */
  | { readonly t: 'launch'; readonly id: number; readonly replica: string; readonly host: string; readonly command: string }
  | { readonly t: 'bye' }
  | { readonly t: 'error'; readonly message: string };

/** What `dynsup-agent rsh` (Open MPI's remote launcher) sends its node's agent, and what it gets back. */
export type LauncherMessage =
  | { readonly t: 'launch'; readonly replica: string; readonly host: string; readonly command: string }
  | { readonly t: 'launched'; readonly error?: string | undefined };

export function encodeMessage(msg: HeadMessage | AgentMessage | LauncherMessage): Buffer {
  const body = Buffer.from(JSON.stringify(msg));
  const frame = Buffer.allocUnsafe(5 + body.length);
  frame.writeUInt32BE(body.length + 1, 0);
  frame[4] = T_JSON;
  body.copy(frame, 5);
  return frame;
}

export function encodeData(name: string, offset: number, bytes: Buffer): Buffer {
  const n = Buffer.from(name);
  const head = Buffer.allocUnsafe(5 + 2 + n.length + 8);
  head.writeUInt32BE(1 + 2 + n.length + 8 + bytes.length, 0);
  head[4] = T_DATA;
  head.writeUInt16BE(n.length, 5);
  n.copy(head, 7);
  head.writeDoubleBE(offset, 7 + n.length);
  return Buffer.concat([head, bytes]);
}

export type Frame<M> =
  { readonly kind: 'msg'; readonly msg: M } | { readonly kind: 'data'; readonly name: string; readonly offset: number; readonly bytes: Buffer };

/**
 * Splits a byte stream into frames. With `preamble`, bytes before PREAMBLE are handed to `onNoise` (a login
 * shell's chatter; kept for error messages) instead of being parsed.
 */
export class FrameDecoder<M> {
  /** Received bytes not yet decoded, as they came: a large frame arrives in many small reads and is
   * copied together once, when it is complete (concatenating on every read made it quadratic). */
  #chunks: Buffer[] = [];
  #len = 0;
  #synced: boolean;
  readonly #onNoise: ((b: Buffer) => void) | undefined;

  constructor(opts: { preamble: boolean; onNoise?: (b: Buffer) => void }) {
    this.#synced = !opts.preamble;
    this.#onNoise = opts.onNoise;
  }

  get synced(): boolean {
    return this.#synced;
  }

  push(chunk: Buffer): Frame<M>[] {
    this.#chunks.push(chunk);
    this.#len += chunk.length;
    if (!this.#synced && !this.#sync()) return [];
    const frames: Frame<M>[] = [];
    while (this.#len >= 5) {
      const head = this.#peek(5);
      const len = head.readUInt32BE(0);
      if (len < 1 || len > MAX_FRAME) throw new Error(`corrupt agent stream: frame of ${len} bytes`);
      if (this.#len < 4 + len) break;
      const frame = this.#take(4 + len);
      const type = frame[4];
      const body = frame.subarray(5);
      if (type === T_JSON) frames.push({ kind: 'msg', msg: JSON.parse(body.toString('utf8')) as M });
      else if (type === T_DATA) {
        const n = body.readUInt16BE(0);
        const name = body.subarray(2, 2 + n).toString('utf8');
        const offset = body.readDoubleBE(2 + n);
        frames.push({ kind: 'data', name, offset, bytes: body.subarray(2 + n + 8) });
      } else throw new Error(`corrupt agent stream: frame type ${type}`);
    }
    return frames;
  }

  /** Skip to the preamble (what comes before it is noise). False while it has not arrived. */
  #sync(): boolean {
    const all = this.#take(this.#len);
    const at = all.indexOf(PREAMBLE);
    if (at < 0) {
      // Keep a tail that may be the start of the preamble.
      const keep = Math.min(all.length, PREAMBLE.length - 1);
      if (all.length > keep) this.#onNoise?.(all.subarray(0, all.length - keep));
      this.#put(Buffer.from(all.subarray(all.length - keep)));
      return false;
    }
    if (at > 0) this.#onNoise?.(all.subarray(0, at));
    this.#put(all.subarray(at + PREAMBLE.length));
    this.#synced = true;
    return true;
  }

  #put(b: Buffer): void {
    this.#chunks = b.length ? [b] : [];
    this.#len = b.length;
  }

  /** The first n buffered bytes (n <= buffered), without consuming them. */
  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const parts: Buffer[] = [];
    let got = 0;
    for (const c of this.#chunks) {
      parts.push(c);
      got += c.length;
      if (got >= n) break;
    }
    return Buffer.concat(parts, got).subarray(0, n);
  }

  /** Consume the first n buffered bytes (n <= buffered). */
  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.#chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#len -= n;
    return out;
  }
}

/** Stable hash of a spec: same hash, same process (adoptable). */
export function specHash(spec: WorkerSpec): string {
  const canon = JSON.stringify(spec, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1))) : v,
  );
  return createHash('sha256').update(canon).digest('hex').slice(0, 16);
}

/**
 * The agent's socket for a run dir. Unix socket paths are limited to 107 bytes: a long run dir gets a
 * hashed name under the temp dir instead (the directory is per user, mode 0700).
 */
export function socketPath(runDir: string, uid: number = process.getuid?.() ?? 0): string {
  const p = join(runDir, 'agent.sock');
  if (Buffer.byteLength(p) <= 100) return p;
  return join(tmpdir(), `dynsup-${uid}`, `${createHash('sha256').update(runDir).digest('hex').slice(0, 20)}.sock`);
}
