/**
 * One replica's lifecycle: start through a Transport, watch its exit (an awaited promise, so a crash is seen
 * the moment it happens, not at the next poll), apply the restart policy, probe health, stop with escalation.
 *
 *   pending → starting → running → ready ─┐ (exit) → backoff → starting …
 *                                           ├→ failed   (crash-loop limit)
 *   any → stopping → stopped                └→ stopped  (policy says no restart)
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { RestartPolicy, StopPolicy } from '../config/types.js';
import type { ReplicaLog } from '../logs/replica-log.js';
import { errorMessage } from '../util/errors.js';
import type { ExitInfo, LaunchSpec, Transport, WorkerProcess } from '../transport/types.js';
import { decideRestart, EMPTY_HISTORY, type RestartHistory } from './restart-policy.js';

export type ReplicaState = 'pending' | 'starting' | 'running' | 'ready' | 'backoff' | 'stopping' | 'stopped' | 'failed';

export interface ReplicaStatus {
  readonly name: string;
  readonly group: string;
  readonly node: string;
  readonly state: ReplicaState;
  readonly pid: number | null;
  readonly restarts: number;
  readonly lastExit: (ExitInfo & { readonly at: number }) | null;
  readonly gpus: readonly number[];
  /** When the current process started (ms since epoch). */
  readonly startedAt: number | null;
  /** When the replica entered its current state. */
  readonly since: number;
  /** Why it is in this state (backoff delay, failure reason). */
  readonly message: string | null;
}

export type ReplicaEvent =
  | { kind: 'started'; pid: number }
  | { kind: 'exited'; exit: ExitInfo; uptimeMs: number }
  | { kind: 'launch-failed'; error: string }
  | { kind: 'restarting'; delayMs: number; restarts: number }
  | { kind: 'failed'; reason: string }
  | { kind: 'ready' }
  | { kind: 'unhealthy'; failures: number }
  | { kind: 'stop-escalated'; graceMs: number }
  | { kind: 'stopped'; reason: string };

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
  readonly transport: Transport;
  readonly spec: () => LaunchSpec;
  readonly restart: RestartPolicy;
  readonly stop: StopPolicy;
  readonly health?: HealthProbe | undefined;
  readonly log: ReplicaLog;
  readonly onChange?: (status: ReplicaStatus) => void;
  readonly onEvent?: (name: string, event: ReplicaEvent) => void;
  readonly now?: () => number;
  readonly random?: () => number;
}

export class Replica {
  readonly name: string;
  readonly #o: ReplicaOptions;
  readonly #now: () => number;
  #state: ReplicaState = 'pending';
  #since: number;
  #message: string | null = null;
  #pid: number | null = null;
  #startedAt: number | null = null;
  #restarts = 0;
  #lastExit: ReplicaStatus['lastExit'] = null;
  #history: RestartHistory = EMPTY_HISTORY;
  #proc: WorkerProcess | undefined;
  #loop: Promise<void> | undefined;
  #stopping = false;
  #restartRequested = false;
  #wake: AbortController = new AbortController();
  #waiters = new Set<() => void>();

  constructor(options: ReplicaOptions) {
    this.#o = options;
    this.name = options.name;
    this.#now = options.now ?? Date.now;
    this.#since = this.#now();
  }

  get state(): ReplicaState {
    return this.#state;
  }

  /** Up means dependents may start: ready when there is a health check, else running. */
  get up(): boolean {
    return this.#o.health ? this.#state === 'ready' : this.#state === 'running' || this.#state === 'ready';
  }

  status(): ReplicaStatus {
    return {
      name: this.name,
      group: this.#o.group,
      node: this.#o.node,
      state: this.#state,
      pid: this.#pid,
      restarts: this.#restarts,
      lastExit: this.#lastExit,
      gpus: this.#o.gpus,
      startedAt: this.#startedAt,
      since: this.#since,
      message: this.#message,
    };
  }

