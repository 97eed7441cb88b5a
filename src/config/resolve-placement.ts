/**
 * Resolution step: placement. Every replica on a node (config/placement.ts, the one placement function of
 * validate, up, scale and apply); a previewed Slurm allocation grows until everything fits; the cwd of
 * each group on a local node must exist.
 */
import { previewAllocation, type SlurmAllocation } from '../slurm/allocation.js';
import { resolveRoles } from '../slurm/roles.js';
import { cwdProblem } from './paths.js';
import { place } from './placement.js';
import { shownPath, type Resolution } from './resolve-context.js';
import { slurmRoleSpecs, type ResolvedNodes } from './resolve-nodes.js';
import type { NodeConfig, ReplicaPlan, WorkerGroup } from './types.js';

export interface Placed {
  readonly allocation: SlurmAllocation | undefined;
  readonly nodes: NodeConfig[];
  /** The groups again: a grown preview moves them onto its nodes by their roles. */
  readonly groups: WorkerGroup[];
  readonly replicas: ReplicaPlan[];
}

/** Places the replicas, or reports why they do not fit and returns null. */
export function placeReplicas(r: Resolution, resolved: ResolvedNodes, groups: WorkerGroup[]): Placed | null {
  let { allocation, nodes } = resolved;
  let placed = place(nodes, groups);
  if (!placed.ok && allocation && resolved.autoSized) {
    // Grow the placeholder allocation until everything fits (bounded: a hopeless file fails as it is).
    const roles = slurmRoleSpecs(r.raw);
    for (let n = nodes.length + 1; n <= nodes.length + 1024 && !placed.ok; n++) {
      const grown = previewAllocation(n);
      const roleNodes = resolveRoles(grown.nodes, roles);
      if (!roleNodes.ok) continue;
      const grownNodes = grown.nodes.map((name, i) => ({ ...nodes[0]!, name, address: i === 0 ? resolved.headAddress : name }));
      const grownGroups = groups.map((g) => (roleNodes.nodes.has(g.name) ? { ...g, nodes: roleNodes.nodes.get(g.name)! } : g));
      const p = place(grownNodes, grownGroups);
      if (p.ok) [allocation, nodes, groups, placed] = [grown, grownNodes, grownGroups, p];
    }
  }
  if (!placed.ok) {
    const gpus = nodes[0]?.gpus ?? 0;
    const where = allocation
      ? ` (Slurm allocation: ${allocation.preview ? `${nodes.length} placeholder nodes` : nodes.map((n) => n.name).join(', ')}, ${gpus} GPUs each${gpus ? '' : ': set slurm.gpusPerNode'})`
      : '';
    for (const e of placed.errors) {
      const worker = r.raw.workers[e.group];
      const field =
        worker?.nodesPerReplica !== undefined && e.message.startsWith('not enough whole nodes')
          ? 'nodesPerReplica'
          : worker?.gpus !== undefined
            ? 'gpus'
            : 'replicas';
      r.add(['workers', e.group, field], `${e.message}${where}`);
    }
    return null;
  }
  return { allocation, nodes, groups, replicas: placed.replicas };
}

/**
 * A local group's cwd must exist on this machine; a remote node's cannot be checked from here. A cwd with
 * a placeholder ({replica}...) is one directory per replica: not checked either.
 */
export function checkLocalCwds(r: Resolution, placed: Placed): void {
  const local = new Set(placed.nodes.filter((n) => n.transport === 'local').map((n) => n.name));
  for (const g of placed.groups) {
    if (g.cwd === undefined || g.cwd.includes('{')) continue;
    const on = placed.replicas.find((replica) => replica.group === g.name && local.has(replica.node));
    const problem = on && cwdProblem(g.cwd);
    if (on && problem) {
      if (r.raw.workers[g.name]!.cwd !== undefined) {
        r.add(['workers', g.name, 'cwd'], `directory ${shownPath(g.cwd)} ${problem} (group '${g.name}' runs on local node ${on.node})`);
      } else r.addOnce(['defaults', 'cwd'], `directory ${shownPath(g.cwd)} ${problem} (groups on local nodes use it)`);
    }
  }
}
