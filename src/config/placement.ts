/**
 * Placement: pack replicas onto their groups' nodes in order, giving each distinct GPU indices, and check
 * their ports. Pure. The one placement of `validate`, `up` and `scale` (which places more replicas next to
 * the running ones).
 */
import type { ReplicaPlan } from './types.js';

export interface PlacementNode {
  readonly name: string;
  readonly gpus: number;
}
export interface PlacementGroup {
  readonly name: string;
  readonly replicas: number;
  readonly gpus: number;
  /** Candidate nodes in order of preference; empty = all nodes. */
  readonly nodes: readonly string[];
  readonly port?: number | undefined;
  /** Named base ports (`ports:`): each replica gets base + index. */
  readonly ports?: Readonly<Record<string, number>> | undefined;
  /** Index of the group's first replica placed here (default 0); `scale` adds after the running ones. */
  readonly firstIndex?: number | undefined;
  /** Above 1: each replica is a gang taking this many whole nodes (nothing else placed on them). */
  readonly nodesPerReplica?: number | undefined;
}
export interface PlaceOptions {
  /** Replicas already placed (running): their GPUs are taken. Errors then say "not enough free GPUs". */
  readonly existing?: readonly ReplicaPlan[] | undefined;
}
export interface PlacementError {
  readonly group: string;
  readonly message: string;
}
export type PlacementResult = { readonly ok: true; readonly replicas: ReplicaPlan[] } | { readonly ok: false; readonly errors: PlacementError[] };

/**
 * Replicas are placed group by group, in the order given; within a group, each replica goes to the first
 * candidate node with enough free GPUs, which packs replicas tightly (fewest nodes busy). A gang replica
 * (nodesPerReplica > 1) takes the first that many candidate nodes that nothing else uses, whole: a
 * multi-node engine shares its nodes with nobody (its ranks talk over the node's NICs and NVLink).
 */
export function place(nodes: readonly PlacementNode[], groups: readonly PlacementGroup[], options: PlaceOptions = {}): PlacementResult {
  const taken = new Map<string, Set<number>>();
  /** Nodes with any replica on them (a gang needs untouched ones), and those a gang holds (nobody else goes there). */
  const used = new Map<string, string>();
  const whole = new Map<string, string>();
  const occupy = (r: ReplicaPlan): void => {
    for (const n of r.gangNodes ?? [r.node]) {
      if (!used.has(n)) used.set(n, r.name);
      if (r.gangNodes) whole.set(n, r.name);
      for (const id of r.gpuIds) (taken.get(n) ?? taken.set(n, new Set()).get(n)!).add(id);
    }
  };
  for (const r of options.existing ?? []) occupy(r);
  const freeGpus = (n: PlacementNode): number[] => Array.from({ length: n.gpus }, (_, i) => i).filter((i) => !taken.get(n.name)?.has(i));
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const replicas: ReplicaPlan[] = [];
  const errors: PlacementError[] = [];
  for (const g of groups) {
    const candidates = g.nodes.length ? g.nodes : nodes.map((n) => n.name);
    const first = g.firstIndex ?? 0;
    const span = g.nodesPerReplica ?? 1;
    for (let index = first; index < first + g.replicas; index++) {
      const name = `${g.name}-${index}`;
      if (span > 1) {
        const fit = candidates.filter((n) => !used.has(n) && (byName.get(n)?.gpus ?? -1) >= g.gpus).slice(0, span);
        if (fit.length < span) {
          const why = candidates.map((n) => `${n}: ${used.has(n) ? `used by ${used.get(n)}` : `${byName.get(n)?.gpus ?? 0} GPUs`}`).join(', ');
          errors.push({
            group: g.name,
            message: `not enough whole nodes: replica ${name} spans ${span} nodes with ${g.gpus} GPUs each and nothing else on them, ${fit.length} left (${why}${g.nodes.length ? '' : ', all nodes'})`,
          });
          break;
        }
        const gpuIds = Array.from({ length: g.gpus }, (_, i) => i);
        const plan: ReplicaPlan = {
          name,
          group: g.name,
          index,
          node: fit[0]!,
          gpuIds,
          port: g.port === undefined ? undefined : g.port + index,
          ...namedPorts(g, index),
          gangNodes: fit,
        };
        occupy(plan);
        replicas.push(plan);
        continue;
      }
      const node = candidates.find((n) => !whole.has(n) && byName.has(n) && freeGpus(byName.get(n)!).length >= g.gpus);
      if (node === undefined) {
        const have = `${candidates.map((n) => `${n}: ${whole.has(n) ? `held whole by ${whole.get(n)}` : `${byName.has(n) ? freeGpus(byName.get(n)!).length : 0} free`}`).join(', ')}${g.nodes.length ? '' : ', all nodes'}`;
        errors.push({
          group: g.name,
          message: options.existing
            ? `not enough free GPUs for replica ${name} (${g.gpus} per replica; ${have})`
            : `not enough GPUs: ${g.replicas} replicas × ${g.gpus} GPUs, replica ${index} does not fit (${have}; earlier groups take theirs first)`,
        });
        break;
      }
      const plan: ReplicaPlan = {
        name,
        group: g.name,
        index,
        node,
        gpuIds: freeGpus(byName.get(node)!).slice(0, g.gpus),
        port: g.port === undefined ? undefined : g.port + index,
        ...namedPorts(g, index),
      };
      occupy(plan);
      replicas.push(plan);
    }
  }
  return errors.length ? { ok: false, errors } : { ok: true, replicas };
}

