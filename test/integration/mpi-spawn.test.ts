// @vitest-environment node
//
// The seeds' MPI_ERR_SPAWN, kept as a test, with real Open MPI (Debian's openmpi-bin 4.1, mpi4py) on a real
// Slurm cluster (scripts/testbed/slurm-testbed.sh). The program does what TensorRT-LLM does at start-up: an MPI
// singleton (not started by mpirun or srun's PMI) that calls MPI_Comm_spawn for one child, which replies.
//
// Open MPI decides how to spawn from the environment alone:
// - PMIX_* (a task of `srun --mpi=pmix`, Dynamo's own launch line): the process is a client of Slurm's PMIx
//   server, which does not implement spawn → MPI_ERR_SPAWN, with or without the seed's `unset`.
// - SLURM_JOBID: the singleton's helper daemon takes the allocation from SLURM_NODELIST/SLURM_TASKS_PER_NODE
//   and starts `orted` on the allocated nodes with an `srun` of its own; anything missing → MPI_ERR_SPAWN.
// - SLURM_NODELIST in a plain srun task (no PMI): Open MPI thinks srun direct-launched it → abort in MPI_Init.
// - none of them (dynsup's workers: the agent removes SLURM_*, PMI_*, PMIX_*): a plain singleton, the child is
//   forked locally → works.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, pidsWithCmdline, pidsWithEnv, waitFor } from '../helpers/cluster.js';
import { startSlurm, type SlurmTestbed } from '../helpers/lab.js';

const execFileP = promisify(execFile);
// Debian's python3 with mpi4py, not whatever `python3` is first on PATH.
const PYTHON = '/usr/bin/python3';

// A singleton that spawns one child (MPI_Comm_spawn through mpi4py), as TensorRT-LLM's LLM API does.
// Prints which SLURM_/PMI_/PMIX_ variables it saw, then `OK spawned child <pid>` once the child answered.
const PROGRAM = String.raw`
import os, signal, sys
seen = sorted(k for k in os.environ if k.startswith(('SLURM_', 'PMI_', 'PMIX_')))
from mpi4py import MPI
if sys.argv[1:2] == ['child']:
    parent = MPI.Comm.Get_parent()
    parent.send('child %d' % os.getpid(), dest=0, tag=7)
    parent.Disconnect()
    sys.exit(0)
print('env ' + (' '.join(seen) or 'clean'), flush=True)
inter = MPI.COMM_SELF.Spawn(sys.executable, args=[os.path.abspath(__file__), 'child'], maxprocs=1)
reply = inter.recv(source=0, tag=7)
inter.Disconnect()
print('OK spawned ' + reply, flush=True)
if '--stay' in sys.argv:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()
`;

// Root (the test bed needs it; only mpirun itself refuses root without these) and few cores; TCP between
// ranks rather than shared memory, as on the rest of the test bed.
const OMPI_ENV: Record<string, string> = {
  OMPI_ALLOW_RUN_AS_ROOT: '1',
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1',
  OMPI_MCA_btl: 'self,tcp',
  OMPI_MCA_rmaps_base_oversubscribe: '1',
};