  /** Begin supervising (idempotent while running; restarts the loop of a stopped or failed replica). */
  start(): void {
    if (this.#loop) return;
    this.#stopping = false;
    this.#loop = this.#run().finally(() => {
      this.#loop = undefined;
    });
  }

  /** Stop: signal, grace, SIGKILL of the group. Resolves once nothing of the replica runs. */
  async stop(reason = 'stopped'): Promise<void> {
    const wasActive = this.#loop !== undefined;
    this.#stopping = true;
    this.#wake.abort();
    const proc = this.#proc;
    if (proc) {
      this.#set('stopping', reason);
      await this.#terminate(proc);
    }
    await this.#loop;
    if (wasActive) this.#emit({ kind: 'stopped', reason });
    if (this.#state !== 'stopped') this.#set('stopped', reason);
  }

  /** Restart now, not counted against the crash-loop limit (an operator asked for it). */
  async restart(): Promise<void> {
    this.#history = EMPTY_HISTORY;
    if (!this.#loop) {
      this.start();
      return;
    }
    this.#restartRequested = true;
    this.#wake.abort();
    const proc = this.#proc;
    if (proc) await this.#terminate(proc);
  }

  /** Resolve when `pred` holds for this replica (checked on every state change). */
  waitFor(pred: (r: Replica) => boolean, signal?: AbortSignal): Promise<void> {
    if (pred(this)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pred(this)) {
          this.#waiters.delete(check);
          resolve();
        }
      };
      this.#waiters.add(check);
      signal?.addEventListener('abort', () => {
        this.#waiters.delete(check);
        reject(signal.reason);
      });
    });
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      this.#wake = new AbortController();
      this.#set('starting');
      const launchedAt = this.#now();
      let exit: ExitInfo;
      try {
        const proc = await this.#o.transport.launch(this.#o.spec());
        exit = await this.#supervise(proc);
      } catch (err) {
        this.#emit({ kind: 'launch-failed', error: errorMessage(err) });
        exit = { code: 127, signal: null };
      }
      const uptime = this.#now() - launchedAt;
      this.#lastExit = { ...exit, at: this.#now() };
      if (this.#stopping) break;
      if (this.#restartRequested) {
        this.#restartRequested = false;
        continue;
      }
      const decision = decideRestart(this.#o.restart, exit, uptime, this.#history, this.#now(), (this.#o.random ?? Math.random)());
      if (decision.kind === 'fail') {
        this.#set('failed', decision.reason);
        this.#emit({ kind: 'failed', reason: decision.reason });
        return;
      }
      if (decision.kind === 'stop') {
        this.#set('stopped', decision.reason);
        this.#emit({ kind: 'stopped', reason: decision.reason });
        return;
      }
      this.#history = decision.history;
      this.#restarts++;
      this.#set('backoff', `restarting in ${decision.delayMs}ms`);
      this.#emit({ kind: 'restarting', delayMs: decision.delayMs, restarts: this.#restarts });
      await sleep(decision.delayMs, undefined, { signal: this.#wake.signal }).catch(() => undefined);
    }
    this.#set('stopped', 'stopped by request');
  }

  /** Run one process to its end: log its output, probe it, and report how it exited. */
  async #supervise(proc: WorkerProcess): Promise<ExitInfo> {
    this.#proc = proc;
    this.#pid = proc.pid;
    this.#startedAt = this.#now();
    this.#set('running');
    this.#emit({ kind: 'started', pid: proc.pid });
    const logged = this.#o.log.consume(proc.output);
    const healthStop = new AbortController();
    const health = this.#o.health ? this.#healthLoop(proc, this.#o.health, healthStop.signal) : Promise.resolve();
    // If we were asked to stop while launching, the stop() call saw no process: stop it here.
    if (this.#stopping || this.#restartRequested) void this.#terminate(proc);
    const exit = await proc.exited;
    healthStop.abort();
    await Promise.all([logged, health]);
    this.#proc = undefined;
    this.#pid = null;
    this.#emit({ kind: 'exited', exit, uptimeMs: this.#now() - (this.#startedAt ?? this.#now()) });
    return exit;
  }

  async #healthLoop(proc: WorkerProcess, h: HealthProbe, signal: AbortSignal): Promise<void> {
    const started = this.#now();
    let failures = 0;
    while (!signal.aborted) {
      // An explicit timer, not AbortSignal.any([.., AbortSignal.timeout()]): on Node 20 a garbage-collected
      // composite signal can fail to fire, and a probe of a hung worker would then wait forever.
      const probeAbort = new AbortController();
      const onStop = () => probeAbort.abort();
      signal.addEventListener('abort', onStop, { once: true });
      const timer = setTimeout(() => probeAbort.abort(), h.timeoutMs);
      const ok = await h.probe(probeAbort.signal).catch(() => false);
      clearTimeout(timer);
      signal.removeEventListener('abort', onStop);
      if (signal.aborted) return;
      if (ok) {
        failures = 0;
        if (this.#state === 'running') {
          this.#set('ready');
          this.#emit({ kind: 'ready' });
        }
      } else if (this.#state === 'ready' && this.#now() - started >= h.startPeriodMs) {
        failures++;
        if (failures >= h.failureThreshold) {
          // Alive but not answering: a hung worker holds its GPU as surely as a running one. Replace it.
          this.#emit({ kind: 'unhealthy', failures });
          this.#message = `unhealthy: ${failures} failed health checks`;
          await this.#terminate(proc);
          return;
        }
      }
      await sleep(h.intervalMs, undefined, { signal }).catch(() => undefined);
    }
  }

  async #terminate(proc: WorkerProcess): Promise<void> {
    const { signal, graceMs } = this.#o.stop;
    await proc.kill(signal).catch(() => undefined);
    const timer = new AbortController();
    const timedOut = await Promise.race([
      proc.exited.then(() => false),
      sleep(graceMs, true, { signal: timer.signal }).catch(() => false),
    ]);
    timer.abort();
    if (timedOut) {
      this.#emit({ kind: 'stop-escalated', graceMs });
      await proc.kill('SIGKILL').catch(() => undefined);
      await proc.exited;
    }
  }

  #set(state: ReplicaState, message: string | null = null): void {
    this.#state = state;
    this.#since = this.#now();
    this.#message = message;
    this.#o.onChange?.(this.status());
    for (const w of [...this.#waiters]) w();
  }

  #emit(event: ReplicaEvent): void {
    this.#o.onEvent?.(this.name, event);
  }
}
