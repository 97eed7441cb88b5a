/**
 * A gang: one replica whose engine spans several nodes (a multi-node TensorRT-LLM/SGLang/vLLM worker).
 * Its members (one per node, `<replica>/<rank>`) are ordinary agent workers mirrored by Replica objects,
 * except that an agent never restarts one on its own: the gang is running when every member is, and any
 * member ending stops all the others (signal, grace, kill, on every node) and restarts the gang as a
 * whole, by the group's restart policy, counted once.
 *
 *   pending → starting → running → ready ─(a member ends)→ stopping → backoff → starting …
 *                                                                   ├→ failed (crash-loop limit)
 *   any → stopping → stopped                                        └→ stopped (policy says no)
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { specHash, type ExitInfo, type HelloWorker, type WorkerSpec } from '../agent/protocol.js';
import type { RestartPolicy } from '../config/types.js';
import { Waiters } from './waiters.js';
import { decideRestart, EMPTY_HISTORY, type RestartHistory } from '../agent/restart-policy.js';
import { Replica, type ReplicaEvent, type ReplicaOptions, type ReplicaState, type ReplicaStatus, type Supervised } from './replica.js';
import { exitText } from '../util/exit-text.js';

export interface GangMember {
  readonly rank: number;
  /** The member's Replica options (name `<replica>/<rank>`, its node, agent, log; health on the leader). */
  readonly options: Omit<ReplicaOptions, 'onChange' | 'onEvent' | 'spec'>;
  /** Its spec; null: started only when the leader's mpirun asks (`launch`). */
  readonly spec: WorkerSpec | null;
}

export interface GangOptions {
  readonly name: string;
  readonly group: string;
  readonly gpus: readonly number[];
  readonly restart: RestartPolicy;
  readonly members: readonly GangMember[];
  readonly onChange?: ((status: ReplicaStatus) => void) | undefined;
  readonly onEvent?: ((name: string, event: ReplicaEvent) => void) | undefined;
  /**
   * The spec of the on-demand member of `rank` running `command`, built as `launch` is given it (the
   * supervisor's onDemandSpec): a new supervisor adopts an mpirun's running daemons with it.
   */
  readonly adoptSpec?: ((rank: number, command: string) => WorkerSpec) | undefined;
  /** Injectable for tests. */
  readonly now?: () => number;
  readonly random?: () => number;
}

interface Member {
  readonly rank: number;
  readonly replica: Replica;
  /** Started when the leader's mpirun asks, with the command line it gives (a new one each run). */
  readonly onDemand: boolean;
  spec: WorkerSpec | null;
  /** Started in the current run of the gang (its end then ends the gang's run). */
  live: boolean;
}

export class Gang implements Supervised {
  readonly name: string;
  readonly #o: GangOptions;
  readonly #members: Member[];
  #state: ReplicaState = 'pending';
  #since: number;
  #message: string | null = null;
  #active = false;
  /** Started once: only the first start adopts what an earlier supervisor left running. */
  #begun = false;
  #quiesced = false;
  /** Inside a stop-all-and-restart sequence: member changes are expected, not news. */
  #cycling = false;
  #restarts = 0;
  #history: RestartHistory = EMPTY_HISTORY;
  #startedAt: number | null = null;
  #lastExit: ReplicaStatus['lastExit'] = null;
  #wake = new AbortController();
  readonly #waiters = new Waiters();
  readonly #now: () => number;