describe('MPI_Comm_spawn from a singleton inside a Slurm job (real Open MPI)', { timeout: 180_000 }, () => {
  let slurm: SlurmTestbed;
  let dir: string;
  let program: string;
  const jobs: string[] = [];
  const name = `mpispawn${process.pid}`;
  const squeue = async (...args: string[]) => (await execFileP('squeue', ['-h', ...args], { env: slurm.env })).stdout.trim();
  const read = (file: string) => {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      return '';
    }
  };

  beforeAll(async () => {
    slurm = await startSlurm(2);
    dir = mkdtempSync(join(tmpdir(), 'dynsup-mpi-spawn-'));
    program = join(dir, 'trtllm_like.py');
    writeFileSync(program, PROGRAM);
  }, 150_000);

  afterAll(async () => {
    for (const j of jobs) await execFileP('scancel', [j], { env: slurm.env }).catch(() => undefined);
    await slurm?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 150_000);

  it('succeeds as a worker of `dynsup sbatch` (no SLURM_*/PMI*/PMIX_* in its environment), and scancel leaves no MPI process', async () => {
    const file = join(dir, 'cluster.yaml');
    writeFileSync(
      file,
      `name: ${name}
stateDir: ./state
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
slurm:
  nodes: 1
  output: ./job-%j.out
  time: 10m
workers:
  trtllm:
    command: ${JSON.stringify([PYTHON, program, '--stay'])}
    env: ${JSON.stringify(OMPI_ENV)}
    restart: { policy: never }
    stop: { grace: 3s }
`,
    );
    const r = await dynsup(['sbatch', file], { env: slurm.env });
    expect(r.code, r.stderr).toBe(0);
    const job = r.stdout.trim();
    expect(job).toMatch(/^\d+$/);
    jobs.push(job);
    const log = join(dir, 'state/logs/trtllm-0.log');
    const out = await waitFor(
      'the worker to print OK or fail',
      () => (/^OK spawned child \d+$|MPI_ERR|Error/m.test(read(log)) ? read(log) : null),
      90_000,
      200,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n--- worker log:\n${read(log)}\n--- job output:\n${read(join(dir, `job-${job}.out`)).slice(-4000)}`);
    });
    expect(out).toMatch(/^env clean$/m);
    expect(out).toMatch(/^OK spawned child \d+$/m);
    expect(out).not.toMatch(/MPI_ERR/);
    // The worker is a process of the node's dynsup-agent step, not of the batch step.
    expect(await squeue('-s', '-j', job, '-o', '%j')).toContain('dynsup-agent');

    // The singleton's helper daemon (orted) carries the worker's environment: it must go with the job.
    expect((await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).length).toBeGreaterThanOrEqual(2);
    await execFileP('scancel', [job], { env: slurm.env });
    await waitFor('the job to leave squeue', async () => (await squeue('-j', job)) === '', 30_000, 200);
    await waitFor('no worker or orted left', async () => (await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).length === 0, 20_000, 100);
    expect(await pidsWithCmdline(program)).toEqual([]);
  });

  it('run directly in the job it fails as an srun task (pmix: MPI_ERR_SPAWN; plain: MPI_Init), and the seed’s three unset variables are what flips it', async () => {
    const out = (k: string) => join(dir, `direct-${k}.out`);
    const seedUnset = 'env -u SLURM_JOBID -u SLURM_JOB_ID -u SLURM_NODELIST';
    const run = (k: string, cmd: string) => `timeout 60 ${cmd} ${PYTHON} ${program} >${out(k)} 2>&1; echo "exit $?" >>${out(k)}`;
    const script = join(dir, 'direct.sh');
    writeFileSync(
      script,
      [
        '#!/bin/sh',
        ...Object.entries(OMPI_ENV).map(([k, v]) => `export ${k}=${v}`),
        // Dynamo's launch line: the worker as a task of an srun --mpi=pmix step.
        run('srun-pmix', 'srun --overlap --mpi=pmix -N1 -n1'),
        run('srun-pmix-seed-unset', `srun --overlap --mpi=pmix -N1 -n1 ${seedUnset}`),
        // A plain step (MpiDefault=none on the test bed).
        run('srun-plain', 'srun --overlap --mpi=none -N1 -n1'),
        run('srun-plain-seed-unset', `srun --overlap --mpi=none -N1 -n1 ${seedUnset}`),
        // The batch shell itself, with the seed's unset.
        run('batch-seed-unset', seedUnset),
        `echo done >${out('done')}`,
        '',
      ].join('\n'),
    );
    const sub = await execFileP('sbatch', ['--parsable', '-N', '1', '-o', join(dir, 'direct-job.out'), script], { env: slurm.env });
    const job = sub.stdout.trim().split(';')[0]!;
    jobs.push(job);
    await waitFor('the batch script to finish', () => read(out('done')).includes('done'), 150_000, 200).catch((err: Error) => {
      throw new Error(`${err.message}\n--- job output:\n${read(join(dir, 'direct-job.out')).slice(-4000)}`);
    });
    const ok = (k: string) => {
      const o = read(out(k));
      expect(o, k).toMatch(/^OK spawned child \d+$/m);
      expect(o, k).not.toMatch(/^env .*\bSLURM_(JOBID|NODELIST)\b/m);
      expect(o, k).toMatch(/^exit 0$/m);
      return o;
    };

    // In a pmix step MPI_Init works (a PMIx client of the step) and the spawn is what fails...
    const pmix = read(out('srun-pmix'));
    expect(pmix, pmix).toMatch(/^env .*\bPMIX_NAMESPACE\b.*\bSLURM_JOBID\b.*\bSLURM_NODELIST\b/m);
    expect(pmix).toMatch(/mpi4py\.MPI\.Exception: MPI_ERR_SPAWN/);
    expect(pmix).not.toMatch(/^OK spawned/m);
    expect(pmix).not.toMatch(/^exit 0$/m);
    // ...and without SLURM_JOBID/SLURM_NODELIST the same task is a plain singleton, PMIX_* and all.
    expect(ok('srun-pmix-seed-unset')).toMatch(/^env .*\bPMIX_NAMESPACE\b/m);

    // In a step without PMI Open MPI believes srun launched it directly and gives up in MPI_Init.
    const plain = read(out('srun-plain'));
    expect(plain, plain).toMatch(/direct launched using "srun"/);
    expect(plain).toMatch(/An error occurred in MPI_Init/);
    expect(plain).not.toMatch(/^env /m);
    expect(plain).not.toMatch(/^exit 0$/m);
    ok('srun-plain-seed-unset');

    // The batch shell (no step) with the seed's unset: nothing Slurm-ish left for Open MPI to act on.
    ok('batch-seed-unset');
  });
});
