/**
 * `transport: local`: workers on the head itself, each under the node agent (share/node-agent.sh) in pipe
 * mode, so a local worker has the same lease, process-group and cleanup guarantees as a remote one.
 */
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { spawn } from 'node:child_process';
import { DynsupError } from '../util/errors.js';
import { AGENT_PATH, exitFromStatus, parseAgentLine, renderSpec, writeHeartbeat } from './agent.js';
import { killGroup, waitGroupGone } from './process-group.js';
import type { ExitInfo, LaunchSpec, Transport, WorkerProcess } from './types.js';

export interface LocalTransportOptions {
  readonly node: string;
  /** Runtime files (spec, pid, exit, heartbeat) for this node's replicas. */
  readonly runDir: string;
  readonly leaseMs: number;
  /**
   * Stop the workers the moment the supervisor process is gone (default). The control plane sets this
   * to false: NATS and etcd then outlive a crashed supervisor for the lease, so `status` can still read
   * the last known state from etcd.
   */
  readonly watchSupervisor?: boolean;
  /**
   * Append output straight to <logDir>/<replica>.log instead of piping it through the supervisor (the
   * control plane: NATS and etcd must not die of SIGPIPE, nor lose lines, when the supervisor is gone).
   */
  readonly logDir?: string | undefined;
}

export class LocalTransport implements Transport {
  readonly kind = 'local' as const;
  readonly node: string;
  readonly #runDir: string;
  readonly #leaseMs: number;
  readonly #watch: boolean;
  readonly #logDir: string | undefined;

  constructor(opts: LocalTransportOptions) {
    this.node = opts.node;
    this.#runDir = opts.runDir;
    this.#leaseMs = opts.leaseMs;
    this.#watch = opts.watchSupervisor ?? true;
    this.#logDir = opts.logDir;
  }

  async connect(): Promise<void> {
    await mkdir(this.#runDir, { recursive: true, mode: 0o700 });
    await this.heartbeat();
  }

  async heartbeat(): Promise<void> {
    await writeHeartbeat(this.#runDir);
  }

  async launch(spec: LaunchSpec, signal?: AbortSignal): Promise<WorkerProcess> {
    if (this.#logDir) await mkdir(this.#logDir, { recursive: true });
    await writeFile(join(this.#runDir, `${spec.replica}.spec`), renderSpec(spec, {
        mode: this.#logDir ? 'spool' : 'pipe',
        spoolFile: this.#logDir ? join(this.#logDir, `${spec.replica}.log`) : undefined,
        leaseSeconds: this.#leaseMs / 1000,
        watchPid: this.#watch ? process.pid : undefined,
      }), {
      mode: 0o600,
    });
    await rm(join(this.#runDir, `${spec.replica}.exit`), { force: true });
    // detached: the agent leads its own process group, so a Ctrl-C on the terminal reaches only the
    // supervisor, which then stops workers in order instead of all of them dying at once.
    // node:child_process rather than execa here: we need the raw pipe from the first byte, and an exit
    // that is reported only after every byte of output was read ('close', not 'exit').
    const child = spawn('sh', [AGENT_PATH, this.#runDir, spec.replica], { detached: true, stdio: ['ignore', 'pipe', 'pipe'], signal });
    const stderrLines: string[] = [];
    let agentRc: number | undefined;
    const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('close', (code, sig) => resolve({ code, signal: sig })),
    );
    const pid = await new Promise<number>((resolve, reject) => {
      const rl = createInterface({ input: child.stderr });
      rl.on('line', (line) => {
        const ev = parseAgentLine(line);
        if (ev?.kind === 'pid') resolve(ev.pid);
        else if (ev?.kind === 'exit') agentRc = ev.rc;
        else if (stderrLines.length < 20) stderrLines.push(line);
      });
      void closed.then(() =>
        reject(new DynsupError('E_LAUNCH', `node ${this.node}: could not start ${spec.replica}: ${stderrLines.join('; ') || 'agent exited early'}`)),
      );
      child.once('error', (err) => reject(new DynsupError('E_LAUNCH', `node ${this.node}: could not start ${spec.replica}: ${err.message}`, { cause: err })));
    });
    const exited: Promise<ExitInfo> = closed.then(async (result) => {
      if (agentRc !== undefined) return exitFromStatus(agentRc);
      // The agent itself was killed before it could report: its worker may still run; kill it so
      // that an exit always means "nothing of this replica is left".
      await killGroup(pid, 'SIGKILL');
      await waitGroupGone(pid, 2000);
      return { code: result.code, signal: result.signal };
    });
    return {
      pid,
      output: child.stdout,
      exited,
      kill: async (sig) => killGroup(pid, sig),
    };
  }

  async cleanup(graceSeconds: number): Promise<void> {
    const pids = await this.#pids();
    for (const pid of pids) await killGroup(pid, 'SIGTERM');
    await Promise.all(pids.map((pid) => waitGroupGone(pid, graceSeconds * 1000)));
    for (const pid of pids) await killGroup(pid, 'SIGKILL');
    await rm(this.#runDir, { recursive: true, force: true });
  }

  async #pids(): Promise<number[]> {
    const files = await readdir(this.#runDir).catch(() => [] as string[]);
    const pids: number[] = [];
    for (const f of files.filter((f) => f.endsWith('.pid'))) {
      const n = Number((await readFile(join(this.#runDir, f), 'utf8').catch(() => '')).trim());
      if (Number.isInteger(n) && n > 1) pids.push(n);
    }
    return pids;
  }

  async close(): Promise<void> {}
}
