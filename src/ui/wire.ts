/**
 * What the web view's API sends, as the page reads it: the one declaration for both sides. The server
 * (server.ts) builds these from the supervisor's own types, so the compiler checks that those still fit;
 * the page (client/app.ts) imports them as types only. No imports here: the page is type-checked with the
 * DOM library and without Node's (tsconfig.ui.json).
 */

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: string | null;
  readonly at: number;
  readonly reason?: string;
}

/** GPU memory and utilisation of a replica's GPUs, and others' processes on them. */
export interface GpuTelemetry {
  readonly at: number;
  readonly memoryUsedMiB: number | null;
  readonly memoryTotalMiB: number | null;
  readonly utilizationPct: number | null;
  readonly others: readonly { readonly pid: number; readonly gpu: number; readonly usedMemoryMiB: number | null; readonly owner: string | null }[];
}

export interface ReplicaStatus {
  readonly name: string;
  readonly group: string;
  readonly node: string;
  readonly state: string;
  readonly pid: number | null;
  readonly restarts: number;
  readonly lastExit: ExitInfo | null;
  readonly gpus: readonly number[];
  readonly startedAt: number | null;
  readonly since: number;
  readonly message: string | null;
  readonly adopted?: boolean;
  readonly containment?: string;
  /** Absent when the node has no nvidia-smi. */
  readonly gpu?: GpuTelemetry;
  /** A gang's members, one per node (rank 0 on the leader). */
  readonly ranks?: readonly { readonly name: string; readonly node: string; readonly state: string; readonly pid: number | null }[];
}

export interface TimelineEvent {
  /** Ever increasing in one supervisor's life (the page's key). */
  readonly id: number;
  readonly t: number;
  readonly level: 'info' | 'warn' | 'error';
  readonly kind: string;
  readonly replica?: string;
  readonly node?: string;
  readonly msg: string;
  readonly code?: number | null;
  readonly signal?: string | null;
}

export interface GroupInfo {
  readonly name: string;
  readonly dependsOn: readonly string[];
  readonly replicas: number;
  readonly gpus: number;
  /** Column in the dependency graph (0 = leftmost: nothing depends on it). */
  readonly column: number;
}

/** GET /api/status, and the stream's first `snapshot` event. */
export interface Snapshot {
  readonly cluster: string;
  readonly head: string;
  readonly now: number;
  readonly groups: readonly GroupInfo[];
  readonly controlPlane: readonly ReplicaStatus[];
  readonly replicas: readonly ReplicaStatus[];
  readonly events: readonly TimelineEvent[];
  readonly actions: { readonly replica: readonly string[]; readonly group: readonly string[] };
}

/** The stream's `delta` events. */
export interface Delta {
  readonly now: number;
  /** Replicas (and control plane services) whose status changed, and those that are gone (scaled down). */
  readonly changed: readonly ReplicaStatus[];
  readonly removed: readonly string[];
  readonly events: readonly TimelineEvent[];
}

/** GET /api/replica/NAME. */
export interface ReplicaDetail {
  readonly status: ReplicaStatus;
  readonly history: readonly TimelineEvent[];
  /** Redacted, like env. */
  readonly argv: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd: string | null;
  readonly log: string | null;
  readonly now: number;
}
