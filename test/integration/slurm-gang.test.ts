// @vitest-environment node
//
// A gang as one Slurm step: `launch: mpi` in a `dynsup sbatch` job on a 2-node testbed runs the replica as
// `srun --overlap --mpi=pmix` over both nodes from inside the allocation (the leader's agent starts it,
// with the outer job's SLURM_* removed and the step's own PMIx environment for the ranks). Real Open MPI
// and mpi4py. kill -9 of one rank ends the step (--kill-on-bad-exit) and the gang restarts once, on both
// nodes; scancel leaves nothing.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, pidsWithEnv, ROOT, waitFor } from '../helpers/cluster.js';
import { startSlurm, type SlurmTestbed } from '../helpers/lab.js';

const execFileP = promisify(execFile);

describe('a launch: mpi gang as one srun --mpi=pmix step', { timeout: 240_000 }, () => {
  let slurm: SlurmTestbed;
  let dir: string;
  let jobId = '';
  const name = `slurmgang${process.pid}`;

  beforeAll(async () => {
    slurm = await startSlurm(2);
    dir = mkdtempSync(join(tmpdir(), 'dynsup-slurm-gang-'));
  }, 120_000);
  afterAll(async () => {
    if (jobId) await execFileP('scancel', [jobId], { env: slurm.env }).catch(() => undefined);
    await slurm?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  const log = (): string => {
    try {
      return readFileSync(join(dir, 'state', 'logs', 'engine-0', '0.log'), 'utf8');
    } catch {
      return '';
    }
  };
  const worlds = (): number => (log().match(/^rank \d world 4 sum 6 nodes node1,node2 /gm) ?? []).length;
  /** The rank processes (python, not srun), with the Slurm node each runs on. */
  const ranks = async (): Promise<{ pid: number; node: string }[]> => {
    const out: { pid: number; node: string }[] = [];
    for (const pid of await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)) {
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        if (!argv[0]!.includes('python')) continue;
        out.push({ pid, node: /(?:^|\0)SLURMD_NODENAME=([^\0]*)/.exec(readFileSync(`/proc/${pid}/environ`, 'utf8'))?.[1] ?? '?' });
      } catch {
        /* gone */
      }
    }
    return out;
  };

  it('runs 2 nodes × 2 ranks in one step, restarts the whole gang once when a rank is killed, and scancel leaves nothing', async () => {
    const file = join(dir, 'cluster.yaml');
    writeFileSync(
      file,
      `name: ${name}
stateDir: ./state
lease: 10s
metrics: { enabled: false }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
slurm: { nodes: 2, output: ./job-%j.out, time: 10m }
workers:
  engine:
    command: [/usr/bin/python3, -u, ${join(ROOT, 'test/fixtures/workers/mpi_allreduce.py')}]
    nodesPerReplica: 2
    launch: mpi
    ranksPerNode: 2
    # All testbed "nodes" are one host: shared memory between them crashes Open MPI's vader transport.
    env: { OMPI_MCA_btl: 'self,tcp' }
    restart: { initialDelay: 200ms, jitter: 0 }
    stop: { grace: 3s }
`,
    );
    const v = await dynsup(['validate', file], { env: slurm.env });
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/engine-0\s+node1,node2/);
    const sub = await dynsup(['sbatch', file], { env: slurm.env });
    expect(sub.code, sub.stderr).toBe(0);
    jobId = sub.stdout.trim();
    const jobOut = () => {
      try {
        return readFileSync(join(dir, `job-${jobId}.out`), 'utf8');
      } catch {
        return '';
      }
    };
    await waitFor('4 ranks over 2 nodes', () => worlds() === 4, 120_000, 200).catch((err: Error) => {
      throw new Error(`${err.message}\n--- rank log:\n${log().slice(-3000)}\n--- job output:\n${jobOut().slice(-3000)}`);
    });
    // One step for the gang (named after the replica), besides the agents'.
    const steps = (await execFileP('squeue', ['-h', '-s', '-j', jobId, '-o', '%j|%N'], { env: slurm.env })).stdout;
    expect(steps).toMatch(/^engine-0\|node\[1-2\]$/m);
    const before = await ranks();
    expect(before.map((r) => r.node).sort()).toEqual(['node1', 'node1', 'node2', 'node2']);

    process.kill(before.find((r) => r.node === 'node2')!.pid, 'SIGKILL');
    await waitFor('4 new ranks', () => worlds() === 8, 120_000, 200);
    const st = JSON.parse((await dynsup(['status', file, '--json'], { env: slurm.env })).stdout) as {
      replicas: { name: string; restarts: number; state: string }[];
    };
    expect(st.replicas[0]).toMatchObject({ name: 'engine-0', restarts: 1 });
    const after = await ranks();
    expect(after.map((r) => r.node).sort()).toEqual(['node1', 'node1', 'node2', 'node2']);
    for (const r of before) expect(after.map((x) => x.pid)).not.toContain(r.pid);

    await execFileP('scancel', [jobId], { env: slurm.env });
    await waitFor('the job to end', async () => (await execFileP('squeue', ['-h', '-j', jobId], { env: slurm.env })).stdout.trim() === '', 60_000, 200);
    await waitFor('nothing left', async () => (await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).length === 0, 30_000, 200);
    jobId = '';
  });
});
