/**
 * Resolution step: ports. The control plane's ports must differ from each other, and every replica port
 * from the others on its node and from the control plane's there: the same check (placement.portClashes)
 * as `scale` and `apply`.
 */
import { controlPlaneNodes, controlPlanePorts, portClashes } from './placement.js';
import type { HeadServices } from './resolve-control-plane.js';
import type { Resolution } from './resolve-context.js';
import { formatPath, type ConfigPath } from './source.js';
import type { NodeConfig, ReplicaPlan } from './types.js';

/** Checks the control plane's ports against each other; returns them, port → field, for checkReplicaPorts. */
export function checkControlPlanePorts(r: Resolution, services: HeadServices): Map<number, string> {
  const taken = new Map<number, string>();
  const takenAt = new Map<number, ConfigPath>();
  for (const [path, port] of controlPlanePorts(services)) {
    const otherPath = takenAt.get(port);
    if (otherPath) {
      // Report at the field the user wrote; the other side may only be a default.
      const [at, other] = r.written(path) || !r.written(otherPath) ? [path, otherPath] : [otherPath, path];
      r.add(at, `port ${port} is also used by ${formatPath(other)}${r.written(other) ? '' : ' (default)'}`);
    } else {
      taken.set(port, formatPath(path));
      takenAt.set(port, path);
    }
  }
  return taken;
}

/** Replica ports: distinct per node and from the control plane's (`reserved`, on the nodes it runs on). */
export function checkReplicaPorts(
  r: Resolution,
  replicas: readonly ReplicaPlan[],
  nodes: readonly NodeConfig[],
  slurm: boolean,
  reserved: Map<number, string>,
): void {
  for (const clash of portClashes(replicas, controlPlaneNodes(nodes, slurm), reserved)) {
    const own: ConfigPath = ['workers', clash.replica.group, ...clash.field];
    r.add(r.written(own) ? own : ['defaults', ...clash.field], clash.message);
  }
}
