/**
 * The resident node agent: one process per node per cluster (per run dir), owning every worker on its
 * node the way a kubelet does. It listens on a unix socket in the run dir; the head reaches it through
 * whatever pipe its transport gives (a direct connection, an ssh channel or an srun step running the
 * bridge), one stream per node.
 *
 * The lease: when the head has sent nothing for `leaseMs` (it pings every quarter lease), the agent stops
 * every worker and, with nothing left to run, exits. One timer per node, no polling.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { cgroupBase, makeBox } from './containment.js';
import { sampleGpus } from './gpu-sampler.js';
import { queryGpus, type GpuSnapshot } from './nvidia-smi.js';
import {
  encodeData,
  encodeMessage,
  FrameDecoder,
  PREAMBLE,
  PROTOCOL_VERSION,
  socketPath,
  type AgentMessage,
  type HeadMessage,
  type LauncherMessage,
} from './protocol.js';
import { Worker, type WorkerHost, type WorkerRecord } from './worker.js';

const DEFAULT_LEASE_MS = 30_000;
/** Output queued on the link beyond which workers' spools are no longer read (backpressure). */
const HIGH_WATER = 4 * 2 ** 20;

export interface DaemonOptions {
  readonly dir: string;
  /** Identifies this agent build (hash of the bundle), reported to the head. */
  readonly build: string;
  /** Command line of this agent's `rsh` mode (Open MPI's remote launcher for mpirun leaders). */
  readonly launcherCommand: string;
}

interface Saved {
  readonly workers: readonly WorkerRecord[];
}

export class AgentDaemon implements WorkerHost {
  readonly #o: DaemonOptions;
  readonly cgroupBase: string | null;
  readonly #workers = new Map<string, Worker>();
  /** Records of an earlier agent process: restart counts and acknowledged offsets carry over. */
  readonly #previous = new Map<string, WorkerRecord>();
  #server: Server | undefined;
  #conn: Socket | undefined;
  #leaseMs = DEFAULT_LEASE_MS;
  #leaseTimer: NodeJS.Timeout | undefined;
  #persistQueued = false;
  /** The GPU sampler (one per node, while a head is connected that asked for it). */
  #gpus: { intervalMs: number; stop: AbortController } | undefined;
  #exiting = false;
  /** Launch requests of mpirun leaders waiting for the head's answer, by id. */
  readonly #launches = new Map<number, Socket>();
  #launchId = 0;
  readonly launcher: WorkerHost['launcher'];
  readonly #done: Promise<void>;
  #resolveDone!: () => void;

  constructor(o: DaemonOptions) {
    this.#o = o;
    mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    // DYNSUP_AGENT_CGROUP=off: the process-group fallback even where cgroups work (tests, diagnosis);
    // =inside: replica cgroups below the agent's own (an srun step's, so that Slurm still owns them).
    const mode = process.env.DYNSUP_AGENT_CGROUP;
    this.cgroupBase = mode === 'off' ? null : cgroupBase(`a-${createHash('sha256').update(o.dir).digest('hex').slice(0, 16)}`, mode === 'inside');
    this.#done = new Promise((r) => (this.#resolveDone = r));
    this.launcher = { command: o.launcherCommand, socket: socketPath(o.dir) };
  }

