/**
 * A fake NodeAgent for unit tests of the head's state machines (supervise/replica.ts, supervise/gang.ts):
 * the methods they call (run, stop, restart, signal, forget, adoptable, last), every call recorded in
 * order, and helpers with which a test plays the node's agent: a process started, exited, backing off,
 * failed. It decides nothing by itself except what the real agent always does on a stop (the exit, the
 * 'stopped' report and event, then the promise resolves), so a case table reads as "the agent said X, the
 * head did Y".
 */
import { specHash, type AgentEvent, type ExitInfo, type HelloWorker, type WorkerReport, type WorkerSpec, type WorkerState } from '../../src/agent/protocol.js';
import type { RestartPolicy } from '../../src/config/types.js';
import type { ReplicaLog } from '../../src/logs/replica-log.js';
import type { NodeAgent, ReplicaSink } from '../../src/transport/node-agent.js';

interface Worker {
  spec: WorkerSpec;
  sink: ReplicaSink;
  last: WorkerReport;
}

export class FakeAgent {
  /** Workers an earlier supervisor left running (what the hello listed). */
  adoptable: HelloWorker[] = [];
  /** Every call, in order: `run w-0 restarts=0`, `stop w-0 (reason)`, `restart w-0 counted (reason)`... */
  readonly calls: string[] = [];
  /** What stop() resolves: false plays a node that stayed unreachable. */
  reachable = true;
  readonly #workers = new Map<string, Worker>();
  #now = 1_000_000;

  constructor(readonly node = 'n1') {}

  /** This fake, typed as what Replica and Gang take. */
  get asNodeAgent(): NodeAgent {
    return this as unknown as NodeAgent;
  }

  run(name: string, spec: WorkerSpec, sink: ReplicaSink, restarts?: number): void {
    const prev = this.#workers.get(name)?.last;
    const r = restarts ?? prev?.restarts ?? 0;
    this.calls.push(`run ${name} restarts=${r}`);
    this.#workers.set(name, { spec, sink, last: prev ?? this.#report(name, spec, { state: 'starting', restarts: r }) });
  }

  last(name: string): WorkerReport | undefined {
    return this.#workers.get(name)?.last;
  }

  /** The spec the head last ran `name` with. */
  specOf(name: string): WorkerSpec | undefined {
    return this.#workers.get(name)?.spec;
  }

  async stop(name: string, reason: string, _unreachableMs: number): Promise<boolean> {
    this.calls.push(`stop ${name} (${reason})`);
    const w = this.#workers.get(name);
    if (!this.reachable) return false;
    // As the agent: the process ends (signal, grace), the worker is reported stopped, then the stop resolves.
    await Promise.resolve();
    if (w && (w.last.state === 'running' || w.last.state === 'starting')) this.exited(name, { code: null, signal: 'SIGTERM' }, 'stopped', reason);
    else if (w) this.report(name, { state: 'stopped', message: reason });
    if (w) this.event(name, { kind: 'stopped', reason });
    return true;
  }

  restart(name: string, counted: boolean, reason: string): boolean {
    this.calls.push(`restart ${name} ${counted ? 'counted' : 'not counted'} (${reason})`);
    return true;
  }

  signal(name: string, signal: NodeJS.Signals): boolean {
    this.calls.push(`signal ${name} ${signal}`);
    return true;
  }

  async forget(name: string, unreachableMs: number): Promise<void> {
    await this.stop(name, 'removed', unreachableMs);
    this.calls.push(`forget ${name}`);
    this.#workers.delete(name);
  }

  // --- the test plays the agent ---

  /** The process of `name` runs as `pid` (the 'started' event, then the report). */
  started(name: string, pid: number): void {
    this.event(name, { kind: 'started', pid, at: this.#now });
    this.report(name, { state: 'running', pid, startedAt: this.#now, message: null });
  }

  /** The process ended with `exit`; the worker is now `state` (backoff, stopped, failed) with `message`. */
  exited(name: string, exit: ExitInfo, state: WorkerState, message: string | null = null, counted = state === 'backoff'): void {
    const prev = this.#get(name).last;
    this.event(name, { kind: 'exited', exit, uptimeMs: 1000, at: this.#now });
    this.report(name, {
      state,
      pid: null,
      restarts: prev.restarts + (counted ? 1 : 0),
      lastExit: { ...exit, at: this.#now },
      startedAt: null,
      message,
    });
  }

  report(name: string, change: Partial<WorkerReport>): void {
    const w = this.#get(name);
    w.last = { ...w.last, ...change, since: this.#now };
    w.sink.report(w.last);
  }

  event(name: string, ev: AgentEvent): void {
    this.#get(name).sink.event(ev);
  }

  /** Whether the head asked for `name` and has not forgotten it. */
  has(name: string): boolean {
    return this.#workers.has(name);
  }

  #get(name: string): Worker {
    const w = this.#workers.get(name);
    if (!w) throw new Error(`fake agent on ${this.node}: the head never asked for ${name}`);
    return w;
  }

  #report(name: string, spec: WorkerSpec, change: Partial<WorkerReport>): WorkerReport {
    return {
      name,
      specHash: specHash(spec),
      state: 'starting',
      pid: null,
      restarts: 0,
      lastExit: null,
      startedAt: null,
      since: this.#now,
      message: null,
      spooled: 0,
      acked: 0,
      containment: 'pgroup',
      ...change,
    };
  }
}

/** A replica log that keeps its bytes in memory. */
export function memoryLog(): ReplicaLog & { readonly text: () => string } {
  const chunks: Buffer[] = [];
  return {
    append: async (b: Buffer) => void chunks.push(b),
    text: () => Buffer.concat(chunks).toString(),
  } as unknown as ReplicaLog & { readonly text: () => string };
}

export const POLICY: RestartPolicy = {
  policy: 'always',
  // 0: the backoff sleep is a macrotask, so the tests wait for states, never for time.
  initialDelayMs: 0,
  factor: 2,
  maxDelayMs: 0,
  jitter: 0,
  maxRestarts: 3,
  windowMs: 60_000,
  resetAfterMs: 30_000,
};

export function workerSpec(argv: string[] = ['sleep', '600'], restart: RestartPolicy = POLICY): WorkerSpec {
  return { argv, env: {}, unsetEnv: [], stopSignal: 'SIGTERM', graceMs: 1000, restart };
}

/** A worker as an agent's hello lists it (`adoptable`): running with `pid`, or stopped when `pid` is null. */
export function listedWorker(name: string, spec: WorkerSpec | string, pid: number | null, extra: Partial<HelloWorker> = {}): HelloWorker {
  return {
    name,
    specHash: typeof spec === 'string' ? spec : specHash(spec),
    state: pid === null ? 'stopped' : 'running',
    pid,
    restarts: 2,
    lastExit: null,
    startedAt: 1,
    since: 1,
    message: null,
    spooled: 0,
    acked: 0,
    containment: 'pgroup',
    ...extra,
  };
}

/** A clock a test moves by hand (Gang's injectable `now`). */
export class FakeClock {
  constructor(public ms = 1_000_000) {}
  readonly now = (): number => this.ms;
  advance(ms: number): void {
    this.ms += ms;
  }
}
