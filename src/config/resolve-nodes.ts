/**
 * Resolution step: the nodes. Outside Slurm, the file's `nodes:`; in Slurm mode, the allocation's (given,
 * recorded by a running `up --slurm`, or a preview of placeholder nodes), which replace them, and where
 * `slurm.roles` puts each group.
 */
import { previewAllocation, type SlurmAllocation } from '../slurm/allocation.js';
import { minimumNodes, resolveRoles, type RoleSpec } from '../slurm/roles.js';
import { DEFAULTS } from './defaults.js';
import { currentUser, hint, type Resolution } from './resolve-context.js';
import type { RawCluster, RawNode } from './schema.js';
import type { ConfigIssue, ConfigPath, ConfigSource } from './source.js';
import type { NodeConfig } from './types.js';

export interface ResolvedNodes {
  /** Slurm mode: the allocation the nodes are; undefined outside it. */
  readonly allocation: SlurmAllocation | undefined;
  /** A preview sized by dynsup (no slurm.nodes): placement may grow it until everything fits. */
  readonly autoSized: boolean;
  readonly headAddress: string;
  readonly nodes: NodeConfig[];
  /** Slurm mode: each group with a role → the allocation nodes it may use. */
  readonly roleNodes: Map<string, readonly string[]> | undefined;
}

export function resolveNodes(r: Resolution, stateDir: string): ResolvedNodes {
  const { raw, options } = r;
  let allocation = typeof options.slurm === 'function' ? options.slurm(stateDir) : options.slurm;
  // A preview without slurm.nodes is sized to fit: the fewest nodes the roles need, more if the GPUs do not fit.
  let autoSized = false;
  if (!allocation && raw.slurm && raw.nodes === undefined && options.slurmPreview !== false) {
    allocation = previewAllocation(raw.slurm.nodes ?? minimumNodes(slurmRoleSpecs(raw)));
    autoSized = raw.slurm.nodes === undefined;
  }
  if (!allocation) for (const i of requiredOutsideSlurm(r.source)) r.issues.push(i);
  const headAddress = raw.head?.address ?? allocation?.headAddress ?? '';
  if (allocation && !headAddress) r.add(['head'], "missing required field 'address': the head's address could not be worked out; set head.address");

  const nodes: NodeConfig[] = [];
  if (allocation) {
    const gpus = raw.slurm?.gpusPerNode ?? allocation.gpusPerNode ?? 0;
    for (const [i, name] of allocation.nodes.entries()) {
      nodes.push({ name, transport: 'srun', gpus, address: i === 0 ? headAddress : (allocation.addresses?.[name] ?? name), setup: [] });
    }
  } else {
    for (const [name, node] of Object.entries(raw.nodes ?? {})) nodes.push(resolveNode(r, name, node, headAddress));
    if (nodes.length === 0 && raw.nodes !== undefined) r.add(['nodes'], 'expected at least one node');
  }
  return { allocation, autoSized, headAddress, nodes, roleNodes: allocation ? slurmRoles(r, allocation) : undefined };
}

/** Missing `head.address` / `nodes`, for a file used without a Slurm allocation. */
export function requiredOutsideSlurm(source: ConfigSource): ConfigIssue[] {
  const data = source.data;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return [];
  const fields = data as { head?: unknown; nodes?: unknown; slurm?: unknown };
  const why =
    fields.slurm === undefined ? '' : ' (this file has a slurm: section: run it with `dynsup sbatch FILE`, or `dynsup up FILE --slurm` inside an allocation)';
  const out: ConfigIssue[] = [];
  if (fields.head === undefined) out.push(source.issue(['head'], `missing required field${why}`));
  else if (
    fields.head !== null &&
    typeof fields.head === 'object' &&
    !Array.isArray(fields.head) &&
    (fields.head as { address?: unknown }).address === undefined
  ) {
    out.push(source.issue(['head', 'address'], `missing required field${why}`));
  }
  if (fields.nodes === undefined) out.push(source.issue(['nodes'], `missing required field${why}`));
  return out;
}

export function slurmRoleSpecs(raw: RawCluster): Record<string, RoleSpec> {
  return (raw.slurm?.roles ?? {}) as Record<string, RoleSpec>;
}

/** `slurm.roles` on the allocation: each group with a role → its nodes. Problems are reported at the role. */
function slurmRoles(r: Resolution, allocation: SlurmAllocation): Map<string, readonly string[]> {
  const roles = slurmRoleSpecs(r.raw);
  const groupNames = Object.keys(r.raw.workers);
  for (const g of Object.keys(roles)) {
    if (!groupNames.includes(g)) r.add(['slurm', 'roles', g], `unknown worker group '${g}'${hint(g, groupNames)}`, true);
  }
  const res = resolveRoles(allocation.nodes, roles);
  if (res.ok) return new Map(res.nodes);
  for (const e of res.errors) r.add(e.index === undefined ? ['slurm', 'roles', e.group] : ['slurm', 'roles', e.group, e.index], e.message);
  return new Map();
}

function resolveNode(r: Resolution, name: string, node: RawNode, headAddress: string): NodeConfig {
  const transport = node.transport ?? DEFAULTS.node.transport;
  const at = (...p: string[]): ConfigPath => ['nodes', name, ...p];
  const sshOnly = ['host', 'port', 'user', 'identityFile', 'knownHosts', 'hostKeyCheck', 'maxSessions'] as const;
  if (transport === 'ssh' && !node.host) r.add(at(), "missing required field 'host' (transport: ssh)");
  if (transport !== 'ssh') for (const k of sshOnly) if (node[k] !== undefined) r.add(at(k), `only valid with transport: ssh (this node is ${transport})`, true);
  return {
    name,
    transport,
    gpus: node.gpus ?? DEFAULTS.node.gpus,
    address: node.address ?? (transport === 'local' ? headAddress : (node.host ?? name)),
    setup: node.setup ?? [],
    runDir: node.runDir,
    node: node.node,
    ssh:
      transport === 'ssh'
        ? {
            host: node.host ?? '',
            port: node.port ?? DEFAULTS.node.port,
            user: node.user ?? currentUser(),
            identityFile: node.identityFile === undefined ? undefined : r.absPath(node.identityFile),
            knownHosts: r.absPath(node.knownHosts ?? DEFAULTS.node.knownHosts),
            hostKeyCheck: node.hostKeyCheck ?? DEFAULTS.node.hostKeyCheck,
            maxSessions: node.maxSessions ?? DEFAULTS.node.maxSessions,
          }
        : undefined,
  };
}
