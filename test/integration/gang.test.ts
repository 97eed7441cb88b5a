/**
 * Gangs on a lab of two ssh nodes: one replica whose engine spans both, started as one process per node
 * (launch: ranks, the SGLang/vLLM way) or as one Open MPI job (launch: mpi: mpirun on the leader, its
 * daemon on the other node started by that node's dynsup agent, not by ssh between the nodes). Real
 * Open MPI and mpi4py (Debian's openmpi-bin, python3-mpi4py). Any rank killed takes the whole gang down
 * and it comes back on both nodes, counted once; a new supervisor after a kill -9 of the old one adopts
 * every member as it runs (the mpi daemon included); `down` leaves nothing on any node.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, freePort, pidAlive, pidsWithEnv, spawnUp, waitFor } from '../helpers/cluster.js';
import { labCluster, startLab, type Lab } from '../helpers/lab.js';

let lab: Lab;
const clusters: string[] = [];
beforeAll(async () => {
  lab = await startLab(2);
}, 120_000);
afterAll(async () => {
  for (const f of clusters) await dynsup(['down', f]);
  await lab?.stop();
});

interface GangStatus {
  name: string;
  state: string;
  restarts: number;
  pid: number | null;
  lastExit: { reason?: string } | null;
  ranks?: { name: string; node: string; pid: number | null; state: string }[];
}

async function gang(file: string): Promise<GangStatus> {
  const r = await dynsup(['status', file, '--json']);
  return (JSON.parse(r.stdout) as { replicas: GangStatus[] }).replicas[0]!;
}

async function make(workers: string): Promise<{ file: string; dir: string; name: string }> {
  const c = await labCluster(lab, { prefix: 'gang', workers });
  clusters.push(c.file);
  return c;
}

/** The processes of a cluster's workers (the rank programs), by the node their environment names. */
async function ranksOn(cluster: string, program: string): Promise<{ pid: number; node: string }[]> {
  const out: { pid: number; node: string }[] = [];
  for (const pid of await pidsWithEnv(`DYNSUP_CLUSTER=${cluster}`)) {
    try {
      // The program itself, not mpirun (whose command line names it too).
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (!argv[0]!.includes('python') || !argv.some((a) => a.includes(program))) continue;
      const node = /(?:^|\0)DYNSUP_NODE=([^\0]*)/.exec(readFileSync(`/proc/${pid}/environ`, 'utf8'))?.[1] ?? '?';
      out.push({ pid, node });
    } catch {
      /* gone */
    }
  }
  return out;
}

function logOf(dir: string, member: string): string {
  try {
    return readFileSync(join(dir, 'state', 'logs', `${member}.log`), 'utf8');
  } catch {
    return '';
  }
}

