/**
 * The head's side of one node's agent: one stream (through the node's AgentPipe), the handshake, pings that
 * keep the agent's lease, per-replica output with offsets and acknowledgements, and reconnection. On every
 * (re)connect each wanted replica is sent `run` again with the offset the head has logged up to: the agent
 * adopts what already runs with the same spec and streams from there, so no line is lost or repeated.
 */
import { setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  encodeMessage,
  FrameDecoder,
  PROTOCOL_VERSION,
  specHash,
  type AgentEvent,
  type AgentMessage,
  type HeadMessage,
  type HelloWorker,
  type NodeGpuSample,
  type WorkerReport,
  type WorkerSpec,
} from '../agent/protocol.js';
import { DynsupError, errorMessage } from '../util/errors.js';
import type { AgentPipe, AgentStream } from './types.js';

/** Queued output bytes (not yet in the log) beyond which the head stops reading the node's stream. */
const HEAD_HIGH_WATER = 8 * 2 ** 20;

export interface ReplicaSink {
  report(r: WorkerReport): void;
  event(ev: AgentEvent): void;
  /** Write output to the log; resolves once it is handed to the OS (then it is acknowledged). `end`: its end's spool offset. */
  data(bytes: Buffer, end: number): Promise<void>;
  /** Where the log ends in the worker's spool, when it knows (ReplicaLog.resumeOffset): where an adoption resumes. */
  resumeFrom?(): number | undefined;
}

interface Wanted {
  spec: WorkerSpec;
  hash: string;
  sink: ReplicaSink;
  /** Spool offset logged so far; -1: unknown yet (a new supervisor: the agent's acknowledged offset). */
  received: number;
  queue: Promise<void>;
  queued: number;
  last: WorkerReport | undefined;
  stopWaiters: Set<() => void>;
  /** Stopped on request: not run again on a reconnect. */
  stopped: boolean;
}

/** An mpirun leader's request (relayed by its node's agent) to start `command` on its gang's node `host`. */
export interface LaunchRequest {
  readonly replica: string;
  readonly host: string;
  readonly command: string;
  /** The node the request came from. */
  readonly from: string;
}

export interface NodeAgentOptions {
  readonly pipe: AgentPipe;
  readonly cluster: string;
  readonly leaseMs: number;
  /** Ask the agent for GPU samples this often (0: none). */
  readonly gpuIntervalMs?: number | undefined;
  readonly onNotice?: ((level: 'info' | 'warn' | 'error', message: string) => void) | undefined;
}

export class NodeAgent {
  readonly node: string;
  readonly #o: NodeAgentOptions;
  readonly #wanted = new Map<string, Wanted>();
  #stream: AgentStream | undefined;
  #connected: Promise<void> | undefined;
  #closing = false;
  #lostSince: number | null = null;
  #ping: NodeJS.Timeout | undefined;
  #paused = false;
  #wake = new AbortController();
  #onUp = new Set<() => void>();
  /** The cluster is stopping: reconnect only to an agent that still runs, never start one. */
  #quiesced = false;
  /** Stopping, and the agent could not be reached again: every wait gives up at once. */
  #gone = false;
  /** Starts what an mpirun leader on this node asks for on another node of its gang; resolves to an error or undefined. */
  #launchHandler: ((req: LaunchRequest) => Promise<string | undefined>) | undefined;
  /** What the agent ran when this head first reached it (adoption); with commands: never to be shown. */
  adoptable: readonly HelloWorker[] = [];
  /**
   * Names whose first run may resume at the log's end (#resumeAt): only that first run is an adoption. A
   * replica forgotten and wanted again later (scale down, up) gets a fresh spool from the agent.
   */
  #resumable = new Set<string>();
  /** The agent's pid and whether it contains workers in cgroups (status, tests). */
  agentPid = 0;
  cgroup = false;
  /** The node's latest GPU sample (null: none yet, or no nvidia-smi there). */
  gpus: NodeGpuSample | null = null;

