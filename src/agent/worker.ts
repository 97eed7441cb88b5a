/**
 * One replica on its node, owned by the resident agent: start it, see its leader exit at once, apply its
 * restart policy here (no round trip to the head, no login), stop it with signal, grace and kill of
 * everything it started.
 *
 * Output: the worker's stdout and stderr are the replica's spool file itself (opened for append), so the
 * worker never blocks on a slow head and nothing is lost if the agent or the link goes away. The agent
 * reads the spool from the head's offset and streams it; acknowledged bytes are released (punched out).
 * A worker's death is its leader's exit, not the closing of a pipe a grandchild may hold for ever.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, mkdirSync, openSync, readSync, renameSync, watch, writeFileSync, writeSync, type FSWatcher } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { matchesPattern } from '../util/glob.js';
import { decideRestart, EMPTY_HISTORY, type RestartHistory } from './restart-policy.js';
import { makeBox, TOKEN_VAR, type Box } from './containment.js';
import type { AgentEvent, ExitInfo, HelloWorker, WorkerReport, WorkerSpec, WorkerState } from './protocol.js';
import type { GpuSnapshot } from './nvidia-smi.js';
import { exitText } from '../util/exit-text.js';

/** How often the GPU release gate asks nvidia-smi. */
const GPU_POLL_MS = 1000;

const READ_CHUNK = 256 * 1024;
/** Release acknowledged spool in steps this big (a hole keeps offsets valid). */
const RELEASE_STEP = 16 * 2 ** 20;
/** A hook (preStart, postStop) that runs longer than this is killed, and fails. */
const HOOK_TIMEOUT_MS = 10 * 60_000;
/** Fallback read tick for filesystems whose change events do not arrive (NFS written by another host). */
const POLL_MS = 2000;

export interface WorkerHost {
  /** Send an output chunk; false when the link is backed up (stop reading until `resumeOutput`). */
  sendData(name: string, offset: number, bytes: Buffer): boolean;
  report(w: WorkerReport): void;
  event(name: string, ev: AgentEvent): void;
  /** Persist the agent's state (called on every change of a worker). */
  persist(): void;
  readonly cgroupBase: string | null;
  /** nvidia-smi's view of the node (null: no nvidia-smi), for the GPU release gate. */
  queryGpus(): Promise<GpuSnapshot | null>;
  /** True the first time it is called with `key` on this node (things said once per node). */
  firstTime(key: string): boolean;
  /** How an mpirun leader on this node reaches its agent (plm_rsh_agent command line, socket). */
  readonly launcher: { readonly command: string; readonly socket: string };
}

/** Persisted between agent processes, so a restarted agent can clean up what its predecessor left. */
export interface WorkerRecord {
  readonly name: string;
  readonly specHash: string;
  readonly pid: number | null;
  readonly token: string;
  readonly acked: number;
  readonly restarts: number;
  /** Stopped without being asked (lease expired, agent gone): its next start counts as a restart. */
  readonly interrupted?: boolean;
}

export class Worker {
  readonly name: string;
  readonly spool: string;
  spec: WorkerSpec;
  specHash: string;
  #state: WorkerState = 'stopped';
  #since = Date.now();
  #message: string | null = null;
  #pid: number | null = null;
  #startedAt: number | null = null;
  #restarts = 0;
  #lastExit: WorkerReport['lastExit'] = null;
  #history: RestartHistory = EMPTY_HISTORY;
  #child: ChildProcess | undefined;
  #exit: Promise<ExitInfo> | undefined;
  #loop: Promise<void> | undefined;
  #wake = new AbortController();
  #stopping = false;
  #restartAsked: { counted: boolean; reason: string | undefined } | null = null;
  #token = '';
  #box: Box | undefined;
  readonly #host: WorkerHost;
  // Output.
  #fd: number | undefined;
  #size = 0;
  /** Next offset to send to the head; null while no head streams this worker. */
  #sent: number | null = null;
  #acked = 0;
  #released = 0;
  #watcher: FSWatcher | undefined;
  #poll: NodeJS.Timeout | undefined;
  #paused = false;
  #interrupted = false;
  /** Processes of the last run (leader and what was left in its box when it ended): the GPU release gate waits for them. */
  #lastRunPids = new Set<number>();