  /** Serve until shut down or the lease runs out with nothing left to run. */
  async run(): Promise<void> {
    this.#recover();
    const path = socketPath(this.#o.dir);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    try {
      unlinkSync(path);
    } catch {
      /* none */
    }
    const server = createServer((sock) => this.#accept(sock));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    this.#log(`agent pid ${process.pid} listening on ${path} (containment: ${this.cgroupBase ? `cgroup ${this.cgroupBase}` : 'process group'})`);
    this.#armLease();
    await this.#done;
  }

  /** Whatever an agent that died left running is stopped: nobody watches it any more. */
  #recover(): void {
    let saved: Saved;
    try {
      saved = JSON.parse(readFileSync(join(this.#o.dir, 'state.json'), 'utf8')) as Saved;
    } catch {
      return;
    }
    for (const r of saved.workers ?? []) {
      this.#previous.set(r.name, r);
      if (!r.token) continue;
      const box = makeBox(this.cgroupBase, r.name, r.token);
      if (box.alive(r.pid)) {
        this.#log(`${r.name}: pid ${r.pid} was left by an agent that is gone; killing it`);
        box.kill(r.pid);
        this.#previous.set(r.name, { ...r, interrupted: true });
      }
    }
  }

  #accept(sock: Socket): void {
    if (this.#exiting) return void sock.destroy();
    // Right away: a pipe waits for it before its head says hello (everything before it is login noise).
    sock.write(PREAMBLE);
    // The first frame says who connected: a head (hello) or an mpirun launcher (launch).
    const first = new FrameDecoder<HeadMessage | LauncherMessage>({ preamble: false });
    const seen: Buffer[] = [];
    const onFirst = (chunk: Buffer): void => {
      seen.push(chunk);
      let frames;
      try {
        frames = first.push(chunk);
      } catch {
        return void sock.destroy();
      }
      const f = frames[0];
      if (!f) return;
      sock.off('data', onFirst);
      if (f.kind === 'msg' && f.msg.t === 'launch') return this.#launch(sock, f.msg);
      this.#acceptHead(sock, Buffer.concat(seen));
    };
    sock.on('data', onFirst);
    sock.on('error', () => undefined);
  }

  /** Relay a launcher's request to the head; answer it when the head has (or cannot be asked). */
  #launch(sock: Socket, m: Extract<LauncherMessage, { t: 'launch' }>): void {
    const reply = (error?: string): void => {
      if (!sock.destroyed) sock.end(encodeMessage({ t: 'launched', ...(error ? { error } : {}) }));
    };
    if (!this.#conn) return reply('no supervisor is connected to this node right now');
    const id = ++this.#launchId;
    this.#launches.set(id, sock);
    sock.on('close', () => this.#launches.delete(id));
    this.#send({ t: 'launch', id, replica: m.replica, host: m.host, command: m.command });
  }

  #acceptHead(sock: Socket, firstChunk: Buffer): void {
    // A head that reconnects (after a partition, or a new supervisor) replaces the old link, which may
    // be half-open and never close by itself.
    if (this.#conn) {
      this.#log('a new head connection replaces the previous one');
      this.#conn.destroy();
    }
    this.#conn = sock;
    for (const w of this.#workers.values()) w.unstream();
    const decoder = new FrameDecoder<HeadMessage>({ preamble: false });
    let hello = false;
    const onData = (chunk: Buffer): void => {
      this.#armLease();
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        this.#log(`bad frame from head: ${(err as Error).message}`);
        return void sock.destroy();
      }
      for (const f of frames) {
        if (f.kind !== 'msg') continue;
        if (!hello) {
          if (f.msg.t !== 'hello') return void sock.destroy();
          hello = true;
          this.#hello(sock, f.msg);
          continue;
        }
        void this.#handle(f.msg);
      }
    };
    sock.on('data', onData);
    onData(firstChunk);
    sock.on('drain', () => {
      for (const w of this.#workers.values()) w.resumeOutput();
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      if (this.#conn !== sock) return;
      this.#conn = undefined;
      for (const w of this.#workers.values()) w.unstream();
    });
  }

  #hello(sock: Socket, m: Extract<HeadMessage, { t: 'hello' }>): void {
    const hello = { t: 'hello', v: PROTOCOL_VERSION, pid: process.pid, build: this.#o.build, cgroup: this.cgroupBase !== null } as const;
    if (m.v !== PROTOCOL_VERSION) {
      // Refused, never adopted by a head that would misread what we say.
      this.#sendOn(sock, { ...hello, workers: [], error: `protocol version mismatch: the agent speaks ${PROTOCOL_VERSION}, the head ${m.v}` });
      sock.end();
      return;
    }
    this.#leaseMs = m.leaseMs > 0 ? m.leaseMs : DEFAULT_LEASE_MS;
    this.#armLease();
    this.#sampleGpus(m.gpuIntervalMs ?? 0);
    this.#sendOn(sock, { ...hello, workers: [...this.#workers.values()].map((w) => w.helloReport()) });
  }

  async #handle(m: HeadMessage): Promise<void> {
    switch (m.t) {
      case 'ping':
        return this.#send({ t: 'pong' });
      case 'run': {
        let w = this.#workers.get(m.name);
        if (w && w.specHash !== m.specHash) {
          // Another spec (the file changed): the old process goes, the new one starts. One stopped already
          // (dynsup apply stops it first) is not reported stopped again: the head has started it anew.
          if (w.active) await w.stop('spec changed');
          w.spec = m.spec;
          w.specHash = m.specHash;
        }
        const fresh = !w;
        if (!w) {
          const prev = this.#previous.get(m.name);
          // A gang member's name has a '/' (decode-0/1): one flat file per worker all the same.
          w = new Worker(m.name, join(this.#o.dir, `${m.name.replace(/\//g, '@')}.out`), m.spec, m.specHash, this, prev);
          this.#workers.set(m.name, w);
        }
        if (m.restarts !== undefined) w.setRestarts(m.restarts);
        w.stream(m.from < 0 ? w.report().acked : m.from);
        // Running already (adopted), or ended and only re-stated: say so; else starting reports for itself.
        if (!w.active && (m.start || w.interrupted || fresh)) w.start();
        else this.report(w.report());
        return;
      }
      case 'stop': {
        const w = this.#workers.get(m.name);
        if (w) return w.stop(m.reason);
        // Not here (a new agent after the old one died): nothing of it runs; say so, the head waits for it.
        return this.report({
          name: m.name,
          specHash: '',
          state: 'stopped',
          pid: null,
          restarts: this.#previous.get(m.name)?.restarts ?? 0,
          lastExit: null,
          startedAt: null,
          since: Date.now(),
          message: m.reason,
          spooled: 0,
          acked: 0,
          containment: this.cgroupBase ? 'cgroup' : 'pgroup',
        });
      }
      case 'restart':
        return this.#workers.get(m.name)?.restart(m.counted, m.counted ? m.reason : undefined);
      case 'signal':
        return this.#workers.get(m.name)?.signal(m.signal);
      case 'ack':
        return this.#workers.get(m.name)?.ack(m.offset);
      case 'forget': {
        const w = this.#workers.get(m.name);
        if (!w) return;
        await w.stop('removed');
        w.close();
        this.#workers.delete(m.name);
        this.#previous.delete(m.name);
        rmSync(w.spool, { force: true });
        this.persist();
        return;
      }
      case 'launched': {
        const sock = this.#launches.get(m.id);
        this.#launches.delete(m.id);
        if (sock && !sock.destroyed) sock.end(encodeMessage({ t: 'launched', ...(m.error ? { error: m.error } : {}) }));
        return;
      }
      case 'shutdown':
        return this.#shutdown(m.graceMs);
      case 'hello':
        return;
    }
  }

  #sampleGpus(intervalMs: number): void {
    if (this.#gpus?.intervalMs === intervalMs) return;
    this.#gpus?.stop.abort();
    this.#gpus = undefined;
    if (!(intervalMs > 0)) return;
    const stop = new AbortController();
    this.#gpus = { intervalMs, stop };
    void sampleGpus({
      intervalMs,
      signal: stop.signal,
      workers: () => [...this.#workers.values()].map((w) => w.owned()),
      send: (sample) => this.#send({ t: 'gpus', sample }),
      log: (line) => this.#log(line),
    });
  }

  /** SIGTERM (a job's end, a node's shutdown): stop every worker gracefully, then exit; state is kept. */
  async terminate(why: string): Promise<void> {
    if (this.#exiting) return;
    this.#exiting = true;
    this.#gpus?.stop.abort();
    clearTimeout(this.#leaseTimer);
    this.#log(`${why}: stopping every worker`);
    await Promise.all([...this.#workers.values()].map((w) => w.stop(why, true)));
    this.#writeState();
    this.#server?.close();
    this.#conn?.destroy();
    this.#resolveDone();
  }

  async #shutdown(_graceMs: number): Promise<void> {
    this.#exiting = true;
    this.#gpus?.stop.abort();
    clearTimeout(this.#leaseTimer);
    await Promise.all([...this.#workers.values()].map((w) => w.stop('cluster stopping')));
    for (const w of this.#workers.values()) w.close();
    this.#send({ t: 'bye' });
    this.#server?.close();
    const conn = this.#conn;
    await new Promise<void>((r) => (conn ? conn.end(r) : r()));
    try {
      unlinkSync(socketPath(this.#o.dir));
    } catch {
      /* gone */
    }
    rmSync(this.#o.dir, { recursive: true, force: true });
    this.#resolveDone();
  }

  #armLease(): void {
    clearTimeout(this.#leaseTimer);
    if (this.#exiting) return;
    this.#leaseTimer = setTimeout(() => void this.#leaseExpired(), this.#leaseMs);
  }

  async #leaseExpired(): Promise<void> {
    const live = [...this.#workers.values()].filter((w) => w.active);
    if (live.length) this.#log(`lease expired (no word from the head for ${this.#leaseMs / 1000}s): stopping ${live.map((w) => w.name).join(', ')}`);
    await Promise.all(live.map((w) => w.stop(`lease expired: no word from the head for ${this.#leaseMs / 1000}s`, true)));
    // Heard from the head meanwhile: carry on (the head restarts what it wants running).
    if (this.#conn) return;
    this.#exiting = true;
    this.#gpus?.stop.abort();
    this.#writeState();
    for (const w of this.#workers.values()) w.close();
    this.#server?.close();
    try {
      unlinkSync(socketPath(this.#o.dir));
    } catch {
      /* gone */
    }
    this.#log('nothing left to run and no head: exiting');
    this.#resolveDone();
  }

  // WorkerHost

  queryGpus(): Promise<GpuSnapshot | null> {
    return queryGpus({ timeoutMs: 10_000 });
  }

  readonly #said = new Set<string>();

  firstTime(key: string): boolean {
    if (this.#said.has(key)) return false;
    this.#said.add(key);
    return true;
  }

  sendData(name: string, offset: number, bytes: Buffer): boolean {
    const c = this.#conn;
    if (!c || c.destroyed) return false;
    // Our own high-water mark, not the socket's 16 KiB one: pausing at every chunk until 'drain' made the
    // stream a ping-pong of one read at a time.
    c.write(encodeData(name, offset, bytes));
    return c.writableLength < HIGH_WATER;
  }

  report(w: ReturnType<Worker['report']>): void {
    this.#send({ t: 'state', worker: w });
  }

  event(name: string, event: Extract<AgentMessage, { t: 'event' }>['event']): void {
    this.#send({ t: 'event', name, event });
  }

  persist(): void {
    if (this.#persistQueued) return;
    this.#persistQueued = true;
    setImmediate(() => {
      this.#persistQueued = false;
      this.#writeState();
    });
  }

  #writeState(): void {
    if (this.#exiting && !this.#workers.size) return;
    const saved: Saved = {
      workers: [...new Map([...this.#previous, ...[...this.#workers.values()].map((w) => [w.name, w.record()] as const)]).values()],
    };
    try {
      const f = join(this.#o.dir, 'state.json');
      writeFileSync(`${f}.tmp`, JSON.stringify(saved), { mode: 0o600 });
      renameSync(`${f}.tmp`, f);
    } catch {
      /* the run dir is gone (shutdown) */
    }
  }

  #send(m: AgentMessage): void {
    const c = this.#conn;
    if (c && !c.destroyed) c.write(encodeMessage(m));
  }

  #sendOn(sock: Socket, m: AgentMessage): void {
    if (!sock.destroyed) sock.write(encodeMessage(m));
  }

  #log(line: string): void {
    try {
      appendFileSync(join(this.#o.dir, 'agent.log'), `${new Date().toISOString()} ${line}\n`);
    } catch {
      /* the run dir is gone */
    }
  }
}
