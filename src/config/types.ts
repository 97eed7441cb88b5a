/** The resolved cluster: defaults applied, durations in ms, paths absolute, replicas placed. */
import type { RoleSpec } from '../slurm/roles.js';
import type { SlurmSettings } from '../slurm/sbatch.js';

export type RestartPolicyName = 'always' | 'on-failure' | 'never';

export interface RestartPolicy {
  readonly policy: RestartPolicyName;
  readonly initialDelayMs: number;
  readonly factor: number;
  readonly maxDelayMs: number;
  /** Fraction of the delay added or removed at random (0.1 = ±10%). */
  readonly jitter: number;
  /** Restarts allowed within windowMs before the replica is `failed`; 0 = no limit. */
  readonly maxRestarts: number;
  readonly windowMs: number;
  /** After this much uptime the backoff starts over from initialDelayMs. */
  readonly resetAfterMs: number;
  /** How long a GPU replica waits for its last run's processes to leave its GPUs before it is `blocked`. */
  readonly gpuReleaseTimeoutMs?: number;
  /** Fatal log patterns (regular expressions): a matching output line restarts the replica, as a crash. */
  readonly onLog?: readonly string[];
}

export interface StopPolicy {
  readonly signal: NodeJS.Signals;
  readonly graceMs: number;
}

export interface HealthCheck {
  readonly url: string;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly startPeriodMs: number;
  readonly failureThreshold: number;
}

export interface SshNodeOptions {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly identityFile?: string | undefined;
  readonly knownHosts: string;
  readonly hostKeyCheck: 'strict' | 'accept-new' | 'off';
  /** The node's sshd MaxSessions: accepted for older files, unused (one channel per node, whatever the workers). */
  readonly maxSessions: number;
}

/** How a transport reaches a node. `local` runs on the head itself. */
export type TransportKind = 'local' | 'ssh' | 'srun';

export interface NodeConfig {
  readonly name: string;
  readonly transport: TransportKind;
  readonly gpus: number;
  /** Address other machines reach this node at (for display and health URLs). */
  readonly address: string;
  readonly setup: readonly string[];
  readonly runDir?: string | undefined;
  /** Node.js binary for the agent on the node. */
  readonly node?: string | undefined;
  readonly ssh?: SshNodeOptions | undefined;
}

export interface WorkerGroup {
  readonly name: string;
  /** argv; a string command is `['sh', '-c', command]`. May contain placeholders ({port}, {index}, ...). */
  readonly argv: readonly string[];
  readonly replicas: number;
  readonly gpus: number;
  readonly nodes: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd?: string | undefined;
  readonly port?: number | undefined;
  /** Named ports: replica i gets base + i for each, as DYNSUP_PORT_<NAME> and `{ports.<name>}`. */
  readonly ports?: Readonly<Record<string, number>> | undefined;
  /** Shell commands run on the replica's node before each start / after each exit (output in its log). */
  readonly hooks?: { readonly preStart?: string | undefined; readonly postStop?: string | undefined } | undefined;
  /** `dynsup apply` / `restart --rolling`: replicas of the group replaced at once (default 1). */
  readonly rollout?: { readonly maxUnavailable: number } | undefined;
  readonly restart: RestartPolicy;
  readonly stop: StopPolicy;
  readonly dependsOn: readonly string[];
  readonly health?: HealthCheck | undefined;
  readonly unsetEnv: readonly string[];
  /** Nodes each replica spans; above 1 (or with launch 'mpi') a replica is a gang. */
  readonly nodesPerReplica: number;
  readonly launch: LaunchMode;
  /** launch 'mpi': ranks per node. */
  readonly ranksPerNode: number;
  readonly mpiArgs: readonly string[];
}

export type LaunchMode = 'single' | 'ranks' | 'mpi';

export interface ReplicaPlan {
  readonly name: string;
  readonly group: string;
  readonly index: number;
  readonly node: string;
  readonly gpuIds: readonly number[];
  readonly port?: number | undefined;
  /** The group's named ports for this replica (base + index). */
  readonly ports?: Readonly<Record<string, number>> | undefined;
  /** A gang's nodes in rank order (the first is `node`, the leader); the same GPU indices on each. */
  readonly gangNodes?: readonly string[] | undefined;
}

export interface ServiceConfig {
  readonly enabled: boolean;
  readonly binary: string;
  readonly args: readonly string[];
}

export interface ClusterConfig {
  readonly file: string;
  readonly name: string;
  readonly headAddress: string;
  readonly stateDir: string;
  readonly leaseMs: number;
  readonly nats: ServiceConfig & { readonly port: number; readonly monitorPort: number; readonly jetstream: boolean; readonly workerCredentials: boolean };
  /** `gpuIntervalMs`: GPU telemetry sampling on nodes with GPUs (0 = off). */
  readonly metrics: { readonly enabled: boolean; readonly port: number; readonly gpuIntervalMs: number };
  /** The web view, served on metrics.port (src/ui/). */
  readonly ui: { readonly enabled: boolean };
  readonly logs: { readonly maxBytes: number; readonly keep: number };
  /**
   * `auth`: etcd's authentication on (users root and workers, passwords in the credentials file). `tls`: etcd
   * serves clients over TLS only, with a certificate of the cluster's own CA (controlplane/etcd-tls.ts).
   */
  readonly etcd: ServiceConfig & { readonly port: number; readonly peerPort: number; readonly auth: boolean; readonly tls: boolean };
  readonly nodes: readonly NodeConfig[];
  /** Groups in start order (dependencies first). */
  readonly groups: readonly WorkerGroup[];
  readonly replicas: readonly ReplicaPlan[];
  /** Values that must never be printed (tokens from the environment, env entries that look secret). */
  readonly secrets: readonly string[];
  /** The file's `slurm:` section, resolved (for `dynsup sbatch`). */
  readonly slurm?: (SlurmSettings & { readonly roles: Readonly<Record<string, RoleSpec>> }) | undefined;
  /** Set in Slurm mode: `nodes` are this allocation's (transport srun), the head first. */
  readonly allocation?: SlurmAllocationInfo | undefined;
}

export interface SlurmAllocationInfo {
  readonly jobId?: string | undefined;
  readonly nodes: readonly string[];
  /** Placeholder nodes (validate / sbatch checks before there is an allocation). */
  readonly preview: boolean;
}

export const DEFAULT_UNSET_ENV: readonly string[] = ['SLURM_*', 'PMI_*', 'PMIX_*'];
