/**
 * `transport: srun`: workers on the nodes of the Slurm allocation dynsup runs in, each as its own job step.
 *
 *   srun --jobid J --overlap --nodes=1 --ntasks=1 -w NODE -J REPLICA ... sh RUNDIR/node-agent.sh RUNDIR REPLICA
 *
 * The node agent runs in pipe mode, so the worker's output is the step's stdout (and srun's); its control
 * lines come on stderr. Being a step keeps the worker inside the job's cgroups and accounting, and it ends
 * with the job whatever happens to dynsup; a restart is a new step. The step keeps the SLURM_* variables
 * srun and slurmstepd need; the agent removes them (the spec's A_UNSET) from the worker's environment only.
 *
 * Runtime files (spec, pid, exit, heartbeat) live in RUNDIR under the state dir, which must be on a
 * filesystem every node of the allocation sees (as the job's working and output directories usually are):
 * the head writes specs and touches the heartbeat there, the agents read them. Signals go to the worker's
 * process group on its node through a short step (`kill -SIG -PGID`); when no step can be created any more
 * (the job is ending), through `scancel --signal` of the worker's step.
 */
import { chmod, copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { DynsupError } from '../util/errors.js';
import { AGENT_PATH, exitFromStatus, parseAgentLine, renderSpec, writeHeartbeat } from './agent.js';
import type { ExitInfo, LaunchSpec, Transport, WorkerProcess } from './types.js';

export interface SrunTransportOptions {
  /** Slurm node name (as in SLURM_JOB_NODELIST). */
  readonly node: string;
  /** The allocation; without one (a command run outside the job) only runtime files are cleaned up. */
  readonly jobId: string | undefined;
  /** Runtime files for this node's replicas, on a filesystem the node shares with the head. */
  readonly runDir: string;
  readonly leaseMs: number;
  /** Environment for srun/scancel (default process.env: inside the job it names the job and slurm.conf). */
  readonly env?: NodeJS.ProcessEnv | undefined;
  /** srun binary (default `srun` on PATH); scancel likewise. */
  readonly srun?: string | undefined;
  readonly scancel?: string | undefined;
  /** More srun options for worker steps. */
  readonly extraArgs?: readonly string[] | undefined;
  readonly onNotice?: ((level: 'info' | 'warn' | 'error', message: string) => void) | undefined;
}

/**
 * stderr lines that say nothing the exit status does not: srun's own chatter, its report of the task's
 * exit, and the agent shell's note that its worker was killed.
 */
const NOISE =
  /lacks support for cpu binding|^srun: (Job step \d+\.\d+ )?(step creation temporarily disabled|Step created for)|^srun: error: \S+: tasks? [\d,-]+: (Exited with exit code \d+|Killed|Terminated)|^(Killed|Terminated|Hangup|Interrupt)$/i;
/** Slurm ending a step (scancel, time limit): worth a line, not a warning. */
const CANCELLED = /\*\*\* (STEP|JOB) \S+ ON \S+ CANCELLED/;

export class SrunTransport implements Transport {
  readonly kind = 'srun' as const;
  readonly node: string;
  readonly #o: SrunTransportOptions;
  readonly #env: NodeJS.ProcessEnv;

  constructor(opts: SrunTransportOptions) {
    this.#o = opts;
    this.node = opts.node;
    this.#env = opts.env ?? process.env;
  }

  get runDir(): string {
    return this.#o.runDir;
  }

  /** Options every step gets: one task on this node, sharing the job's resources with the other steps. */
  #stepArgs(name: string): string[] {
    return [
      `--jobid=${this.#jobId()}`,
      '--overlap',
      '--nodes=1',
      '--ntasks=1',
      `--nodelist=${this.node}`,
      `--job-name=${name}`,
      '--kill-on-bad-exit=0',
      '--quiet',
      // No PMI/PMIx server for the step (the worker is not an MPI rank of ours), the whole environment
      // (an --export=NONE job would otherwise start the step without PATH), no pinning to one core.
      '--mpi=none',
      '--export=ALL',
      '--cpu-bind=none',
    ];
  }

  #jobId(): string {
    if (!this.#o.jobId) throw new DynsupError('E_NODE', `node ${this.node}: not inside a Slurm job (no job id): srun cannot reach it`);
    return this.#o.jobId;
  }

  async connect(signal?: AbortSignal): Promise<void> {
    const dir = this.#o.runDir;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // The node runs its own copy, so only the state dir has to be shared, not the dynsup installation.
    await copyFile(AGENT_PATH, join(dir, 'node-agent.sh'));
    await chmod(join(dir, 'node-agent.sh'), 0o700);
    await this.heartbeat();
    // One step proves that steps start on the node and that it sees the run dir.
    const r = await execa(
      this.#o.srun ?? 'srun',
      [...this.#stepArgs('dynsup-check'), 'sh', '-c', 'test -r "$1/node-agent.sh" && test -r "$1/heartbeat" && echo dynsup-ok', 'sh', dir],
      { env: this.#env, reject: false, timeout: 60_000, stdin: 'ignore', ...(signal ? { cancelSignal: signal } : {}) },
    );
    if (!String(r.stdout).includes('dynsup-ok')) {
      const err = String(r.stderr).trim().split('\n').filter((l) => !NOISE.test(l)).join('; ');
      throw new DynsupError(
        'E_NODE',
        r.exitCode === 1 && !err
          ? `node ${this.node}: cannot see ${dir}: the state dir must be on a filesystem shared by all nodes of the allocation`
          : `node ${this.node}: cannot start a job step: ${err || `srun exited with ${r.exitCode ?? r.signal}`}`,
      );
    }
  }

  async heartbeat(): Promise<void> {
    await writeHeartbeat(this.#o.runDir);
  }

  async launch(spec: LaunchSpec, signal?: AbortSignal): Promise<WorkerProcess> {
    const dir = this.#o.runDir;
    const base = join(dir, spec.replica);
    // No watch pid: the supervisor's pid means nothing on another node. If the supervisor dies, the batch
    // step ends and with it the job and every step; the lease is the second line of defence.
    await writeFile(`${base}.spec`, renderSpec(spec, { mode: 'pipe', leaseSeconds: this.#o.leaseMs / 1000 }), { mode: 0o600 });
    await Promise.all(['exit', 'pid', 'step'].map((ext) => rm(`${base}.${ext}`, { force: true })));
    // The step records its id (for `scancel --signal`, and for people reading squeue) before the agent
    // starts; the agent then drops SLURM_* from the worker's environment.
    const script = 'echo "$SLURM_JOB_ID.$SLURM_STEP_ID" > "$1/$2.step"; echo "dynsup-srun step $SLURM_JOB_ID.$SLURM_STEP_ID" >&2; exec sh "$1/node-agent.sh" "$1" "$2"';
    // detached: Ctrl-C on a terminal reaches the supervisor only, which stops workers in order.
    // node:child_process, not execa: the output must be read from its first byte, and the exit reported
    // only after all of it was read ('close'); execa may tear down a stream it thinks nobody reads.
    const child = spawn(this.#o.srun ?? 'srun', [...this.#stepArgs(spec.replica), ...(this.#o.extraArgs ?? []), 'sh', '-c', script, 'sh', dir, spec.replica], {
      env: this.#env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(signal ? { signal } : {}),
    });
    const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, sig) => resolve({ code, signal: sig })));
    const stderrLines: string[] = [];
    let agentRc: number | undefined;
    let step: string | undefined;
    const pid = await new Promise<number>((resolve, reject) => {
      const rl = createInterface({ input: child.stderr! });
      rl.on('line', (line) => {
        const ev = parseAgentLine(line);
        const st = /^dynsup-srun step (\d+\.\d+)/.exec(line.trim());
        if (st) step = st[1];
        else if (ev?.kind === 'pid') resolve(ev.pid);
        else if (ev?.kind === 'exit') agentRc = ev.rc;
        else if (line.trim() && !NOISE.test(line.trim())) {
          if (stderrLines.length < 20) stderrLines.push(line.trim());
          this.#o.onNotice?.(CANCELLED.test(line) ? 'info' : 'warn', `node ${this.node}: ${spec.replica}: ${line.trim()}`);
        }
      });
      void closed.then(() =>
        reject(new DynsupError('E_LAUNCH', `node ${this.node}: could not start ${spec.replica}: ${stderrLines.join('; ') || 'srun exited before the agent started'}`)),
      );
      child.once('error', (err) => reject(new DynsupError('E_LAUNCH', `node ${this.node}: could not start ${spec.replica}: ${err.message}`, { cause: err })));
    });
    const exited: Promise<ExitInfo> = closed.then(async (result) => {
      if (agentRc !== undefined) return exitFromStatus(agentRc);
      // srun or the agent died before the agent could report: the step may still run; end it, so that an
      // exit always means "nothing of this replica is left".
      if (step) await this.#scancel(step, undefined);
      return { code: result.code, signal: result.signal };
    });
    return {
      pid,
      output: child.stdout!,
      exited,
      kill: async (sig) => this.#signal(pid, sig, step),
    };
  }

  /** Signal the worker's process group on the node; if no step can be started, signal its step instead. */
  async #signal(pgid: number, sig: NodeJS.Signals, step: string | undefined): Promise<void> {
    const name = sig.replace(/^SIG/, '');
    const r = await execa(this.#o.srun ?? 'srun', [...this.#stepArgs('dynsup-signal'), 'sh', '-c', `kill -${name} -${pgid} 2>/dev/null; true`], {
      env: this.#env,
      reject: false,
      timeout: 30_000,
      stdin: 'ignore',
    });
    if (r.exitCode === 0) return;
    if (step && (await this.#scancel(step, name))) return;
    throw new DynsupError('E_NODE', `node ${this.node}: cannot deliver ${sig} to pgid ${pgid}: ${String(r.stderr).trim().split('\n').filter((l) => !NOISE.test(l)).join('; ')}`);
  }

  /** scancel a step (signal = undefined: terminate it). True when scancel accepted it. */
  async #scancel(step: string, signal: string | undefined): Promise<boolean> {
    const r = await execa(this.#o.scancel ?? 'scancel', ['--quiet', ...(signal ? [`--signal=${signal}`] : []), step], {
      env: this.#env,
      reject: false,
      timeout: 30_000,
      stdin: 'ignore',
    });
    return r.exitCode === 0;
  }

  /**
   * Stop whatever runtime files still name as running (one step on the node: TERM the groups, wait up to
   * the grace, KILL), then remove the run dir. Outside the job (or once it ended) Slurm has already
   * killed every step, so only the files go.
   */
  async cleanup(graceSeconds: number): Promise<void> {
    const dir = this.#o.runDir;
    const files = await readdir(dir).catch(() => [] as string[]);
    const live: number[] = [];
    for (const f of files.filter((x) => x.endsWith('.pid'))) {
      const name = f.slice(0, -4);
      if (files.includes(`${name}.exit`)) continue;
      // Only this job's workers: a pid from an earlier job means nothing now (and may be reused).
      const step = (await readFile(join(dir, `${name}.step`), 'utf8').catch(() => '')).trim();
      if (!this.#o.jobId || step.split('.')[0] !== this.#o.jobId) continue;
      const n = Number((await readFile(join(dir, f), 'utf8').catch(() => '')).trim());
      if (Number.isInteger(n) && n > 1) live.push(n);
    }
    if (live.length) {
      const g = live.join(' ');
      const script = `for p in ${g}; do kill -TERM -$p 2>/dev/null; done
i=0
while [ $i -lt ${Math.max(1, graceSeconds) * 10} ]; do
  a=0; for p in ${g}; do kill -0 -$p 2>/dev/null && a=1; done
  [ $a = 0 ] && break; sleep 0.1; i=$((i+1))
done
for p in ${g}; do kill -KILL -$p 2>/dev/null; done; true`;
      await execa(this.#o.srun ?? 'srun', [...this.#stepArgs('dynsup-cleanup'), 'sh', '-c', script], {
        env: this.#env,
        reject: false,
        timeout: (graceSeconds + 30) * 1000,
        stdin: 'ignore',
      }).catch(() => undefined);
    }
    await rm(dir, { recursive: true, force: true });
  }

  async close(): Promise<void> {}
}
