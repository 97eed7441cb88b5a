/**
 * What each member of a gang replica runs. Pure. A gang is one replica over several whole nodes; its
 * members are the per-node processes, named `<replica>/<rank>` (rank 0 on the leader node):
 *
 *   launch: ranks   every member runs the group's command, with its node rank, the node count and the
 *                   leader's address (env and placeholders); they find each other themselves.
 *   launch: mpi     Slurm: the leader runs one `srun --mpi=pmix` step over the gang's nodes (Slurm starts
 *                   and contains the ranks). Elsewhere: the leader runs `mpirun` over the nodes' addresses;
 *                   Open MPI's daemons on the other nodes are started on request by those nodes' agents
 *                   (members 1.., `onDemand`: their command line is mpirun's, known only when it asks).
 */
import type { RestartPolicy } from '../config/types.js';
import type { ClusterConfig, NodeConfig, ReplicaPlan, WorkerGroup } from '../config/types.js';
import type { WorkerSpec } from '../agent/protocol.js';
import { buildLaunchSpec, type GangRank, type WorkerAuth } from './launch-spec.js';

export interface GangMemberPlan {
  readonly name: string;
  readonly rank: number;
  readonly node: string;
  /** The member's spec; null: started on request of the leader's mpirun (see `onDemandSpec`). */
  readonly spec: WorkerSpec | null;
}

/** A replica is a gang when it spans nodes or is an MPI job. */
export function isGang(group: Pick<WorkerGroup, 'nodesPerReplica' | 'launch'>): boolean {
  return group.nodesPerReplica > 1 || group.launch === 'mpi';
}

export function memberName(replica: string, rank: number): string {
  return `${replica}/${rank}`;
}

/** Members restart only as a gang: the head decides, so the agents must not restart one on its own. */
const MEMBER_RESTART: RestartPolicy = { policy: 'never', initialDelayMs: 0, factor: 1, maxDelayMs: 0, jitter: 0, maxRestarts: 0, windowMs: 0, resetAfterMs: 0 };

type Auth = WorkerAuth | undefined;

export function gangMembers(cluster: ClusterConfig, group: WorkerGroup, plan: ReplicaPlan, auth?: Auth): GangMemberPlan[] {
  const nodes = gangNodes(cluster, plan);
  const memberSpec = (rank: number): WorkerSpec => rankSpec(cluster, group, plan, nodes, rank, auth);
  if (group.launch !== 'mpi') return nodes.map((n, rank) => ({ name: memberName(plan.name, rank), rank, node: n.name, spec: memberSpec(rank) }));

  const leader = memberSpec(0);
  const total = nodes.length * group.ranksPerNode;
  if (nodes[0]!.transport === 'srun') {
    // One Slurm step over the gang's nodes, from inside the allocation (the agent is a step itself): the
    // ranks get the PMIx environment of their own step; the outer job's SLURM_* stay removed from ours.
    const argv = [
      'srun',
      '--overlap',
      `--jobid=${cluster.allocation?.jobId ?? ''}`,
      '--mpi=pmix',
      `--nodes=${nodes.length}`,
      `--nodelist=${nodes.map((n) => n.name).join(',')}`,
      `--ntasks-per-node=${group.ranksPerNode}`,
      `--ntasks=${total}`,
      // One rank gone is the gang gone: Slurm ends the whole step, and the leader's exit restarts the gang.
      '--kill-on-bad-exit=1',
      `--job-name=${plan.name}`,
      ...group.mpiArgs,
      ...leader.argv,
    ];
    return [{ name: memberName(plan.name, 0), rank: 0, node: nodes[0]!.name, spec: { ...leader, argv, keepEnv: ['SLURM_CONF'] } }];
  }
  const argv = [
    'mpirun',
    '--host',
    nodes.map((n) => `${n.address}:${group.ranksPerNode}`).join(','),
    '-np',
    String(total),
    '--map-by',
    `ppr:${group.ranksPerNode}:node`,
    ...group.mpiArgs,
    ...leader.argv,
  ];
  return nodes.map((n, rank) =>
    rank === 0
      ? { name: memberName(plan.name, 0), rank: 0, node: n.name, spec: { ...leader, argv, mpiLauncher: true } }
      : { name: memberName(plan.name, rank), rank, node: n.name, spec: null },
  );
}

/**
 * The spec of an on-demand member: the daemon command line mpirun asked for, run by `sh -c` like ssh
 * would, in the member's environment (its GPUs, rank, NATS and etcd: the ranks it starts inherit it).
 */
export function onDemandSpec(cluster: ClusterConfig, group: WorkerGroup, plan: ReplicaPlan, rank: number, command: string, auth?: Auth): WorkerSpec {
  return { ...rankSpec(cluster, group, plan, gangNodes(cluster, plan), rank, auth), argv: ['sh', '-c', command] };
}

/** The group's spec as the member of `rank` runs it: on its node, with its rank, and never restarted by its agent. */
function rankSpec(cluster: ClusterConfig, group: WorkerGroup, plan: ReplicaPlan, nodes: readonly NodeConfig[], rank: number, auth?: Auth): WorkerSpec {
  const gang: GangRank = { rank, nnodes: nodes.length, leaderHost: nodes[0]!.address };
  return { ...buildLaunchSpec(cluster, group, { ...plan, node: nodes[rank]!.name }, nodes[rank], auth, gang), restart: MEMBER_RESTART };
}

/** The rank of the gang node mpirun calls `host` (the address dynsup gave it, or the node's name). */
export function rankOfHost(cluster: ClusterConfig, plan: ReplicaPlan, host: string): number {
  return gangNodes(cluster, plan).findIndex((n) => n.address === host || n.name === host);
}

function gangNodes(cluster: ClusterConfig, plan: ReplicaPlan): NodeConfig[] {
  return (plan.gangNodes ?? [plan.node]).map((name) => cluster.nodes.find((n) => n.name === name)!);
}

/** The names a replica's output is logged under (`logs`): itself, or its gang's members. */
export function logNamesOf(cluster: ClusterConfig, plan: ReplicaPlan): string[] {
  const group = cluster.groups.find((g) => g.name === plan.group);
  if (!group || !isGang(group)) return [plan.name];
  const first = cluster.nodes.find((n) => n.name === plan.node);
  if (group.launch === 'mpi' && first?.transport === 'srun') return [memberName(plan.name, 0)];
  return (plan.gangNodes ?? [plan.node]).map((_, rank) => memberName(plan.name, rank));
}
