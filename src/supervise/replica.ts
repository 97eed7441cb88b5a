/**
 * One replica as the head sees it. Its process lives under its node's agent, which starts it, restarts it
 * by its policy (node-local: no round trip) and stops it; this object sends the agent what the head wants,
 * mirrors what the agent reports, logs its output, and adds what only the head can do: health checks
 * (`ready`) and operator requests.
 *
 *   pending → starting → running → ready ─┐ (exit) → backoff → starting …
 *                                           ├→ failed   (crash-loop limit)
 *   any → stopping → stopped                └→ stopped  (policy says no restart)
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentEvent, ExitInfo, WorkerReport, WorkerSpec } from '../agent/protocol.js';
import { specHash } from '../agent/protocol.js';
import { Waiters } from './waiters.js';
import type { ReplicaLog } from '../logs/replica-log.js';
import type { NodeAgent } from '../transport/node-agent.js';
import type { ReplicaGpuTelemetry } from './gpu-telemetry.js';

export type ReplicaState = 'pending' | 'starting' | 'running' | 'ready' | 'backoff' | 'blocked' | 'stopping' | 'stopped' | 'failed';

export interface ReplicaStatus {
  readonly name: string;
  readonly group: string;
  readonly node: string;
  readonly state: ReplicaState;
  readonly pid: number | null;
  readonly restarts: number;
  readonly lastExit: (ExitInfo & { readonly at: number; readonly reason?: string }) | null;
  readonly gpus: readonly number[];
  /** When the current process started (ms since epoch). */
  readonly startedAt: number | null;
  /** When the replica entered its current state. */
  readonly since: number;
  /** Why it is in this state (backoff delay, failure reason). */
  readonly message: string | null;
  /** Taken over from an earlier supervisor's agent, still running, not restarted. */
  readonly adopted?: boolean;
  /** How the node's agent contains the replica's processes: its own cgroup, or process group + sweep. */
  readonly containment?: 'cgroup' | 'pgroup';
  /** GPU memory and utilisation of its GPUs, and others' processes on them (absent without nvidia-smi). */
  readonly gpu?: ReplicaGpuTelemetry;
  /** A gang's members, one per node (rank 0 on the leader node). */
  readonly ranks?: readonly RankStatus[];
}

export interface RankStatus {
  readonly name: string;
  readonly rank: number;
  readonly node: string;
  readonly state: ReplicaState;
  readonly pid: number | null;
}

/**
 * What the supervisor drives: a replica (one process on one node) or a gang (one replica over several
 * nodes, started, stopped and restarted as a whole).
 */
export interface Supervised {
  readonly name: string;
  readonly state: ReplicaState;
  /** Up means dependents may start. */
  readonly up: boolean;
  status(): ReplicaStatus;
  start(): void;
  stop(reason?: string): Promise<void>;
  restart(): Promise<void>;
  quiesce(): void;
  remove(): Promise<void>;
  /** SIGKILL of everything it runs, now (a second Ctrl-C). */
  kill(): void;
  /** The names its output is logged under: itself, or a gang's members. */
  readonly logNames: readonly string[];
  /** What the agent is told to run (a gang's: its leader's); not redacted, callers showing it must redact. */
  launchSpec(): WorkerSpec;
  waitFor(pred: (r: Supervised) => boolean, signal?: AbortSignal): Promise<void>;
}

export type ReplicaEvent =
  | AgentEvent
  /** An exit the head asked for (a stop, a requested restart, a scale-down): `asked` says which. */
  | (Extract<AgentEvent, { kind: 'exited' }> & { readonly asked: string })
  | { kind: 'ready' }
  | { kind: 'unhealthy'; failures: number }
  | { kind: 'fatal-log'; pattern: string; line: string }
  /** A gang member ended: the whole gang stops (and restarts by its policy). */
  | { kind: 'rank-exited'; member: string; node: string; exit: ExitInfo }
  | { kind: 'adopted'; pid: number; restarts: number };

export interface HealthProbe {
  /** Resolve true when healthy. Must honour the signal (timeout). */
  probe(signal: AbortSignal): Promise<boolean>;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly startPeriodMs: number;
  readonly failureThreshold: number;
}

export interface ReplicaOptions {
  readonly name: string;
  readonly group: string;
  readonly node: string;
  readonly gpus: readonly number[];
  readonly agent: NodeAgent;
  readonly spec: () => WorkerSpec;
  readonly health?: HealthProbe | undefined;
  readonly log: ReplicaLog;
  /** How long a stop waits for an unreachable node before leaving the worker to its lease (asked at each stop). */
  readonly unreachableMs: () => number;
  readonly onChange?: ((status: ReplicaStatus) => void) | undefined;
  readonly onEvent?: ((name: string, event: ReplicaEvent) => void) | undefined;
}