describe('gangs on two ssh nodes', () => {
  it('launch: ranks — one process per node with rank, nnodes and leader; a rank killed restarts the whole gang once; down leaves nothing', async () => {
    const port = await freePort(lab.head);
    const c = await make(`  engine:
    command: [/usr/bin/python3, -u, ${lab.share}/test/fixtures/workers/gang_ranks.py, --nnodes, '{nnodes}', --node-rank, '{rank}', --dist-init-addr, '{leader}:${port}']
    nodesPerReplica: 2
    restart: { initialDelay: 100ms, jitter: 0 }
    stop: { grace: 2s }`);
    const v = await dynsup(['validate', c.file]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/engine-0\s+lab1,lab2/);
    const sup = spawnUp(c.file);
    await waitFor('rank 0 met rank 1', () => /rank 0 of 2 met rank1@lab2 env 0\/2@10\.99\.0\.11 on lab1/.test(logOf(c.dir, 'engine-0/0')), 90_000, 200);
    expect(logOf(c.dir, 'engine-0/1')).toMatch(/rank 1 of 2 joined 10\.99\.0\.11:\d+ env 1\/2@10\.99\.0\.11 on lab2/);
    let g = await waitFor('gang running', async () => ((await gang(c.file)).state === 'running' ? gang(c.file) : null), 30_000, 200);
    expect(g.ranks!.map((r) => `${r.name}@${r.node}`)).toEqual(['engine-0/0@lab1', 'engine-0/1@lab2']);
    const before = await ranksOn(c.name, 'gang_ranks.py');
    expect(before.map((r) => r.node).sort()).toEqual(['lab1', 'lab2']);

    // kill -9 of the rank on lab2: the leader on lab1 is stopped too, and both come back.
    process.kill(before.find((r) => r.node === 'lab2')!.pid, 'SIGKILL');
    g = await waitFor(
      'gang restarted',
      async () => {
        const s = await gang(c.file);
        return s.restarts === 1 && s.state === 'running' ? s : null;
      },
      60_000,
      200,
    );
    expect(g.lastExit?.reason).toMatch(/engine-0\/1 on lab2 was killed by SIGKILL/);
    await waitFor('they met again', () => (logOf(c.dir, 'engine-0/0').match(/rank 0 of 2 met/g) ?? []).length === 2, 60_000, 200);
    const after = await ranksOn(c.name, 'gang_ranks.py');
    expect(after.map((r) => r.node).sort()).toEqual(['lab1', 'lab2']);
    for (const r of before) expect(pidAlive(r.pid)).toBe(false);

    // kill -9 of the supervisor, then a new one: it adopts both members as they are (same pids, count kept).
    sup.kill('SIGKILL');
    await waitFor('supervisor gone', () => sup.exitCode !== null || sup.signalCode !== null, 30_000, 100);
    const again = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(again.code, again.stderr).toBe(0);
    g = await waitFor(
      'gang adopted',
      async () => {
        const s = await gang(c.file);
        return s.state === 'running' && s.ranks!.every((r) => r.state === 'running') ? s : null;
      },
      60_000,
      200,
    );
    expect(g.restarts).toBe(1);
    expect(g.ranks!.map((r) => r.pid).sort()).toEqual(after.map((r) => r.pid).sort());
    expect((await ranksOn(c.name, 'gang_ranks.py')).map((r) => r.pid).sort()).toEqual(after.map((r) => r.pid).sort());

    const down = await dynsup(['down', c.file]);
    expect(down.code, down.stderr).toBe(0);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${c.name}`)).toEqual([]);
  }, 240_000);

  it('launch: mpi — one Open MPI job over both nodes, its remote daemon started by the node agent; kill -9 of a rank restarts all 4 ranks once; down leaves nothing', async () => {
    const c = await make(`  engine:
    command: [/usr/bin/python3, -u, ${lab.share}/test/fixtures/workers/mpi_allreduce.py]
    nodesPerReplica: 2
    launch: mpi
    ranksPerNode: 2
    env: { OMPI_MCA_btl: 'self,tcp', OMPI_MCA_btl_tcp_if_include: eth0, OMPI_MCA_oob_tcp_if_include: eth0 }
    restart: { initialDelay: 100ms, jitter: 0 }
    stop: { grace: 3s }`);
    const sup = spawnUp(c.file);
    const ready = (log: string) => (log.match(/rank \d world 4 sum 6 nodes lab1,lab2 hosts lab1,lab2/g) ?? []).length;
    await waitFor('4 ranks on 2 nodes', () => ready(logOf(c.dir, 'engine-0/0')) === 4, 120_000, 200);
    const g = await waitFor('gang running', async () => ((await gang(c.file)).state === 'running' ? gang(c.file) : null), 30_000, 200);
    expect(g.ranks!.map((r) => `${r.name}@${r.node}:${r.state}`)).toEqual(['engine-0/0@lab1:running', 'engine-0/1@lab2:running']);
    const before = await ranksOn(c.name, 'mpi_allreduce.py');
    expect(before.map((r) => r.node).sort()).toEqual(['lab1', 'lab1', 'lab2', 'lab2']);

    process.kill(before.find((r) => r.node === 'lab2')!.pid, 'SIGKILL');
    await waitFor(
      'gang restarted',
      async () => {
        const s = await gang(c.file);
        return s.restarts === 1 && s.state === 'running' ? s : null;
      },
      90_000,
      200,
    );
    await waitFor('4 new ranks', () => ready(logOf(c.dir, 'engine-0/0')) === 8, 120_000, 200);
    const after = await ranksOn(c.name, 'mpi_allreduce.py');
    expect(after.map((r) => r.node).sort()).toEqual(['lab1', 'lab1', 'lab2', 'lab2']);
    for (const r of before) expect(pidAlive(r.pid)).toBe(false);
    const members = (
      await waitFor(
        'both members running',
        async () => {
          const s = await gang(c.file);
          return s.state === 'running' && s.ranks!.every((r) => r.state === 'running' && r.pid !== null) ? s : null;
        },
        30_000,
        200,
      )
    ).ranks!.map((r) => `${r.name}@${r.node}:${r.pid}`);

    // kill -9 of the supervisor, then a new one: it adopts mpirun and the daemon mpirun had the old head
    // start on lab2 (its command line known to lab2's agent only), as they run: same pids, count kept.
    sup.kill('SIGKILL');
    await waitFor('supervisor gone', () => sup.exitCode !== null || sup.signalCode !== null, 30_000, 100);
    const again = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(again.code, again.stderr).toBe(0);
    const adopted = await waitFor(
      'gang adopted, both members running',
      async () => {
        const s = await gang(c.file);
        return s.state === 'running' && s.ranks!.every((r) => r.state === 'running') ? s : null;
      },
      60_000,
      200,
    );
    expect(adopted.restarts).toBe(1);
    expect(adopted.ranks!.map((r) => `${r.name}@${r.node}:${r.pid}`)).toEqual(members);
    expect((await ranksOn(c.name, 'mpi_allreduce.py')).map((r) => r.pid).sort()).toEqual(after.map((r) => r.pid).sort());
    expect(ready(logOf(c.dir, 'engine-0/0'))).toBe(8);

    // The new head watches the adopted daemon: a rank on lab2 killed -9 takes the gang down and back, once.
    process.kill(after.find((r) => r.node === 'lab2')!.pid, 'SIGKILL');
    const restarted = await waitFor(
      'gang restarted by the new supervisor',
      async () => {
        const s = await gang(c.file);
        return s.restarts === 2 && s.state === 'running' && s.ranks!.every((r) => r.state === 'running') ? s : null;
      },
      90_000,
      200,
    );
    await waitFor('4 new ranks again', () => ready(logOf(c.dir, 'engine-0/0')) === 12, 120_000, 200);
    const last = await ranksOn(c.name, 'mpi_allreduce.py');
    expect(last.map((r) => r.node).sort()).toEqual(['lab1', 'lab1', 'lab2', 'lab2']);
    for (const r of after) expect(pidAlive(r.pid)).toBe(false);
    for (const m of adopted.ranks!) expect(restarted.ranks!.find((r) => r.name === m.name)!.pid).not.toBe(m.pid);
    expect((await gang(c.file)).restarts).toBe(2);

    const down = await dynsup(['down', c.file]);
    expect(down.code, down.stderr).toBe(0);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${c.name}`)).toEqual([]);
  }, 420_000);
});