/** What the control plane listens on, by config path (`controlPlane.nats.port`...): on the head node(s). */
export function controlPlanePorts(c: {
  readonly metrics: { readonly enabled: boolean; readonly port: number };
  /** The web view shares the metrics port: the port is taken when either is on. */
  readonly ui?: { readonly enabled: boolean } | undefined;
  readonly nats: { readonly enabled: boolean; readonly port: number; readonly monitorPort: number };
  readonly etcd: { readonly enabled: boolean; readonly port: number; readonly peerPort: number };
}): [path: string[], port: number][] {
  const ports: [string[], number][] = [];
  if (c.metrics.enabled || c.ui?.enabled) ports.push([['metrics', 'port'], c.metrics.port]);
  if (c.nats.enabled) ports.push([['controlPlane', 'nats', 'port'], c.nats.port], [['controlPlane', 'nats', 'monitorPort'], c.nats.monitorPort]);
  if (c.etcd.enabled) ports.push([['controlPlane', 'etcd', 'port'], c.etcd.port], [['controlPlane', 'etcd', 'peerPort'], c.etcd.peerPort]);
  return ports;
}

/** The nodes the control plane runs on: the allocation's first in Slurm mode, otherwise the local ones. */
export function controlPlaneNodes(nodes: readonly { readonly name: string; readonly transport: string }[], slurm: boolean): Set<string> {
  return new Set(slurm ? nodes.slice(0, 1).map((n) => n.name) : nodes.filter((n) => n.transport === 'local').map((n) => n.name));
}

export interface PortClash {
  readonly replica: ReplicaPlan;
  /** The group field the port comes from: ['port'] or ['ports', name]. */
  readonly field: readonly string[];
  readonly message: string;
}

/** Every port of a replica with the group field it comes from: `port`, then the named `ports`. */
export function replicaPorts(r: ReplicaPlan): { field: string[]; port: number }[] {
  const out: { field: string[]; port: number }[] = [];
  if (r.port !== undefined) out.push({ field: ['port'], port: r.port });
  for (const [name, port] of Object.entries(r.ports ?? {})) out.push({ field: ['ports', name], port });
  return out;
}

/**
 * Port clashes of placed replicas, in order: each replica's ports (`port` and the named `ports`) must be at
 * most 65535, distinct from each other, from the ports of the replicas before it on its node (of any group)
 * and, on the control plane's nodes, from the control plane's (`reserved`: port → what uses it). Put running
 * replicas first: a new one is reported, not them. The one check of validate, up, scale and apply.
 */
export function portClashes(replicas: readonly ReplicaPlan[], controlNodes: ReadonlySet<string>, reserved: ReadonlyMap<number, string>): PortClash[] {
  const clashes: PortClash[] = [];
  const byNode = new Map<string, Map<number, string>>();
  for (const r of replicas) {
    for (const { field, port } of replicaPorts(r)) {
      // Named ports are named in messages; the one `port` is just "port", as before there were others.
      const what = field.length > 1 ? ` (${field.join('.')})` : '';
      if (port > 65535) {
        clashes.push({ replica: r, field, message: `replica ${r.name} would get port ${port}${what}, above 65535` });
        continue;
      }
      // A gang's ports are taken on each of its nodes.
      for (const node of r.gangNodes ?? [r.node]) {
        const used = byNode.get(node) ?? new Map<number, string>();
        byNode.set(node, used);
        const clash = used.get(port) ?? (controlNodes.has(node) ? reserved.get(port) : undefined);
        if (clash) clashes.push({ replica: r, field, message: `replica ${r.name} would use port ${port}${what} on node ${node}, already used by ${clash}` });
        else used.set(port, `replica ${r.name}${what}`);
      }
    }
  }
  return clashes;
}

/** A replica's named ports: base + index of each. */
function namedPorts(g: PlacementGroup, index: number): { ports?: Record<string, number> } {
  return g.ports && Object.keys(g.ports).length ? { ports: Object.fromEntries(Object.entries(g.ports).map(([k, base]) => [k, base + index])) } : {};
}
