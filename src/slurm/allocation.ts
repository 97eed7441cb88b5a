/**
 * The Slurm allocation `dynsup up --slurm` runs in: its nodes (SLURM_JOB_NODELIST, the head first), its
 * job id, GPUs per node, and the head's address for NATS and etcd. Parsing is pure; finding the address
 * asks scontrol and the resolver.
 */
import { networkInterfaces, hostname } from 'node:os';
import { isIP } from 'node:net';
import { DynsupError } from '../util/errors.js';
import { expandHostlist, HostlistError } from './hostlist.js';

/**
 * Runs a Slurm or resolver command; its stdout, or null when it fails. node:child_process is loaded here,
 * not at the top: validate reaches this module through config resolution, and loading child_process costs
 * every such command a few milliseconds of its start-up (scripts/bench/cli.mjs).
 */
async function output(file: string, args: readonly string[], options: { timeout: number; env?: NodeJS.ProcessEnv }): Promise<string | null> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve) => execFile(file, args, options, (err, stdout) => resolve(err ? null : String(stdout))));
}

export interface SlurmAllocation {
  readonly jobId?: string | undefined;
  /** Node names; the head (where dynsup, NATS and etcd run) first, then the others in hostlist order. */
  readonly nodes: readonly string[];
  /** Used when the file has no head.address. */
  readonly headAddress?: string | undefined;
  /** Where other machines reach each node (Slurm's NodeAddr; `{host}`, health URLs); default its name. */
  readonly addresses?: Readonly<Record<string, string>> | undefined;
  /** SLURM_GPUS_ON_NODE; the file's slurm.gpusPerNode wins. */
  readonly gpusPerNode?: number | undefined;
  /** A made-up allocation (validate, sbatch's checks): node names are placeholders. */
  readonly preview?: boolean | undefined;
}

/** The allocation this process runs in, from Slurm's variables. Throws E_USAGE outside an allocation. */
export function allocationFromEnv(env: Readonly<Record<string, string | undefined>>): SlurmAllocation {
  const jobId = env.SLURM_JOB_ID ?? env.SLURM_JOBID;
  const list = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
  if (!jobId || !list) {
    throw new DynsupError(
      'E_USAGE',
      '--slurm: not inside a Slurm allocation (SLURM_JOB_ID / SLURM_JOB_NODELIST are not set); submit with `dynsup sbatch FILE`, or run it in salloc',
    );
  }
  let nodes: string[];
  try {
    nodes = [...new Set(expandHostlist(list))];
  } catch (err) {
    throw new DynsupError('E_USAGE', `--slurm: SLURM_JOB_NODELIST: ${err instanceof HostlistError ? err.message : String(err)}`);
  }
  // The batch script runs on the allocation's first node; in an interactive step SLURMD_NODENAME says where we are.
  const here = env.SLURMD_NODENAME;
  if (here && nodes.includes(here)) nodes = [here, ...nodes.filter((n) => n !== here)];
  const gpus = Number(env.SLURM_GPUS_ON_NODE);
  return { jobId, nodes, gpusPerNode: Number.isInteger(gpus) && gpus >= 0 && env.SLURM_GPUS_ON_NODE ? gpus : undefined };
}

/** `n` placeholder nodes named node1..nodeN, for showing a placement before there is an allocation. */
export function previewAllocation(n: number): SlurmAllocation {
  return { nodes: Array.from({ length: Math.max(1, n) }, (_, i) => `node${i + 1}`), headAddress: 'slurm-head', preview: true };
}

export interface AddressCandidate {
  readonly address: string;
  readonly source: string;
}

/**
 * The first candidate that is an address of this machine (NATS and etcd must be able to bind it); if
 * none is, the first non-loopback IPv4 address of this machine, then 127.0.0.1 (a one-machine test bed).
 */
export function chooseHeadAddress(candidates: readonly AddressCandidate[], local: readonly { address: string; internal: boolean }[]): AddressCandidate {
  const isLocal = (a: string) => local.some((l) => l.address === a);
  const hit = candidates.find((c) => isIP(c.address) && isLocal(c.address));
  if (hit) return hit;
  const nic = local.find((l) => !l.internal && isIP(l.address) === 4);
  if (nic) return { address: nic.address, source: 'first non-loopback IPv4 address of this machine' };
  return { address: '127.0.0.1', source: 'fallback (no other address found)' };
}

/** Slurm's NodeAddr of each node, in one scontrol call; nodes it does not know are left out. */
export async function nodeAddresses(nodes: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<Record<string, string>> {
  const out = await output('scontrol', ['-o', 'show', 'node', nodes.join(',')], { timeout: 10_000, env });
  return parseNodeAddresses(out ?? '');
}

/** `scontrol -o show node` lines → NodeName → NodeAddr. Pure. */
export function parseNodeAddresses(text: string): Record<string, string> {
  const map: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const name = /(?:^|\s)NodeName=(\S+)/.exec(line)?.[1];
    const addr = /(?:^|\s)NodeAddr=(\S+)/.exec(line)?.[1];
    if (name && addr) map[name] = addr;
  }
  return map;
}

/**
 * The head's address as the other nodes reach it: Slurm's NodeAddr for the node we run on (what slurmd
 * itself is reached at), else that name resolved, else this host's name resolved; checked against this
 * machine's interfaces.
 */
export async function resolveHeadAddress(node: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<AddressCandidate> {
  const candidates: AddressCandidate[] = [];
  const resolveName = async (name: string, source: string) => {
    if (isIP(name)) {
      candidates.push({ address: name, source });
      return;
    }
    const out = await output('getent', ['ahostsv4', name], { timeout: 5000 });
    for (const line of out?.split('\n') ?? []) {
      const a = line.trim().split(/\s+/)[0];
      if (a && isIP(a) && !candidates.some((c) => c.address === a)) candidates.push({ address: a, source: `${source} (${name})` });
    }
  };
  if (node) {
    const out = await output('scontrol', ['show', 'node', '-o', node], { timeout: 10_000, env });
    const addr = /(?:^|\s)NodeAddr=(\S+)/.exec(out ?? '')?.[1];
    if (addr) await resolveName(addr, `Slurm NodeAddr of ${node}`);
    await resolveName(node, `address of ${node}`);
  }
  await resolveName(hostname(), 'address of this host');
  const local = Object.values(networkInterfaces()).flatMap((l) => (l ?? []).map((i) => ({ address: i.address, internal: i.internal })));
  return chooseHeadAddress(candidates, local);
}