  constructor(o: GangOptions) {
    this.#o = o;
    this.name = o.name;
    this.#now = o.now ?? Date.now;
    this.#since = this.#now();
    this.#members = o.members.map((m) => {
      const member: Member = { rank: m.rank, spec: m.spec, onDemand: m.spec === null, live: false, replica: undefined as unknown as Replica };
      (member as { replica: Replica }).replica = new Replica({
        ...m.options,
        spec: () => member.spec!,
        onChange: () => this.#onMemberChange(member),
        // A member's own end is the gang's news (rank-exited); "its policy is never" is ours, not the user's.
        onEvent: (name, ev) => (ev.kind === 'stopped' && ev.reason === 'restart policy is never' ? undefined : o.onEvent?.(name, ev)),
      });
      return member;
    });
  }

  get state(): ReplicaState {
    return this.#state;
  }

  get up(): boolean {
    return (
      this.#leader.replica.up &&
      this.#state !== 'stopping' &&
      this.#members.every((m) => !m.live || m.replica.state === 'running' || m.replica.state === 'ready')
    );
  }

  get logNames(): readonly string[] {
    return this.#members.map((m) => m.replica.name);
  }

  /** The member Replicas (their logs' fatal patterns act on them). */
  get members(): readonly Replica[] {
    return this.#members.map((m) => m.replica);
  }

  launchSpec(): WorkerSpec {
    return this.#leader.spec!;
  }

  get #leader(): Member {
    return this.#members[0]!;
  }

  status(): ReplicaStatus {
    const leader = this.#leader.replica.status();
    return {
      name: this.name,
      group: this.#o.group,
      node: leader.node,
      state: this.#state,
      pid: leader.pid,
      restarts: this.#restarts,
      lastExit: this.#lastExit,
      gpus: this.#o.gpus,
      // Adopted: the leader's start, not this supervisor's.
      startedAt: leader.startedAt ?? this.#startedAt,
      since: this.#since,
      message: this.#message,
      ...(leader.adopted ? { adopted: true } : {}),
      ...(leader.containment ? { containment: leader.containment } : {}),
      ranks: this.#members.map((m) => {
        const s = m.replica.status();
        return { name: s.name, rank: m.rank, node: s.node, state: s.state, pid: s.pid };
      }),
    };
  }

  start(): void {
    if (this.#active) return;
    this.#active = true;
    // Adopting a running gang: its restart count is the one its members' agents were last told.
    const told = this.#o.members.map((m) => m.options.agent.adoptable.find((w) => w.name === m.options.name)?.restarts ?? 0);
    this.#restarts = Math.max(this.#restarts, ...told);
    this.#launch();
    if (!this.#begun) this.#adoptOnDemand();
    this.#begun = true;
  }

  async stop(reason = 'stopped'): Promise<void> {
    this.#active = false;
    this.#wake.abort();
    if (this.#state === 'pending' || this.#state === 'stopped' || this.#state === 'failed') {
      if (this.#state !== 'stopped') this.#set('stopped', reason);
      return;
    }
    this.#set('stopping', reason);
    await this.#stopMembers(reason);
    this.#set('stopped', reason);
  }

  /** Restart now, as a whole, not counted (an operator asked for it). */
  async restart(): Promise<void> {
    if (!this.#active || this.#state === 'failed' || this.#state === 'stopped') {
      this.#active = false;
      this.start();
      return;
    }
    this.#cycling = true;
    this.#wake.abort();
    this.#set('stopping', 'restart requested');
    await this.#stopMembers('restart requested');
    this.#history = EMPTY_HISTORY;
    this.#cycling = false;
    if (this.#active) this.#launch();
    await this.waitFor((g) => g.up || g.state === 'failed' || g.state === 'stopped').catch(() => undefined);
  }

  quiesce(): void {
    this.#quiesced = true;
    this.#wake.abort();
    for (const m of this.#members) m.replica.quiesce();
  }

  async remove(): Promise<void> {
    this.#active = false;
    this.#wake.abort();
    await Promise.all(this.#members.map((m) => m.replica.remove()));
    this.#set('stopped', 'scaled down');
  }

  kill(): void {
    for (const m of this.#members) m.replica.kill();
  }

  waitFor(pred: (g: this) => boolean, signal?: AbortSignal): Promise<void> {
    return this.#waiters.until(() => pred(this), signal);
  }

  /**
   * The leader's mpirun asks for its daemon on the member of `rank`: run `spec` there. Resolves once it
   * runs; rejects when it ended first or the gang is not starting.
   */
  async launch(rank: number, spec: WorkerSpec): Promise<void> {
    const m = this.#members.find((x) => x.rank === rank);
    if (!m || rank === 0) throw new Error(`${this.name} has no node of rank ${rank} to start a daemon on`);
    if (!this.#active || this.#cycling || this.#quiesced) throw new Error(`${this.name} is ${this.#state}, not starting`);
    m.spec = spec;
    m.live = true;
    m.replica.start(this.#restarts);
    await m.replica.waitFor((r) => r.state === 'running' || r.state === 'ready' || r.state === 'stopped' || r.state === 'failed' || !m.live);
    if (m.replica.state !== 'running' && m.replica.state !== 'ready') {
      throw new Error(
        `${m.replica.name} on ${m.replica.status().node} ended before it ran${m.replica.status().message ? `: ${m.replica.status().message}` : ''}`,
      );
    }
  }

  #launch(): void {
    this.#wake = new AbortController();
    this.#startedAt = this.#now();
    this.#set('starting');
    for (const m of this.#members) {
      // Each run's mpirun asks anew, with its own command line: the last run's is never reused.
      if (m.onDemand) {
        m.spec = null;
        continue;
      }
      m.live = true;
      m.replica.start(this.#restarts);
    }
  }

  /**
   * A new supervisor adopting a running mpi gang: the daemons the adopted mpirun had started on the other
   * nodes run on, their command lines known only to their agents (the hello's `command`). Each becomes
   * live again with the spec `launch` gave it, rebuilt from that command: same hash, so its Replica adopts
   * the running process (same pid) instead of starting another. Only with the leader adopted: daemons of
   * an mpirun that is gone end by themselves, and a new mpirun asks for its own. A daemon that no longer
   * runs, or whose spec would differ, is left alone: the leader's mpirun sees it end and the gang restarts.
   */
  #adoptOnDemand(): void {
    const rebuild = this.#o.adoptSpec;
    const leader = this.#running(this.#leader);
    if (!rebuild || !leader || leader.specHash !== specHash(this.#leader.spec!)) return;
    for (const m of this.#members) {
      const w = m.onDemand ? this.#running(m) : undefined;
      if (w?.command === undefined) continue;
      const spec = rebuild(m.rank, w.command);
      if (specHash(spec) !== w.specHash) continue;
      m.spec = spec;
      m.live = true;
      m.replica.start(this.#restarts);
    }
  }

  /** The running worker of member `m` its agent listed when this supervisor reached it, if any. */
  #running(m: Member): HelloWorker | undefined {
    const o = this.#o.members.find((x) => x.rank === m.rank)!.options;
    return o.agent.adoptable.find((w) => w.name === o.name && w.state === 'running' && w.pid !== null);
  }

  async #stopMembers(reason: string): Promise<void> {
    // The leader first: an mpirun (or srun) told to stop takes its remote daemons down in order.
    await this.#leader.replica.stop(reason);
    await Promise.all(this.#members.map((m) => m.replica.stop(reason)));
    for (const m of this.#members) m.live = false;
  }

  #onMemberChange(m: Member): void {
    const s = m.replica.state;
    if (m.live && (s === 'stopped' || s === 'failed') && this.#active && !this.#cycling && !this.#quiesced) {
      m.live = false;
      void this.#memberEnded(m);
      return;
    }
    if (this.#cycling || !this.#active) return this.#notify();
    if (this.#state === 'starting' || this.#state === 'running' || this.#state === 'ready') {
      const live = this.#members.filter((x) => x.live);
      const running = live.every((x) => x.replica.state === 'running' || x.replica.state === 'ready');
      const next: ReplicaState = !running ? 'starting' : this.#leader.replica.state === 'ready' ? 'ready' : 'running';
      if (next !== this.#state) {
        this.#set(next);
        if (next === 'ready') this.#o.onEvent?.(this.name, { kind: 'ready' });
        return;
      }
    }
    this.#notify();
  }

  async #memberEnded(m: Member): Promise<void> {
    this.#cycling = true;
    const s = m.replica.status();
    const exit: ExitInfo = s.lastExit ?? { code: null, signal: null };
    const how = exit.signal ? `was ${exitText(exit)}` : exitText(exit);
    const reason = `${s.name} on ${s.node} ${how}${s.lastExit?.reason ? ` (${s.lastExit.reason})` : ''}`;
    this.#lastExit = { ...exit, at: this.#now(), reason };
    this.#o.onEvent?.(this.name, { kind: 'rank-exited', member: s.name, node: s.node, exit });
    this.#set('stopping', `${reason}: stopping all ${this.#members.length} nodes`);
    await this.#stopMembers(`gang member ${s.name} ended`);
    this.#cycling = false;
    if (!this.#active || this.#quiesced) return;
    const uptime = this.#now() - (this.#startedAt ?? this.#now());
    const decision = decideRestart(this.#o.restart, exit, uptime, this.#history, this.#now(), (this.#o.random ?? Math.random)());
    if (decision.kind === 'fail') {
      this.#active = false;
      this.#set('failed', `${decision.reason}; last: ${reason}`);
      this.#o.onEvent?.(this.name, { kind: 'failed', reason: decision.reason });
      return;
    }
    if (decision.kind === 'stop') {
      this.#active = false;
      this.#set('stopped', `${reason}; ${decision.reason}`);
      this.#o.onEvent?.(this.name, { kind: 'stopped', reason: decision.reason });
      return;
    }
    this.#history = decision.history;
    this.#restarts++;
    this.#set('backoff', `${reason}; restarting in ${decision.delayMs}ms`);
    this.#o.onEvent?.(this.name, { kind: 'restarting', delayMs: decision.delayMs, restarts: this.#restarts });
    const wake = this.#wake;
    await sleep(decision.delayMs, undefined, { signal: wake.signal }).catch(() => undefined);
    if (this.#active && !this.#quiesced && this.#state === 'backoff') this.#launch();
  }

  #set(state: ReplicaState, message: string | null = null): void {
    this.#state = state;
    this.#since = this.#now();
    this.#message = message;
    this.#notify();
  }

  #notify(): void {
    this.#o.onChange?.(this.status());
    this.#waiters.changed();
  }
}