export class Replica implements Supervised {
  readonly name: string;
  /** `spec` and `health` change with `replace` (dynsup apply). */
  #o: ReplicaOptions;
  #report: WorkerReport | undefined;
  #state: ReplicaState = 'pending';
  #since = Date.now();
  #message: string | null = null;
  #adopted = false;
  #active = false;
  #healthFor: number | null = null;
  #healthStop: AbortController | undefined;
  readonly #waiters = new Waiters();
  #quiesced = false;

  constructor(options: ReplicaOptions) {
    this.#o = options;
    this.name = options.name;
  }

  get state(): ReplicaState {
    return this.#state;
  }

  /** Up means dependents may start: ready when there is a health check, else running. */
  get up(): boolean {
    return this.#o.health ? this.#state === 'ready' : this.#state === 'running' || this.#state === 'ready';
  }

  status(): ReplicaStatus {
    const r = this.#report;
    return {
      name: this.name,
      group: this.#o.group,
      node: this.#o.node,
      state: this.#state,
      pid: r?.pid ?? null,
      restarts: r?.restarts ?? 0,
      lastExit: r?.lastExit ?? null,
      gpus: this.#o.gpus,
      startedAt: r?.startedAt ?? null,
      since: this.#since,
      message: this.#message,
      ...(this.#adopted ? { adopted: true } : {}),
      ...(r ? { containment: r.containment } : {}),
    };
  }

  /** What the agent is told to run (argv, environment: not redacted, callers showing it must redact). */
  launchSpec(): WorkerSpec {
    return this.#o.spec();
  }

  get logNames(): readonly string[] {
    return [this.name];
  }

  kill(): void {
    this.#o.agent.signal(this.name, 'SIGKILL');
  }

  /**
   * Begin supervising: the agent runs the replica, or adopts it when the same spec runs there already.
   * `restarts`: a gang member's count, kept by its gang.
   */
  start(restarts?: number): void {
    const spec = this.#o.spec();
    const existing = this.#o.agent.adoptable.find((w) => w.name === this.name);
    if (!this.#active && existing && existing.pid && existing.state === 'running' && existing.specHash === specHash(spec)) {
      this.#adopted = true;
      this.#emit({ kind: 'adopted', pid: existing.pid, restarts: existing.restarts });
    }
    this.#active = true;
    if (this.#state === 'pending' || this.#state === 'stopped' || this.#state === 'failed') this.#set('starting');
    this.#o.agent.run(
      this.name,
      spec,
      {
        report: (r) => this.#onReport(r),
        event: (ev) => {
          if (ev.kind === 'started') this.#asked = null; // what was asked of the last process is done
          if (ev.kind !== 'exited' || this.#asked === null) return this.#emit(ev);
          const asked = this.#asked;
          this.#asked = null;
          this.#emit({ ...ev, asked });
        },
        data: (bytes, end) => this.#o.log.append(bytes, end),
        resumeFrom: () => this.#o.log.resumeOffset(),
      },
      restarts,
    );
  }

  /** Stop: signal, grace, kill of everything the replica started. Resolves once the agent says so. */
  async stop(reason = 'stopped'): Promise<void> {
    if (!this.#active && this.#state !== 'running' && this.#state !== 'ready') {
      if (this.#state !== 'stopped') this.#set('stopped', reason);
      return;
    }
    this.#active = false;
    this.#stopHealth();
    this.#asked = reason;
    const ok = await this.#o.agent.stop(this.name, reason, this.#o.unreachableMs());
    if (!ok) this.#set('stopped', `${reason} (node ${this.#o.node} unreachable: its agent stops the worker within the lease)`);
  }

  /**
   * Replace the process by one of another spec (dynsup apply): the old one is stopped (its postStop hook
   * run), then the new one started under the same name, node and GPUs, with its own health check.
   */
  async replace(spec: () => WorkerSpec, health: HealthProbe | undefined, reason: string): Promise<void> {
    await this.stop(reason);
    this.#o = { ...this.#o, spec, health };
    this.#adopted = false;
    this.#fatalFor = null;
    this.start();
  }

  /** Restart now, not counted against the crash-loop limit (an operator asked for it). */
  async restart(): Promise<void> {
    if (!this.#active || this.#state === 'failed' || this.#state === 'stopped') {
      this.start();
      return;
    }
    const pid = this.#report?.pid;
    this.#asked = 'restart requested';
    this.#o.agent.restart(this.name, false, 'restart requested');
    // Resolve once the replacement runs (or the replica ended up elsewhere).
    await this.waitFor((r) => r.#report?.pid !== pid || r.#state === 'failed' || r.#state === 'stopped').catch(() => undefined);
  }

  /**
   * A line of the worker matched one of its fatal log patterns (restart.onLog): replace the process, as a
   * crash. Once per process: the lines a dying worker prints after the first match change nothing.
   */
  fatalLog(pattern: string, line: string): void {
    const pid = this.#report?.pid ?? null;
    if (this.#quiesced || pid === null || this.#fatalFor === pid || (this.#state !== 'running' && this.#state !== 'ready')) return;
    this.#fatalFor = pid;
    this.#emit({ kind: 'fatal-log', pattern, line });
    this.#o.agent.restart(this.name, true, `log line matched /${pattern}/`);
  }

  #fatalFor: number | null = null;
  /** Why the head asked the running process to end (its next exit is expected, not a crash), or null. */
  #asked: string | null = null;

  /** The cluster is stopping: no more health checks (a failing one would restart the replica). */
  quiesce(): void {
    this.#quiesced = true;
    this.#stopHealth();
  }

  /** Remove the replica from its node (scaled away). */
  async remove(): Promise<void> {
    this.#active = false;
    this.#stopHealth();
    this.#asked = 'scaled down';
    await this.#o.agent.forget(this.name, this.#o.unreachableMs());
    if (this.#state !== 'stopped') this.#set('stopped', 'scaled down');
  }

  /** Resolve when `pred` holds for this replica (checked on every state change). */
  waitFor(pred: (r: this) => boolean, signal?: AbortSignal): Promise<void> {
    return this.#waiters.until(() => pred(this), signal);
  }

  #onReport(r: WorkerReport): void {
    const prevPid = this.#report?.pid ?? null;
    this.#report = r;
    if (r.pid !== prevPid && prevPid !== null) this.#adopted = false;
    if (r.state === 'running') {
      // Keep `ready` while the same process runs and passes its checks.
      if (this.#state === 'ready' && this.#healthFor === r.pid) return this.#notify();
      this.#set('running', r.message);
      if (this.#o.health && r.pid !== null && !this.#quiesced) this.#startHealth(r.pid, this.#o.health);
      return;
    }
    this.#stopHealth();
    if (r.state === 'stopped' || r.state === 'failed') this.#active = false;
    this.#set(r.state, r.message);
  }

  #startHealth(pid: number, h: HealthProbe): void {
    if (this.#healthFor === pid) return;
    this.#stopHealth();
    this.#healthFor = pid;
    const stop = new AbortController();
    this.#healthStop = stop;
    void this.#healthLoop(pid, h, stop.signal);
  }

  #stopHealth(): void {
    this.#healthStop?.abort();
    this.#healthStop = undefined;
    this.#healthFor = null;
  }

  async #healthLoop(pid: number, h: HealthProbe, signal: AbortSignal): Promise<void> {
    const started = Date.now();
    let failures = 0;
    while (!signal.aborted) {
      // An explicit timer, not AbortSignal.any([.., AbortSignal.timeout()]): on Node 20 a garbage-collected
      // composite signal can fail to fire, and a probe of a hung worker would then wait forever.
      const probeAbort = new AbortController();
      const onStop = (): void => probeAbort.abort();
      signal.addEventListener('abort', onStop, { once: true });
      const timer = setTimeout(() => probeAbort.abort(), h.timeoutMs);
      const ok = await h.probe(probeAbort.signal).catch(() => false);
      clearTimeout(timer);
      signal.removeEventListener('abort', onStop);
      if (signal.aborted) return;
      if (ok) {
        failures = 0;
        if (this.#state === 'running' && this.#report?.pid === pid) {
          this.#set('ready');
          this.#emit({ kind: 'ready' });
        }
      } else if (this.#state === 'ready' && Date.now() - started >= h.startPeriodMs) {
        failures++;
        if (failures >= h.failureThreshold) {
          // Alive but not answering: a hung worker holds its GPU as surely as a running one. Replace it.
          this.#emit({ kind: 'unhealthy', failures });
          this.#message = `unhealthy: ${failures} failed health checks`;
          this.#o.agent.restart(this.name, true, `unhealthy (${failures} failed health checks)`);
          return;
        }
      }
      await sleep(h.intervalMs, undefined, { signal }).catch(() => undefined);
    }
  }

  #set(state: ReplicaState, message: string | null = null): void {
    this.#state = state;
    this.#since = Date.now();
    this.#message = message;
    this.#notify();
  }

  #notify(): void {
    this.#o.onChange?.(this.status());
    this.#waiters.changed();
  }

  #emit(event: ReplicaEvent): void {
    this.#o.onEvent?.(this.name, event);
  }
}