  constructor(name: string, spool: string, spec: WorkerSpec, specHash: string, host: WorkerHost, previous?: WorkerRecord) {
    this.name = name;
    this.spool = spool;
    this.spec = spec;
    this.specHash = specHash;
    this.#host = host;
    if (previous) {
      this.#restarts = previous.restarts;
      this.#acked = previous.acked;
      this.#interrupted = previous.interrupted === true;
    }
    this.#fd = openSync(spool, 'a+', 0o600);
    this.#size = fstatSync(this.#fd).size;
    this.#released = Math.min(this.#acked, this.#size);
    this.#watcher = watch(spool, { persistent: false }, () => this.pump());
    this.#watcher.on('error', () => undefined);
    this.#poll = setInterval(() => this.pump(), POLL_MS);
    this.#poll.unref();
  }

  get state(): WorkerState {
    return this.#state;
  }

  get active(): boolean {
    return this.#loop !== undefined;
  }

  /** Stopped without being asked (lease, dead agent): to be started again when the head is back. */
  get interrupted(): boolean {
    return this.#interrupted;
  }

  /** Who this worker's processes are (GPU telemetry tells its own from others'). */
  owned(): { name: string; token: string; pid: number | null } {
    return { name: this.name, token: this.#token, pid: this.#pid };
  }

  record(): WorkerRecord {
    return {
      name: this.name,
      specHash: this.specHash,
      pid: this.#pid,
      token: this.#token,
      acked: this.#acked,
      restarts: this.#restarts,
      interrupted: this.#interrupted,
    };
  }

  report(): WorkerReport {
    return {
      name: this.name,
      specHash: this.specHash,
      state: this.#state,
      pid: this.#pid,
      restarts: this.#restarts,
      lastExit: this.#lastExit,
      startedAt: this.#startedAt,
      since: this.#since,
      message: this.#message,
      spooled: this.#size,
      acked: this.#acked,
      containment: this.#host.cgroupBase ? 'cgroup' : 'pgroup',
    };
  }

  /** As the hello lists it: the report, and the command of an `sh -c` worker (a new head adopts an mpirun daemon by it). */
  helloReport(): HelloWorker {
    const [sh, c, command] = this.spec.argv;
    return this.spec.argv.length === 3 && sh === 'sh' && c === '-c' ? { ...this.report(), command: command! } : this.report();
  }

  /** A gang member's restarts are counted by the head (the gang restarts as a whole). */
  setRestarts(n: number): void {
    this.#restarts = n;
  }

  /** Start supervising (no-op while the loop runs). */
  start(): void {
    if (this.#loop) return;
    if (this.#interrupted) this.#restarts++;
    this.#interrupted = false;
    this.#stopping = false;
    this.#loop = this.#run().finally(() => (this.#loop = undefined));
  }

  /** Stop: signal, grace, kill of everything in the worker's box. Resolves once nothing of it runs. */
  async stop(reason: string, interrupted = false): Promise<void> {
    const wasActive = this.#loop !== undefined;
    if (wasActive && interrupted) this.#interrupted = true;
    this.#stopping = true;
    this.#wake.abort();
    if (this.#child) {
      this.#set('stopping', reason);
      await this.#terminate();
    }
    await this.#loop;
    if (wasActive) this.#host.event(this.name, { kind: 'stopped', reason });
    // Always reported, even when it was stopped already: the head waits for this report.
    this.#set('stopped', reason);
  }

  /** Replace the running process now; `counted` makes it count as a crash (an unhealthy worker). */
  async restart(counted: boolean, reason?: string): Promise<void> {
    if (!counted) this.#history = EMPTY_HISTORY;
    if (!this.#loop) return this.start();
    this.#restartAsked = { counted, reason };
    this.#wake.abort();
    if (this.#child) await this.#terminate();
  }

  signal(sig: NodeJS.Signals): void {
    this.#box?.signal(this.#pid, sig);
  }

  /** The head wants output from `from` on (its offset; never before what was released). */
  stream(from: number): void {
    this.#sent = Math.max(from, this.#released);
    this.pump();
  }

  unstream(): void {
    this.#sent = null;
  }

  ack(offset: number): void {
    if (offset <= this.#acked) return;
    this.#acked = Math.min(offset, this.#size);
    const upTo = Math.floor(this.#acked / 4096) * 4096;
    if (upTo - this.#released >= RELEASE_STEP) {
      this.#released = upTo;
      // The spool only holds what the head has not yet logged; a chatty worker cannot fill the disk.
      execFile('fallocate', ['-p', '-o', '0', '-l', String(upTo), this.spool], () => undefined);
    }
  }

  /** The link can take more output again. */
  resumeOutput(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.pump();
  }

  /** Send what the head has not seen yet, while the link takes it. */
  pump(): void {
    if (this.#fd === undefined || this.#sent === null || this.#paused) return;
    for (;;) {
      try {
        this.#size = Math.max(this.#size, fstatSync(this.#fd).size);
      } catch {
        return;
      }
      if (this.#sent >= this.#size) return;
      const len = Math.min(READ_CHUNK, this.#size - this.#sent);
      const buf = Buffer.allocUnsafe(len);
      const n = readSync(this.#fd, buf, 0, len, this.#sent);
      if (n <= 0) return;
      const at = this.#sent;
      this.#sent += n;
      if (!this.#host.sendData(this.name, at, buf.subarray(0, n))) {
        this.#paused = true;
        return;
      }
    }
  }

  /** Release the spool's file handles (forget / shutdown). */
  close(): void {
    this.#watcher?.close();
    clearInterval(this.#poll);
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
    this.#box?.dispose();
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      this.#wake = new AbortController();
      this.#set('starting');
      if (!(await this.#gpuGate())) break;
      const launchedAt = Date.now();
      let exit: ExitInfo;
      let failedStart: string | undefined;
      try {
        exit = await this.#launchAndWait();
      } catch (err) {
        failedStart = err instanceof Error ? err.message : String(err);
        this.#host.event(this.name, { kind: 'launch-failed', error: failedStart });
        exit = { code: 127, signal: null };
      }
      const uptime = Date.now() - launchedAt;
      const asked = this.#restartAsked;
      this.#restartAsked = null;
      const reason = asked?.reason ?? (failedStart?.startsWith('preStart') ? failedStart : undefined);
      this.#lastExit = { ...exit, at: Date.now(), ...(reason ? { reason } : {}) };
      if (this.#stopping) break;
      if (asked && !asked.counted) continue;
      const decision = decideRestart(this.spec.restart, exit, uptime, this.#history, Date.now(), Math.random());
      if (decision.kind === 'fail') {
        this.#set('failed', decision.reason);
        this.#host.event(this.name, { kind: 'failed', reason: decision.reason });
        return;
      }
      if (decision.kind === 'stop') {
        this.#set('stopped', decision.reason);
        this.#host.event(this.name, { kind: 'stopped', reason: decision.reason });
        return;
      }
      this.#history = decision.history;
      this.#restarts++;
      this.#set('backoff', `${asked?.reason ? `${asked.reason}; ` : ''}restarting in ${decision.delayMs}ms`);
      this.#host.event(this.name, { kind: 'restarting', delayMs: decision.delayMs, restarts: this.#restarts });
      await sleep(decision.delayMs, undefined, { signal: this.#wake.signal }).catch(() => undefined);
    }
    // Left because stop() was asked: it reports `stopped` itself once this loop is over. Reporting it here
    // too made two `stopped` reports; the head, already starting the replica anew on the first (apply's
    // stop-then-start), took the second for a stop of the new run.
  }

  #env(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    const keep = this.spec.keepEnv ?? [];
    for (const [k, v] of Object.entries(process.env)) if (keep.includes(k) || !this.spec.unsetEnv.some((p) => matchesPattern(k, p))) env[k] = v;
    delete env.DYNSUP_AGENT_CGROUP;
    const mpi = this.spec.mpiLauncher
      ? {
          OMPI_MCA_plm_rsh_agent: this.#host.launcher.command,
          // Only mpirun launches daemons (through us); a tree of orteds launching each other would need the
          // launcher on every node, for no gain at gang sizes.
          OMPI_MCA_plm_rsh_no_tree_spawn: '1',
          // Without it the remote orted daemonizes (fine for ssh, whose session may end): it must stay the
          // member's process, so that its end is the gang's and its children stay in its box.
          OMPI_MCA_orte_leave_session_attached: '1',
          DYNSUP_AGENT_SOCKET: this.#host.launcher.socket,
        }
      : {};
    return { ...env, ...this.spec.env, ...this.#files(), ...mpi, [TOKEN_VAR]: this.#token };
  }

  /** spec.files written under the run dir (beside the spools): variable → path. */
  #files(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [name, content] of Object.entries(this.spec.files ?? {})) {
      const dir = join(dirname(this.spool), 'files');
      const file = join(dir, createHash('sha256').update(content).digest('hex').slice(0, 24));
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      // Whole or not at all: a worker starting meanwhile never reads half a file.
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, content, { mode: 0o600 });
      renameSync(tmp, file);
      out[name] = file;
    }
    return out;
  }

  async #launchAndWait(): Promise<ExitInfo> {
    this.#token = `${this.name}.${randomBytes(8).toString('hex')}`;
    this.#box?.dispose();
    this.#box = makeBox(this.#host.cgroupBase, this.name, this.#token);
    const box = this.#box;
    const argv = box.wrap(this.spec.argv);
    const out = this.#fd!;
    if (this.spec.preStart !== undefined) {
      const r = await this.#hook('preStart', this.spec.preStart);
      if (r !== null) throw new Error(`preStart ${r}`);
    }
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: this.spec.cwd || undefined,
      env: this.#env(),
      // setsid: the worker leads its own process group, so its pid is also the group to signal.
      detached: true,
      stdio: ['ignore', out, out],
    });
    const exit = new Promise<ExitInfo>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    // spawn reports ENOENT/EACCES through 'error' with no pid.
    if (child.pid === undefined) {
      await exit;
      throw new Error(`cannot start ${this.spec.argv[0]}`);
    }
    this.#child = child;
    this.#exit = exit;
    this.#pid = child.pid;
    this.#startedAt = Date.now();
    this.#set('running');
    this.#host.event(this.name, { kind: 'started', pid: child.pid, at: this.#startedAt });
    // Asked to stop while starting: stop() saw no process.
    if (this.#stopping || this.#restartAsked) void this.#terminate();
    const result = await exit.catch((err: Error): ExitInfo => {
      this.#host.event(this.name, { kind: 'launch-failed', error: err.message });
      return { code: 127, signal: null };
    });
    // The leader is gone: whatever it left behind (children holding GPUs, a setsid grandchild holding
    // the spool) goes too, then the spool is read to its end.
    // Only a GPU replica's restart waits for them: no /proc sweep at every exit of the others.
    if (this.spec.gpuRelease?.gpus.length) this.#lastRunPids = new Set([child.pid, ...box.pids(child.pid)]);
    if (box.alive(child.pid)) {
      box.kill(child.pid);
      await waitGone(box, child.pid, 5000);
    }
    this.#child = undefined;
    this.#exit = undefined;
    this.#pid = null;
    this.#endLine();
    this.pump();
    this.#host.event(this.name, { kind: 'exited', exit: result, uptimeMs: Date.now() - (this.#startedAt ?? Date.now()), at: Date.now() });
    // After the exit is known, before the next start (or before a stop completes): cleaning up what the
    // worker left (shared memory segments, lock files) is the hook's job.
    if (this.spec.postStop !== undefined) await this.#hook('postStop', this.spec.postStop);
    return result;
  }

  /**
   * Run a hook with `sh -c` on this node: the worker's environment and cwd, output into the spool (so the
   * replica's log), its own process group (killed past HOOK_TIMEOUT_MS). Null when it succeeded, else how
   * it failed.
   */
  async #hook(which: 'preStart' | 'postStop', command: string): Promise<string | null> {
    const out = this.#fd;
    if (out === undefined) return 'not run: the spool is closed';
    const child = spawn('/bin/sh', ['-c', command], { cwd: this.spec.cwd || undefined, env: this.#env(), detached: true, stdio: ['ignore', out, out] });
    const timer = setTimeout(() => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, HOOK_TIMEOUT_MS);
    const result = await new Promise<string | null>((resolve) => {
      child.once('error', (err) => resolve(`could not be run: ${err.message}`));
      child.once('exit', (code, signal) => resolve(code === 0 ? null : exitText({ code, signal })));
    });
    clearTimeout(timer);
    this.#endLine();
    this.pump();
    if (result !== null && which === 'postStop') this.#host.event(this.name, { kind: 'hook-failed', hook: which, error: result });
    return result;
  }

  /**
   * Before the worker starts again on its GPUs: wait until nvidia-smi shows none of the last run's
   * processes on them (a driver can take a while to free a dead process's memory, and a child that
   * escaped holds it for good), up to gpuRelease.timeoutMs; past it, report `blocked` (naming the GPU and
   * pid) and keep waiting rather than start into an out-of-memory. False when asked to stop meanwhile.
   */
  async #gpuGate(): Promise<boolean> {
    const gate = this.spec.gpuRelease;
    const ours = this.#lastRunPids;
    if (!gate || !gate.gpus.length || !ours.size) return true;
    const started = Date.now();
    let said = '';
    for (;;) {
      let snap: GpuSnapshot | null;
      try {
        snap = await this.#host.queryGpus();
      } catch (err) {
        snap = null;
        if (this.#host.firstTime(`gpu-error:${(err as Error).message}`)) {
          this.#host.event(this.name, { kind: 'gpu-unchecked', reason: `nvidia-smi failed: ${(err as Error).message}` });
        }
      }
      if (snap === null) {
        if (this.#host.firstTime('gpu-unchecked')) this.#host.event(this.name, { kind: 'gpu-unchecked', reason: 'no nvidia-smi on the node' });
        this.#lastRunPids = new Set();
        return true;
      }
      const held = snap.processes.find((p) => gate.gpus.includes(p.gpuIndex) && ours.has(p.pid));
      if (!held) {
        if (said) this.#host.event(this.name, { kind: 'gpu-released', waitedMs: Date.now() - started });
        this.#lastRunPids = new Set();
        return true;
      }
      const waited = Date.now() - started;
      if (waited >= gate.timeoutMs) {
        if (said !== 'blocked') {
          said = 'blocked';
          this.#set('blocked', `blocked: GPU ${held.gpuIndex} still held by pid ${held.pid} (waited ${Math.round(waited / 1000)}s, restart.gpuReleaseTimeout)`);
          this.#host.event(this.name, { kind: 'gpu-blocked', gpu: held.gpuIndex, pid: held.pid, waitedMs: waited });
        }
      } else if (!said) {
        said = 'waiting';
        this.#set('starting', `waiting for GPU ${held.gpuIndex} to be released by pid ${held.pid} (the last run's)`);
        this.#host.event(this.name, { kind: 'gpu-wait', gpu: held.gpuIndex, pid: held.pid });
      }
      await sleep(GPU_POLL_MS, undefined, { signal: this.#wake.signal }).catch(() => undefined);
      if (this.#stopping) return false;
      if (this.#wake.signal.aborted) this.#wake = new AbortController();
    }
  }

  /** A worker killed mid-line must not have the next run's first line glued to its last one. */
  #endLine(): void {
    if (this.#fd === undefined) return;
    try {
      const size = fstatSync(this.#fd).size;
      if (size === 0) return;
      const last = Buffer.alloc(1);
      readSync(this.#fd, last, 0, 1, size - 1);
      if (last[0] !== 10) writeSync(this.#fd, '\n');
    } catch {
      /* the disk refused: the line stays open */
    }
  }

  async #terminate(): Promise<void> {
    const box = this.#box;
    const pid = this.#pid;
    const exit = this.#exit;
    if (!box || !exit) return;
    box.signal(pid, this.spec.stopSignal);
    const exited = await Promise.race([
      exit.then(
        () => true,
        () => true,
      ),
      sleep(this.spec.graceMs, false),
    ]);
    if (!exited || box.alive(pid)) {
      if (!exited) this.#host.event(this.name, { kind: 'stop-escalated', graceMs: this.spec.graceMs });
      box.kill(pid);
    }
    await exit.catch(() => undefined);
  }

  #set(state: WorkerState, message: string | null = null): void {
    this.#state = state;
    this.#since = Date.now();
    this.#message = message;
    this.#host.report(this.report());
    this.#host.persist();
  }
}

async function waitGone(box: Box, pgid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (box.alive(pgid)) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}
