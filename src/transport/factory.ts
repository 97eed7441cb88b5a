/** Picks the Transport for a node from its `transport:` field. */
import { join } from 'node:path';
import type { ClusterConfig, NodeConfig } from '../config/types.js';
import { DynsupError } from '../util/errors.js';
import { LocalTransport } from './local.js';
import { SshTransport } from './ssh/ssh-transport.js';
import { SrunTransport } from './srun.js';
import type { Transport } from './types.js';

/** Local runtime dir of a node (control plane services use the reserved name `controlplane`). */
export function localRunDir(cluster: ClusterConfig, node: string): string {
  return node === 'controlplane' ? join(cluster.stateDir, 'run', 'controlplane') : join(cluster.stateDir, 'run', 'nodes', node);
}

/** Runtime dir of an allocation node (srun): per job, so nothing of an earlier job is mistaken for this one's. */
export function srunRunDir(cluster: ClusterConfig, node: string): string {
  return join(cluster.stateDir, 'run', `slurm-${cluster.allocation?.jobId ?? 'none'}`, node);
}

export type NoticeSink = (level: 'info' | 'warn' | 'error', message: string) => void;

export function createTransport(cluster: ClusterConfig, node: NodeConfig, onNotice?: NoticeSink): Transport {
  switch (node.transport) {
    case 'local':
      return new LocalTransport({ node: node.name, runDir: localRunDir(cluster, node.name), leaseMs: cluster.leaseMs, ...(node.name === 'controlplane' ? { watchSupervisor: false, logDir: join(cluster.stateDir, 'logs') } : {}) });
    case 'ssh':
      return new SshTransport({ node, cluster: cluster.name, leaseMs: cluster.leaseMs, onNotice });
    case 'srun':
      return new SrunTransport({ node: node.name, jobId: cluster.allocation?.jobId, runDir: node.runDir ?? srunRunDir(cluster, node.name), leaseMs: cluster.leaseMs, onNotice });
    default:
      throw new DynsupError('E_NODE', `node ${node.name}: transport '${node.transport}' is not supported by this build`);
  }
}

/** Transports to clean up after a supervisor that died: every node of the file plus the control plane. */
export function allTransports(cluster: ClusterConfig): Transport[] {
  const local: NodeConfig = { name: 'controlplane', transport: 'local', gpus: 0, address: cluster.headAddress, setup: [] };
  return [local, ...cluster.nodes].map((n) => createTransport(cluster, n));
}
