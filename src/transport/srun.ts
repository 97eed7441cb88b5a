/**
 * `transport: srun`: nodes of the Slurm allocation dynsup runs in. The node's agent runs as one job step
 * (`srun --overlap -w NODE node dynsup-agent.mjs serve RUNDIR`), so every worker it starts stays inside the
 * job's cgroups and accounting and ends with the job whatever happens to dynsup. The pipe to it is a
 * second, short-lived step running the bridge (`... connect RUNDIR --no-spawn`), one per connection.
 *
 * The run dir is under the state dir, which must be on a filesystem every node of the allocation sees
 * (the agent bundle is copied there); the agent's socket and spools are per node inside it.
 */
import { spawn } from 'node:child_process';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { DynsupError } from '../util/errors.js';
import { AGENT_BUNDLE, agentBundle } from './agent-bundle.js';
import type { AgentPipe, AgentStream } from './types.js';

export interface SrunPipeOptions {
  /** Slurm node name (as in SLURM_JOB_NODELIST). */
  readonly node: string;
  readonly jobId: string | undefined;
  /** Runtime files for this node, on a filesystem the node shares with the head. */
  readonly runDir: string;
  /** Node.js on the nodes (default: the head's own path, as installed alike on a cluster's nodes). */
  readonly nodeBinary?: string | undefined;
  readonly env?: NodeJS.ProcessEnv | undefined;
  readonly srun?: string | undefined;
  readonly onNotice?: ((level: 'info' | 'warn' | 'error', message: string) => void) | undefined;
}

/** srun's own chatter on stderr, not worth a notice. */
const NOISE =
  /lacks support for cpu binding|^srun: (Job step \d+\.\d+ )?(step creation temporarily disabled|Step created for)|^srun: error: \S+: tasks? [\d,-]+: (Exited with exit code \d+|Killed|Terminated)/i;

export class SrunPipe implements AgentPipe {
  readonly kind = 'srun' as const;
  readonly node: string;
  readonly #o: SrunPipeOptions;

  constructor(o: SrunPipeOptions) {
    this.#o = o;
    this.node = o.node;
  }

  get runDir(): string {
    return this.#o.runDir;
  }

  #jobId(): string {
    if (!this.#o.jobId) throw new DynsupError('E_NODE', `node ${this.node}: not inside a Slurm job (no job id): srun cannot reach it`);
    return this.#o.jobId;
  }

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
      // No PMI server, the whole environment (an --export=NONE job would start the step without PATH), no pinning.
      '--mpi=none',
      '--export=ALL',
      '--cpu-bind=none',
    ];
  }

  async #bundle(): Promise<string> {
    const { hash } = agentBundle();
    const file = join(this.#o.runDir, `..`, `agent-${hash}.mjs`);
    await mkdir(this.#o.runDir, { recursive: true, mode: 0o700 });
    await copyFile(AGENT_BUNDLE, file);
    return file;
  }

  async open(opts: { spawn: boolean; signal?: AbortSignal | undefined }): Promise<AgentStream | null> {
    const bundle = await this.#bundle();
    const nodeBin = this.#o.nodeBinary ?? process.execPath;
    const deadline = Date.now() + 60_000;
    let started = false;
    for (;;) {
      const r = await this.#bridge(nodeBin, bundle, opts.signal);
      if (r.stream) return r.stream;
      if (r.code !== 3)
        throw new DynsupError('E_NODE', `node ${this.node}: cannot reach the dynsup agent through a job step: ${r.said || `srun exited with ${r.code}`}`);
      if (!opts.spawn) return null;
      if (!started) {
        this.#startDaemon(nodeBin, bundle);
        started = true;
      }
      if (Date.now() > deadline || opts.signal?.aborted)
        throw new DynsupError('E_NODE', `node ${this.node}: the dynsup agent step did not start (see ${join(this.#o.runDir, 'agent.log')})`);
      await sleep(200);
    }
  }

  /** The agent's own step, detached from us: it outlives a supervisor that dies, until the lease or the job ends. */
  #startDaemon(nodeBin: string, bundle: string): void {
    const log = openSync(join(this.#o.runDir, 'agent-step.log'), 'a', 0o600);
    const child = spawn(this.#o.srun ?? 'srun', [...this.#stepArgs('dynsup-agent'), nodeBin, bundle, 'serve', this.#o.runDir], {
      // Replica cgroups inside the step's own: Slurm keeps accounting for them and kills them with the job.
      env: { ...(this.#o.env ?? process.env), DYNSUP_AGENT_CGROUP: 'inside' },
      detached: true,
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    child.on('error', (err) => this.#o.onNotice?.('error', `node ${this.node}: cannot start the agent step: ${err.message}`));
    child.unref();
  }

  #bridge(nodeBin: string, bundle: string, signal?: AbortSignal): Promise<{ stream?: AgentStream; code?: number | null; said: string }> {
    return new Promise((resolve) => {
      const child = spawn(this.#o.srun ?? 'srun', [...this.#stepArgs('dynsup-bridge'), nodeBin, bundle, 'connect', this.#o.runDir, '--no-spawn', '--lines'], {
        env: this.#o.env ?? process.env,
        stdio: ['pipe', 'pipe', 'pipe'],
        ...(signal ? { signal } : {}),
      });
      let said = '';
      let settled = false;
      child.stderr!.on('data', (d: Buffer) => {
        for (const line of d.toString().split('\n')) {
          const l = line.trim();
          if (!l || NOISE.test(l)) continue;
          if (said.length < 4000) said += `${l}\n`;
          if (settled && !/no agent runs/.test(l)) this.#o.onNotice?.('warn', `node ${this.node}: ${l}`);
        }
      });
      // The bridge's output comes as base64 lines (see dynsup-agent connect --lines).
      const input = new PassThrough({ highWaterMark: 1 << 20 });
      let partial = '';
      const onData = (d: Buffer): void => {
        partial += d.toString('latin1');
        let nl: number;
        while ((nl = partial.indexOf('\n')) >= 0) {
          const line = partial.slice(0, nl).trim();
          partial = partial.slice(nl + 1);
          if (line) input.write(Buffer.from(line, 'base64'));
        }
        if (settled) return;
        settled = true;
        resolve({
          stream: {
            input,
            output: child.stdin!,
            noise: () => said,
            destroy: () => child.kill('SIGTERM'),
          },
          said: '',
        });
      };
      child.stdout!.on('data', onData);
      child.stdout!.once('end', () => input.end());
      child.stdin!.on('error', () => undefined);
      child.once('error', (err) => {
        if (!settled) resolve({ code: 127, said: err.message });
        settled = true;
      });
      child.once('close', (code) => {
        if (!settled) resolve({ code, said: said.trim() });
        settled = true;
      });
    });
  }

  async removeRunDir(): Promise<void> {
    await rm(this.#o.runDir, { recursive: true, force: true });
  }

  async close(): Promise<void> {}
}
