/** Cluster files in Slurm mode: the allocation replaces `nodes:`, roles place the groups, errors say file:line. */
import { describe, expect, it } from 'vitest';
import { ConfigError, loadCluster, type LoadOptions } from '../../src/config/load.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { allocationFromEnv, chooseHeadAddress, parseNodeAddresses, previewAllocation, type SlurmAllocation } from '../../src/slurm/allocation.js';
import { readSavedAllocation, saveAllocation } from '../../src/slurm/saved.js';

const ENV = { HOME: '/home/t', PATH: '/usr/bin:/bin' };
const load = (yaml: string, opts: Omit<LoadOptions, 'content' | 'env'> = {}) => loadCluster('/work/c.yaml', { env: ENV, content: Buffer.from(yaml), ...opts });
const issues = (yaml: string, opts: Omit<LoadOptions, 'content' | 'env'> = {}) => {
  try {
    load(yaml, opts);
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.line}:${i.column} ${i.path}: ${i.message}`);
    throw err;
  }
  throw new Error('accepted');
};
const job = (nodes: string[], extra: Partial<SlurmAllocation> = {}): SlurmAllocation => ({ jobId: '42', nodes, headAddress: '10.1.0.1', ...extra });
const brief = (c: ReturnType<typeof load>) => c.replicas.map((r) => `${r.name}@${r.node}[${r.gpuIds.join(',')}]`);

const DISAGG = `name: llama
slurm:
  gpusPerNode: 4
  roles:
    frontend: head
    decode: { first: 1 }
    prefill: rest
workers:
  prefill: { command: run prefill, replicas: 4, gpus: 2 }
  decode: { command: run decode, replicas: 1, gpus: 4, dependsOn: [prefill] }
  frontend: { command: run frontend, dependsOn: [decode] }
`;

describe('Slurm mode', () => {
  it('places groups by role on the allocation, every node an srun node with slurm.gpusPerNode GPUs', () => {
    const c = load(DISAGG, { slurm: job(['gpu07', 'gpu08', 'gpu09', 'gpu10']) });
    expect(c.nodes.map((n) => [n.name, n.transport, n.gpus])).toEqual([
      ['gpu07', 'srun', 4],
      ['gpu08', 'srun', 4],
      ['gpu09', 'srun', 4],
      ['gpu10', 'srun', 4],
    ]);
    expect(brief(c)).toEqual([
      'prefill-0@gpu09[0,1]',
      'prefill-1@gpu09[2,3]',
      'prefill-2@gpu10[0,1]',
      'prefill-3@gpu10[2,3]',
      'decode-0@gpu08[0,1,2,3]',
      'frontend-0@gpu07[]',
    ]);
    expect(c.headAddress).toBe('10.1.0.1');
    expect(c.allocation).toEqual({ jobId: '42', nodes: ['gpu07', 'gpu08', 'gpu09', 'gpu10'], preview: false });
    expect(c.slurm?.roles).toEqual({ frontend: 'head', decode: { first: 1 }, prefill: 'rest' });
  });

  it("uses SLURM_GPUS_ON_NODE when the file does not say, and the file's head.address over the allocation's", () => {
    const yaml = DISAGG.replace('  gpusPerNode: 4\n', '').replace('name: llama\n', 'name: llama\nhead: { address: 192.168.7.7 }\n');
    const c = load(yaml, { slurm: job(['a', 'b', 'c'], { gpusPerNode: 8 }) });
    expect(c.nodes.map((n) => n.gpus)).toEqual([8, 8, 8]);
    expect(c.headAddress).toBe('192.168.7.7');
  });

  it('replaces the nodes of a file that has them (one file for bare metal and Slurm)', () => {
    const yaml = `name: both
head: { address: 10.0.0.1 }
nodes:
  head: { transport: local }
  gpu1: { transport: ssh, host: 10.0.0.11, gpus: 8 }
slurm:
  roles: { w: { first: 1 } }
workers:
  w: { command: x, nodes: [gpu1], gpus: 8 }
`;
    expect(brief(load(yaml))).toEqual(['w-0@gpu1[0,1,2,3,4,5,6,7]']);
    const c = load(yaml, { slurm: job(['n1', 'n2'], { gpusPerNode: 8 }) });
    expect(brief(c)).toEqual(['w-0@n2[0,1,2,3,4,5,6,7]']);
    expect(c.headAddress).toBe('10.0.0.1');
  });

  it('groups without a role may use every node', () => {
    const c = load(`name: x\nworkers:\n  w: { command: x, replicas: 3, gpus: 1 }\n`, { slurm: job(['a', 'b', 'c'], { gpusPerNode: 1 }) });
    expect(brief(c)).toEqual(['w-0@a[0]', 'w-1@b[0]', 'w-2@c[0]']);
  });

  it('reports role problems at the role, with the allocation size', () => {
    expect(issues(DISAGG, { slurm: job(['a', 'b']) })).toEqual([
      "7:14 slurm.roles.prefill: 'rest' is empty: the other roles claim every non-head node (the allocation has 2 nodes (a, b)); ask for more nodes (slurm.nodes / --nodes)",
    ]);
    const listRole = DISAGG.replace('prefill: rest', 'prefill: [rest, { indices: [9] }]');
    expect(issues(listRole, { slurm: job(['a', 'b', 'c']) })).toEqual([
      '7:21 slurm.roles.prefill.1: {indices: [9]}: no node 9: the allocation has 3 nodes (a, b, c) (indices 0..2, 0 is the head)',
    ]);
  });

  it('refuses roles for unknown groups and node lists without a role', () => {
    const yaml = `name: x
slurm:
  roles:
    prefil: rest
workers:
  prefill: { command: x, nodes: [gpu1] }
`;
    expect(issues(yaml, { slurm: job(['a', 'b']) })).toEqual([
      "4:5 slurm.roles.prefil: unknown worker group 'prefil' (did you mean 'prefill'?)",
      "6:26 workers.prefill.nodes: names nodes of the file, which a Slurm allocation replaces: give group 'prefill' a role in slurm.roles (head, rest, {first: K}, ...)",
    ]);
  });

  it('reports GPU shortage with the allocation in the message', () => {
    const msg = issues(DISAGG.replace('gpusPerNode: 4', 'gpusPerNode: 2'), { slurm: job(['a', 'b', 'c']) });
    expect(msg).toEqual([
      '9:55 workers.prefill.gpus: not enough GPUs: 4 replicas × 2 GPUs, replica 1 does not fit (c: 0 free; earlier groups take theirs first) (Slurm allocation: a, b, c, 2 GPUs each)',
      '10:53 workers.decode.gpus: not enough GPUs: 1 replicas × 4 GPUs, replica 0 does not fit (b: 2 free; earlier groups take theirs first) (Slurm allocation: a, b, c, 2 GPUs each)',
    ]);
  });

  it('checks the shape of the slurm: section with file:line', () => {
    const yaml = `name: x
slurm:
  nodes: 0
  time: 120
  signalLead: soon
  jobName: "a\\"b"
  roles:
    w: { first: 0 }
    v: sometimes
  nodez: 3
workers:
  w: { command: x }
  v: { command: x }
`;
    const got = issues(yaml);
    expect(got).toEqual([
      '3:10 slurm.nodes: expected a positive integer',
      expect.stringMatching(/^4:9 slurm\.time: expected a time limit: Slurm's format .*, got number 120$/),
      expect.stringMatching(/^5:15 slurm\.signalLead: expected a duration/),
      expect.stringMatching(/^6:12 slurm\.jobName: jobName must not contain line breaks, '"'/),
      '8:17 slurm.roles.w.first: expected a positive integer',
      expect.stringMatching(/^9:8 slurm\.roles\.v: expected a node set/),
      "10:3 slurm.nodez: unknown field 'nodez' (did you mean 'nodes'?)",
    ]);
  });
});

describe('without an allocation', () => {
  it('lays a Slurm-only file out on placeholder nodes (validate, status, logs)', () => {
    const c = load(DISAGG);
    // The fewest nodes that fit: the roles need 3 (head, decode, rest), prefill's 4×2 GPUs need two 4-GPU nodes.
    expect(c.allocation).toEqual({ jobId: undefined, nodes: ['node1', 'node2', 'node3', 'node4'], preview: true });
    expect(brief(c)).toEqual([
      'prefill-0@node3[0,1]',
      'prefill-1@node3[2,3]',
      'prefill-2@node4[0,1]',
      'prefill-3@node4[2,3]',
      'decode-0@node2[0,1,2,3]',
      'frontend-0@node1[]',
    ]);
  });

  it('uses slurm.nodes for the preview when given', () => {
    const c = load(DISAGG.replace('  gpusPerNode: 4\n', '  gpusPerNode: 4\n  nodes: 4\n'));
    expect(c.allocation?.nodes).toEqual(['node1', 'node2', 'node3', 'node4']);
    expect(brief(c)).toEqual([
      'prefill-0@node3[0,1]',
      'prefill-1@node3[2,3]',
      'prefill-2@node4[0,1]',
      'prefill-3@node4[2,3]',
      'decode-0@node2[0,1,2,3]',
      'frontend-0@node1[]',
    ]);
  });

  it('refuses it where it would start things (up without --slurm), saying how to run it', () => {
    expect(issues(DISAGG, { slurmPreview: false })).toEqual([
      '1:1 head: missing required field (this file has a slurm: section: run it with `dynsup sbatch FILE`, or `dynsup up FILE --slurm` inside an allocation)',
      '1:1 nodes: missing required field (this file has a slurm: section: run it with `dynsup sbatch FILE`, or `dynsup up FILE --slurm` inside an allocation)',
    ]);
  });

  it('still requires head.address and nodes in a file without a slurm: section', () => {
    expect(issues('name: x\nhead: {}\nworkers:\n  w: { command: x }\n')).toEqual([
      '1:1 nodes: missing required field',
      '2:7 head.address: missing required field',
    ]);
  });

  it('uses an allocation recorded in the state dir when asked (status/logs/down after up --slurm)', () => {
    const seen: string[] = [];
    const c = load(DISAGG, {
      stateDir: '/tmp/st',
      slurm: (dir) => {
        seen.push(dir);
        return job(['x1', 'x2', 'x3', 'x4']);
      },
    });
    expect(seen).toEqual(['/tmp/st']);
    expect(c.nodes.map((n) => n.name)).toEqual(['x1', 'x2', 'x3', 'x4']);
    expect(c.allocation?.preview).toBe(false);
  });
});

describe('allocationFromEnv', () => {
  it('expands SLURM_JOB_NODELIST, the node we run on first', () => {
    expect(allocationFromEnv({ SLURM_JOB_ID: '7', SLURM_JOB_NODELIST: 'gpu[01-03]', SLURMD_NODENAME: 'gpu01', SLURM_GPUS_ON_NODE: '8' })).toEqual({
      jobId: '7',
      nodes: ['gpu01', 'gpu02', 'gpu03'],
      gpusPerNode: 8,
    });
    expect(allocationFromEnv({ SLURM_JOB_ID: '7', SLURM_JOB_NODELIST: 'gpu[01-03]', SLURMD_NODENAME: 'gpu02' }).nodes).toEqual(['gpu02', 'gpu01', 'gpu03']);
    expect(allocationFromEnv({ SLURM_JOBID: '7', SLURM_NODELIST: 'a,b' })).toEqual({ jobId: '7', nodes: ['a', 'b'], gpusPerNode: undefined });
  });
  it('refuses to run outside an allocation, or on a broken nodelist', () => {
    expect(() => allocationFromEnv({})).toThrow(/not inside a Slurm allocation/);
    expect(() => allocationFromEnv({ SLURM_JOB_ID: '1', SLURM_JOB_NODELIST: 'n[1-' })).toThrow(/SLURM_JOB_NODELIST: invalid hostlist/);
  });
  it('preview allocations are node1..nodeN', () => {
    expect(previewAllocation(2)).toMatchObject({ nodes: ['node1', 'node2'], preview: true });
  });
});

describe('chooseHeadAddress', () => {
  const local = [
    { address: '127.0.0.1', internal: true },
    { address: '10.1.2.3', internal: false },
    { address: 'fe80::1', internal: false },
  ];
  it('takes the first candidate that is an address of this machine', () => {
    expect(
      chooseHeadAddress(
        [
          { address: '10.9.9.9', source: 'dns' },
          { address: '10.1.2.3', source: 'NodeAddr' },
        ],
        local,
      ),
    ).toEqual({ address: '10.1.2.3', source: 'NodeAddr' });
    expect(chooseHeadAddress([{ address: '127.0.0.1', source: 'NodeAddr' }], local)).toEqual({ address: '127.0.0.1', source: 'NodeAddr' });
  });
  it('falls back to the first non-loopback IPv4 address, then 127.0.0.1', () => {
    expect(chooseHeadAddress([{ address: 'node1', source: 'x' }], local).address).toBe('10.1.2.3');
    expect(chooseHeadAddress([], [{ address: '127.0.0.1', internal: true }]).address).toBe('127.0.0.1');
  });
});

describe('node addresses', () => {
  it("reads NodeAddr from scontrol -o show node, and uses it for the nodes' {host}", () => {
    const text = 'NodeName=gpu01 Arch=x86_64 NodeAddr=10.2.0.1 NodeHostName=gpu01 Port=6818\nNodeName=gpu02 NodeAddr=gpu02-ib NodeHostName=gpu02\n';
    const addresses = parseNodeAddresses(text);
    expect(addresses).toEqual({ gpu01: '10.2.0.1', gpu02: 'gpu02-ib' });
    const c = load(DISAGG, { slurm: job(['gpu00', 'gpu01', 'gpu02', 'gpu03'], { addresses }) });
    // The head is reached at the head address; the others at their NodeAddr, or their name.
    expect(c.nodes.map((n) => n.address)).toEqual(['10.1.0.1', '10.2.0.1', 'gpu02-ib', 'gpu03']);
  });
  it('says to set slurm.gpusPerNode when the allocation has no GPUs', () => {
    expect(issues(DISAGG.replace('  gpusPerNode: 4\n', ''), { slurm: job(['a', 'b', 'c', 'd']) })[0]).toMatch(
      /\(Slurm allocation: a, b, c, d, 0 GPUs each: set slurm\.gpusPerNode\)$/,
    );
  });
});

describe('the recorded allocation', () => {
  it("round-trips through <stateDir>/run/slurm.json, and earlier jobs' run dirs go", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dynsup-saved-'));
    try {
      expect(readSavedAllocation(dir)).toBeUndefined();
      const c = load(DISAGG, { stateDir: dir, slurm: job(['a', 'b', 'c', 'd'], { addresses: { b: '10.0.0.2' } }) });
      const { mkdirSync, existsSync } = await import('node:fs');
      mkdirSync(join(dir, 'run', 'slurm-41', 'a'), { recursive: true });
      mkdirSync(join(dir, 'run', 'slurm-42', 'a'), { recursive: true });
      await saveAllocation(c);
      expect(existsSync(join(dir, 'run', 'slurm-41'))).toBe(false);
      expect(existsSync(join(dir, 'run', 'slurm-42'))).toBe(true);
      const back = readSavedAllocation(dir)!;
      expect(back).toEqual({
        jobId: '42',
        nodes: ['a', 'b', 'c', 'd'],
        headAddress: '10.1.0.1',
        gpusPerNode: 4,
        addresses: { a: '10.1.0.1', b: '10.0.0.2', c: 'c', d: 'd' },
      });
      expect(brief(load(DISAGG, { stateDir: dir, slurm: readSavedAllocation }))).toEqual(brief(c));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
