/** Placement: pack replicas onto their groups' nodes in order, giving each distinct GPU indices. Pure. */
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
}
export interface PlacementError {
  readonly group: string;
  readonly message: string;
}
export type PlacementResult =
  | { readonly ok: true; readonly replicas: ReplicaPlan[] }
  | { readonly ok: false; readonly errors: PlacementError[] };

/**
 * Replicas are placed group by group, in the order given; within a group, each replica goes to the first
 * candidate node with enough free GPUs, which packs replicas tightly (fewest nodes busy).
 */
export function place(nodes: readonly PlacementNode[], groups: readonly PlacementGroup[]): PlacementResult {
  const free = new Map(nodes.map((n) => [n.name, Array.from({ length: n.gpus }, (_, i) => i)]));
  const replicas: ReplicaPlan[] = [];
  const errors: PlacementError[] = [];
  for (const g of groups) {
    const candidates = g.nodes.length ? g.nodes : nodes.map((n) => n.name);
    for (let index = 0; index < g.replicas; index++) {
      const node = candidates.find((n) => (free.get(n)?.length ?? -1) >= g.gpus);
      if (node === undefined) {
        const have = candidates.map((n) => `${n}: ${free.get(n)?.length ?? 0} free`).join(', ');
        errors.push({
          group: g.name,
          message:
            `not enough GPUs: ${g.replicas} replicas × ${g.gpus} GPUs, replica ${index} does not fit ` +
            `(${have}${g.nodes.length ? '' : ', all nodes'}; earlier groups take theirs first)`,
        });
        break;
      }
      const pool = free.get(node)!;
      const gpuIds = pool.splice(0, g.gpus);
      replicas.push({
        name: `${g.name}-${index}`,
        group: g.name,
        index,
        node,
        gpuIds,
        port: g.port === undefined ? undefined : g.port + index,
      });
    }
  }
  return errors.length ? { ok: false, errors } : { ok: true, replicas };
}
