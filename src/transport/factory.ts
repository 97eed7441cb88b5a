/** Picks the pipe to a node's agent from its `transport:` field. */
import { join } from 'node:path';
import type { ClusterConfig, NodeConfig } from '../config/types.js';
import { DynsupError } from '../util/errors.js';
import { LocalPipe } from './local.js';
import { NodeAgent } from './node-agent.js';
import { SshPipe } from './ssh-pipe.js';
import { SrunPipe } from './srun.js';
import type { AgentPipe } from './types.js';

/** The reserved node name of the head's control plane services (NATS, etcd), under their own local agent. */
export const CONTROL_PLANE_NODE = 'controlplane';

/** Local runtime dir of a node (the control plane uses the reserved name `controlplane`). */
export function localRunDir(cluster: ClusterConfig, node: string): string {
  return node === CONTROL_PLANE_NODE ? join(cluster.stateDir, 'run', 'controlplane') : join(cluster.stateDir, 'run', 'nodes', node);
}

/** Runtime dir of an allocation node (srun): per job, so nothing of an earlier job is mistaken for this one's. */
export function srunRunDir(cluster: ClusterConfig, node: string): string {
  return join(cluster.stateDir, 'run', `slurm-${cluster.allocation?.jobId ?? 'none'}`, node);
}

export type NoticeSink = (level: 'info' | 'warn' | 'error', message: string) => void;

export function createPipe(cluster: ClusterConfig, node: NodeConfig, onNotice?: NoticeSink): AgentPipe {
  switch (node.transport) {
    case 'local':
      return new LocalPipe(node.name, node.runDir ?? localRunDir(cluster, node.name));
    case 'ssh':
      return new SshPipe({ node, cluster: cluster.name, onNotice });
    case 'srun':
      return new SrunPipe({
        node: node.name,
        jobId: cluster.allocation?.jobId,
        runDir: node.runDir ?? srunRunDir(cluster, node.name),
        nodeBinary: node.node,
        onNotice,
      });
    default:
      throw new DynsupError('E_NODE', `node ${node.name}: transport '${node.transport}' is not supported by this build`);
  }
}

export function createNodeAgent(cluster: ClusterConfig, node: NodeConfig, onNotice?: NoticeSink): NodeAgent {
  return new NodeAgent({
    pipe: createPipe(cluster, node, onNotice),
    cluster: cluster.name,
    leaseMs: node.name === CONTROL_PLANE_NODE ? controlPlaneLeaseMs(cluster) : cluster.leaseMs,
    // Only where replicas get GPUs: a GPU-less node has nothing to show per replica.
    gpuIntervalMs: node.gpus > 0 ? cluster.metrics.gpuIntervalMs : 0,
    onNotice,
  });
}

/**
 * The control plane's agent keeps NATS and etcd a worker's stop grace longer than the workers' agents keep
 * them when the supervisor is gone: every node's agent stops its workers when the lease runs out, and
 * workers deregister from etcd and NATS as they stop; with etcd gone at the same moment, they hang in
 * that until their grace ends and they are killed.
 */
export function controlPlaneLeaseMs(cluster: ClusterConfig): number {
  return cluster.leaseMs + Math.max(0, ...cluster.groups.map((g) => g.stop.graceMs)) + 5000;
}

export function controlPlaneNode(cluster: ClusterConfig): NodeConfig {
  return { name: CONTROL_PLANE_NODE, transport: 'local', gpus: 0, address: cluster.headAddress, setup: [] };
}

/** Every node of the file plus the control plane: what `down` reaches after a supervisor died. */
export function allNodes(cluster: ClusterConfig): NodeConfig[] {
  return [controlPlaneNode(cluster), ...cluster.nodes];
}
