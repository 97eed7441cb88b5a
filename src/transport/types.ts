import type { Readable } from 'node:stream';

/** How a transport reaches a node. `local` runs on the head itself. */
export type TransportKind = 'local' | 'ssh' | 'srun';

/** Everything a transport needs to start one worker process; built by the supervisor, opaque to it after. */
export interface LaunchSpec {
  /** Replica name, unique in the cluster (`prefill-0`). Used for runtime file names on the node. */
  readonly replica: string;
  /** Final argv. A string command has already been turned into `['sh', '-c', cmd]`. */
  readonly argv: readonly string[];
  /** Variables to set in the worker's environment (on top of the node's own environment). */
  readonly env: Readonly<Record<string, string>>;
  /** Glob patterns (`SLURM_*`) of variables removed from the worker's environment before `env` is applied. */
  readonly unsetEnv: readonly string[];
  readonly cwd?: string | undefined;
  /** Grace the node side gives the group after the leader exits before SIGKILL (seconds). */
  readonly graceSeconds: number;
  /** Signal the node side sends the group when its lease runs out. */
  readonly stopSignal: NodeJS.Signals;
}

/** How a process ended. `signal` is set when it was killed by one. */
export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** A running worker as the supervision core sees it, whatever started it. */
export interface WorkerProcess {
  /** pid of the worker on its node; the worker leads its own process group, so this is also the pgid. */
  readonly pid: number;
  /** stdout and stderr of the worker, merged, as raw bytes. Ends after the process exits. */
  readonly output: Readable;
  /** Resolves once the worker has exited and its output stream has ended. Never rejects. */
  readonly exited: Promise<ExitInfo>;
  /** Signal the worker's whole process group. Resolves once the signal was delivered (or the group is gone). */
  kill(signal: NodeJS.Signals): Promise<void>;
}

/**
 * A way to run processes on one node. The supervision core only ever talks to this interface:
 * it knows nothing of pipes, SSH channels or Slurm steps.
 */
export interface Transport {
  readonly kind: TransportKind;
  readonly node: string;
  /** Open the connection (no-op for local). Rejects with a DynsupError naming the node. */
  connect(signal?: AbortSignal): Promise<void>;
  /** Start a worker. Rejects if it could not be started at all (the process never ran). */
  launch(spec: LaunchSpec, signal?: AbortSignal): Promise<WorkerProcess>;
  /** Renew the lease that keeps this node's workers alive (see node-agent.sh). */
  heartbeat(): Promise<void>;
  /** Kill everything dynsup started on the node (including after a supervisor crash) and remove runtime files. */
  cleanup(graceSeconds: number): Promise<void>;
  /** Close connections. Running workers are not touched (their lease keeps them alive until it expires). */
  close(): Promise<void>;
}