  constructor(o: NodeAgentOptions) {
    this.#o = o;
    this.node = o.pipe.node;
  }

  get kind(): AgentPipe['kind'] {
    return this.#o.pipe.kind;
  }

  get connected(): boolean {
    return this.#stream !== undefined;
  }

  /** First connection: starts the agent if needed. Rejects (naming the node) when it cannot be reached. */
  async connect(signal?: AbortSignal): Promise<void> {
    const hello = await this.#open(true, signal);
    this.#adopting(hello.workers);
  }

  #adopting(workers: readonly HelloWorker[]): void {
    this.adoptable = workers;
    this.#resumable = new Set(workers.map((w) => w.name));
  }

  /** Connect only to an agent that runs already (cleanup after a crash); false when none does. */
  async connectExisting(signal?: AbortSignal): Promise<boolean> {
    const stream = await this.#o.pipe.open({ spawn: false, signal });
    if (!stream) return false;
    const hello = await this.#open(false, signal, stream);
    this.#adopting(hello.workers);
    return true;
  }

  async #open(spawn: boolean, signal?: AbortSignal, opened?: AgentStream): Promise<Extract<AgentMessage, { t: 'hello' }>> {
    const stream = opened ?? (await this.#o.pipe.open({ spawn, signal }));
    if (!stream) throw new DynsupError('E_NODE', `node ${this.node}: no agent runs there`);
    const decoder = new FrameDecoder<AgentMessage>({ preamble: true });
    let helloResolve!: (m: Extract<AgentMessage, { t: 'hello' }>) => void;
    let helloReject!: (e: Error) => void;
    const hello = new Promise<Extract<AgentMessage, { t: 'hello' }>>((res, rej) => ((helloResolve = res), (helloReject = rej)));
    let gotHello = false;
    stream.input.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        this.#o.onNotice?.('error', `node ${this.node}: ${errorMessage(err)}`);
        stream.destroy();
        return;
      }
      for (const f of frames) {
        if (f.kind === 'data') this.#data(f.name, f.offset, f.bytes);
        else if (!gotHello) {
          if (f.msg.t !== 'hello') continue;
          gotHello = true;
          helloResolve(f.msg);
        } else this.#message(f.msg);
      }
    });
    const closed = new Promise<void>((r) => {
      stream.input.once('close', r);
      stream.input.once('end', r);
      stream.input.once('error', r);
    });
    void closed.then(() => {
      if (!gotHello) {
        const said = stream.noise?.().trim().split('\n').slice(-5).join('; ');
        helloReject(new DynsupError('E_NODE', `node ${this.node}: the agent closed the connection before its hello${said ? ` (${said})` : ''}`));
      }
      if (this.#stream === stream) this.#lost();
    });
    stream.output.on('error', () => stream.destroy());
    stream.output.write(
      encodeMessage({
        t: 'hello',
        v: PROTOCOL_VERSION,
        cluster: this.#o.cluster,
        node: this.node,
        leaseMs: this.#o.leaseMs,
        gpuIntervalMs: this.#o.gpuIntervalMs ?? 0,
      }),
    );
    const timeout = setTimeout(() => helloReject(new DynsupError('E_NODE', `node ${this.node}: no hello from the agent within 60s`)), 60_000);
    let h: Extract<AgentMessage, { t: 'hello' }>;
    try {
      h = await hello;
    } catch (err) {
      stream.destroy();
      throw err;
    } finally {
      clearTimeout(timeout);
    }
    if (h.error || h.v !== PROTOCOL_VERSION) {
      stream.destroy();
      throw new DynsupError(
        'E_NODE',
        `node ${this.node}: the running agent (pid ${h.pid}) speaks protocol ${h.v}, this dynsup ${PROTOCOL_VERSION}: ` +
          `refusing to take over its workers. Stop it with the dynsup version that started it (dynsup down), then retry.`,
      );
    }
    this.agentPid = h.pid;
    this.cgroup = h.cgroup;
    this.#stream = stream;
    this.#lostSince = null;
    clearInterval(this.#ping);
    // A quarter lease: three pings can be lost before the agent gives up on us.
    this.#ping = setInterval(() => this.#send({ t: 'ping' }), Math.max(200, Math.floor(this.#o.leaseMs / 4)));
    this.#ping.unref();
    // The report alone: a replica keeps its last report, and a command there could end up shown.
    for (const { command: _command, ...w } of h.workers) this.#wanted.get(w.name)?.sink.report(w);
    // Stopping: nothing is (re)started, whatever the agent reports.
    if (!this.#quiesced) for (const [name, w] of this.#wanted) if (!w.stopped) this.#sendRun(name, w, false);
    for (const f of [...this.#onUp]) f();
    return h;
  }

  #lost(): void {
    this.#stream = undefined;
    clearInterval(this.#ping);
    this.#paused = false;
    if (this.#closing) return;
    this.#lostSince = Date.now();
    if (this.#quiesced) {
      // Stopping (a job being cancelled, a lab torn down): one quick try at an agent that still runs.
      this.#connected ??= this.#open(false, AbortSignal.timeout(3000))
        .then(
          () => undefined,
          () => this.#giveUp(),
        )
        .finally(() => (this.#connected = undefined));
      return;
    }
    this.#o.onNotice?.('warn', `node ${this.node}: connection to the agent lost; reconnecting`);
    this.#connected ??= this.#reconnect().finally(() => (this.#connected = undefined));
  }

  async #reconnect(): Promise<void> {
    let delay = 250;
    const lostAt = this.#lostSince ?? Date.now();
    while (!this.#closing) {
      try {
        await this.#open(!this.#quiesced, AbortSignal.timeout(30_000));
        this.#o.onNotice?.('info', `node ${this.node}: reconnected after ${((Date.now() - lostAt) / 1000).toFixed(1)}s`);
        return;
      } catch (err) {
        if (this.#closing) return;
        if (err instanceof DynsupError && /protocol/.test(err.message)) this.#o.onNotice?.('error', err.message);
        await sleep(delay, undefined, { signal: this.#wake.signal }).catch(() => undefined);
        delay = Math.min(delay * 2, 3000);
      }
    }
  }

  #giveUp(): void {
    this.#gone = true;
    for (const w of this.#wanted.values()) for (const f of [...w.stopWaiters]) f();
  }

  /** The cluster is stopping: from now on no agent is started, and an agent that is gone is given up on. */
  quiesce(): void {
    this.#quiesced = true;
    if (!this.#stream && !this.#connected) this.#giveUp();
  }

  #send(m: HeadMessage): boolean {
    const s = this.#stream;
    if (!s) return false;
    s.output.write(encodeMessage(m));
    return true;
  }

  #sendRun(name: string, w: Wanted, start: boolean, restarts?: number): void {
    this.#send({ t: 'run', name, spec: w.spec, specHash: w.hash, from: w.received, start, ...(restarts === undefined ? {} : { restarts }) });
  }

  #message(m: AgentMessage): void {
    if (m.t === 'state') {
      const w = this.#wanted.get(m.worker.name);
      if (!w) return;
      w.last = m.worker;
      w.sink.report(m.worker);
      if (m.worker.state === 'stopped' || m.worker.state === 'failed') for (const f of [...w.stopWaiters]) f();
    } else if (m.t === 'event') this.#wanted.get(m.name)?.sink.event(m.event);
    else if (m.t === 'gpus') this.gpus = m.sample;
    else if (m.t === 'launch') {
      const { id, ...req } = m;
      const handler = this.#launchHandler;
      void (handler ? handler({ ...req, from: this.node }) : Promise.resolve('this supervisor takes no launch requests'))
        .catch((err: unknown) => errorMessage(err))
        .then((error) => this.#send({ t: 'launched', id, ...(error ? { error } : {}) }));
    }
  }

  /** Who answers launch requests of mpirun leaders on this node (the supervisor's gangs). */
  onLaunch(handler: (req: LaunchRequest) => Promise<string | undefined>): void {
    this.#launchHandler = handler;
  }

  #data(name: string, offset: number, bytes: Buffer): void {
    const w = this.#wanted.get(name);
    if (!w) return;
    if (w.received < 0) w.received = offset;
    // Already logged (a resend after a reconnect): skip; a gap (released before we asked): accept it.
    if (offset + bytes.length <= w.received) return;
    if (offset < w.received) bytes = bytes.subarray(w.received - offset);
    w.received = Math.max(w.received, offset) + bytes.length;
    const end = w.received;
    w.queued += bytes.length;
    this.#throttle();
    w.queue = w.queue.then(async () => {
      await w.sink.data(bytes, end).catch(() => undefined);
      w.queued -= bytes.length;
      this.#send({ t: 'ack', name, offset: end });
      this.#throttle();
    });
  }

  /** A log that cannot keep up slows the reading of the node's stream (the agent then stops reading spools). */
  #throttle(): void {
    const s = this.#stream;
    if (!s) return;
    let queued = 0;
    for (const w of this.#wanted.values()) queued += w.queued;
    if (!this.#paused && queued > HEAD_HIGH_WATER) {
      this.#paused = true;
      s.input.pause();
    } else if (this.#paused && queued < HEAD_HIGH_WATER / 2) {
      this.#paused = false;
      s.input.resume();
    }
  }

  /**
   * Ask the agent to run (or adopt) a replica; its reports and output go to `sink`. `restarts`: a gang
   * member's count, kept by the head.
   */
  run(name: string, spec: WorkerSpec, sink: ReplicaSink, restarts?: number): void {
    const hash = specHash(spec);
    const prev = this.#wanted.get(name);
    const w: Wanted = {
      spec,
      hash,
      sink,
      // A new supervisor taking over: where the log ends, or else (-1) what the agent had acknowledged.
      received: prev?.received ?? this.#resumeAt(name, hash, sink),
      queue: prev?.queue ?? Promise.resolve(),
      queued: prev?.queued ?? 0,
      last: prev?.last,
      stopWaiters: prev?.stopWaiters ?? new Set(),
      stopped: false,
    };
    this.#wanted.set(name, w);
    this.#sendRun(name, w, true, restarts);
  }

  /**
   * Where a new supervisor asks an adopted worker's output from: where its log file ends in the spool, so
   * that bytes the last supervisor wrote but did not live to acknowledge are not written twice. Only for a
   * running worker of the same spec the agent listed, and only between what it acknowledged and what it
   * had spooled, and only at its first run since this head reached the agent; else -1 (the acknowledged
   * offset: a line may come twice, none is lost).
   */
  #resumeAt(name: string, hash: string, sink: ReplicaSink): number {
    if (!this.#resumable.delete(name)) return -1;
    const listed = this.adoptable.find((x) => x.name === name && x.state === 'running' && x.specHash === hash);
    const at = listed ? sink.resumeFrom?.() : undefined;
    return listed && at !== undefined && at >= listed.acked && at <= listed.spooled ? at : -1;
  }

  /** The agent's last report of a replica this head asked for. */
  last(name: string): WorkerReport | undefined {
    return this.#wanted.get(name)?.last;
  }

  /**
   * Stop a replica. Resolves once the agent reports it stopped, or when the node stayed unreachable for
   * `unreachableMs` (then its agent stops it by itself within the lease): resolves false in that case.
   */
  async stop(name: string, reason: string, unreachableMs: number): Promise<boolean> {
    const w = this.#wanted.get(name);
    if (!w) return true;
    w.stopped = true;
    // Stopping the cluster and the node is not there right now: leave its workers to their lease rather
    // than hold up the rest (a Slurm job being cancelled has KillWait seconds for all of it).
    if (this.#gone || (this.#quiesced && !this.#stream)) return false;
    const done = new Promise<void>((r) => {
      const f = (): void => {
        w.stopWaiters.delete(f);
        r();
      };
      w.stopWaiters.add(f);
    });
    const send = (): void => void this.#send({ t: 'stop', name, reason });
    send();
    // Sent again after a reconnect: a stop must not be lost to a partition.
    this.#onUp.add(send);
    try {
      for (;;) {
        const unreachable = this.#stream ? null : (this.#lostSince ?? Date.now());
        const wait = unreachable === null ? 1000 : Math.max(0, unreachable + unreachableMs - Date.now());
        if (unreachable !== null && wait === 0) return false;
        const stopped = await Promise.race([done.then(() => true), sleep(Math.min(wait, 1000), false)]);
        if (this.#gone || (this.#quiesced && !this.#stream)) return false;
        if (stopped) {
          await w.queue;
          return true;
        }
      }
    } finally {
      this.#onUp.delete(send);
    }
  }

  restart(name: string, counted: boolean, reason: string): boolean {
    return this.#send({ t: 'restart', name, counted, reason });
  }

  signal(name: string, signal: NodeJS.Signals): boolean {
    return this.#send({ t: 'signal', name, signal });
  }

  /** Stop and drop a replica (scaled away, not in the file any more). */
  async forget(name: string, unreachableMs: number): Promise<void> {
    await this.stop(name, 'removed', unreachableMs);
    this.#send({ t: 'forget', name });
    this.#wanted.delete(name);
    this.#resumable.delete(name);
  }

  /** Drop a replica of an earlier supervisor that this one does not want (not in the file any more). */
  forgetUnwanted(name: string): void {
    this.#send({ t: 'forget', name });
  }

  /**
   * Stop everything on the node and remove its runtime files; the agent exits. Bounded: resolves false
   * when the node cannot be reached within `unreachableMs` (its agent stops the workers within the lease).
   */
  async shutdown(graceMs: number, unreachableMs: number): Promise<boolean> {
    if (!this.#stream) {
      // Give a reconnect in progress a chance (unless stopping: then a node away now is left to its lease);
      // no new agent is started only to be stopped.
      const deadline = Date.now() + (this.#quiesced ? 0 : unreachableMs);
      while (!this.#stream && Date.now() < deadline && !this.#closing && !this.#gone) await sleep(100);
      if (!this.#stream) return false;
    }
    const s = this.#stream!;
    const bye = new Promise<boolean>((resolve) => {
      const onClose = (): void => resolve(true);
      s.input.once('close', onClose);
      s.input.once('end', onClose);
    });
    this.#closing = true;
    this.#send({ t: 'shutdown', graceMs });
    const ok = await Promise.race([bye, sleep(graceMs + 60_000, false)]);
    await Promise.all([...this.#wanted.values()].map((w) => w.queue));
    return ok;
  }

  /** Remove the node's run dir (no agent runs there: a crashed cluster's leftovers). */
  async removeRunDir(signal?: AbortSignal): Promise<void> {
    await this.#o.pipe.removeRunDir(signal);
  }

  /** Close the stream; the agent keeps its workers for the lease (a supervisor that exits without down). */
  async close(): Promise<void> {
    this.#closing = true;
    this.#wake.abort();
    clearInterval(this.#ping);
    this.#stream?.output.end();
    this.#stream?.destroy();
    this.#stream = undefined;
    await this.#o.pipe.close();
  }
}

/** One abort signal shared by many node connections (hundreds of listeners are expected, not a leak). */
export function sharedAbort(): AbortController {
  const c = new AbortController();
  setMaxListeners(0, c.signal);
  return c;
}
