// @vitest-environment node
//
// `dynsup sbatch` on a real Slurm cluster (scripts/testbed/slurm-testbed.sh: slurmctld + 3 slurmd on this host):
// the job brings up NATS, etcd and workers placed by slurm.roles on three nodes, under one agent step per
// node, without SLURM_*/PMI_* variables; a killed worker is restarted by its node's agent; scancel leaves
// nothing; a supervisor run again in an allocation adopts the workers.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, freePort, pidsWithCmdline, pidsWithEnv, ROOT, waitFor } from '../helpers/cluster.js';
import { startSlurm, type SlurmTestbed } from '../helpers/lab.js';

const execFileP = promisify(execFile);

interface Report {
  name: string;
  pid: number;
  node: string;
  bad: string[];
  nats: string;
  etcd: string;
}

// A worker that proves it can use the control plane: a real NATS client connection (request/reply
// through the server) and etcd's /health, then reports (and its environment's SLURM_/PMI_ leftovers).
const WORKER = `
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { writeFileSync, renameSync } from 'node:fs';
const require = createRequire(${JSON.stringify(join(ROOT, 'package.json'))});
const { connect, StringCodec } = require('nats');
const dir = process.argv[2];
const name = process.env.DYNSUP_WORKER;
// A grandchild in a session of its own that holds our stdout (as MPI's orted or a daemon would).
spawn('setsid', ['sh', '-c', 'sleep 1000; :', 'grandchild-' + name], { detached: true, stdio: ['ignore', 'inherit', 'inherit'] }).unref();
const bad = Object.keys(process.env).filter((k) => /^(SLURM_|PMI_|PMIX_)/.test(k));
let nats = 'not tried', etcd = 'not tried';
try {
  const nc = await connect({ servers: process.env.NATS_SERVER, timeout: 5000 });
  const sc = StringCodec();
  const sub = nc.subscribe('itest.' + name);
  (async () => { for await (const m of sub) m.respond(sc.encode('pong ' + sc.decode(m.data))); })();
  const reply = await nc.request('itest.' + name, sc.encode(name), { timeout: 5000 });
  nats = sc.decode(reply.data) === 'pong ' + name ? 'ok' : 'bad reply';
  await nc.drain();
} catch (e) { nats = String(e); }
try { etcd = (await (await fetch(process.env.ETCD_ENDPOINTS + '/health')).json()).health; } catch (e) { etcd = String(e); }
const file = dir + '/report-' + name + '.json';
writeFileSync(file + '.tmp', JSON.stringify({ name, pid: process.pid, node: process.env.DYNSUP_NODE, bad, nats, etcd }));
renameSync(file + '.tmp', file);
console.log('ready ' + name + ' nats=' + nats + ' etcd=' + etcd);
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 1 << 30);
`;

describe('dynsup sbatch on a 3-node Slurm cluster', { timeout: 120_000 }, () => {
  let slurm: SlurmTestbed;
  let dir: string;
  let file: string;
  let jobId = '';
  const name = `slurmit${process.pid}`;
  const env = () => ({ ...slurm.env, PMI_RANK: '0', PMIX_NAMESPACE: 'leak', SLURM_LEAK_TEST: '1' });
  const squeue = async (...args: string[]) => (await execFileP('squeue', ['-h', ...args], { env: slurm.env })).stdout;
  /** Steps of the job: step id ("J.S"), name and node. */
  const steps = async () => {
    const out = await squeue('-s', '-j', jobId, '-o', '%i|%j|%N');
    return out
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [id, stepName, node] = l.split('|');
        return { id: id!, name: stepName!, node: node! };
      });
  };
  /** The agent step on a node (one per node: every worker there runs under it). */
  const agentStep = async (node: string) => (await steps()).find((s) => s.name === 'dynsup-agent' && s.node === node);
  const ppid = async (pid: number) => Number((await readFile(`/proc/${pid}/stat`, 'utf8')).replace(/^.*\) /, '').split(' ')[1]);
  const report = (replica: string): Report | null => {
    try {
      return JSON.parse(readFileSync(join(dir, `report-${replica}.json`), 'utf8')) as Report;
    } catch {
      return null;
    }
  };
  const jobOutput = () => readFile(join(dir, `job-${jobId}.out`), 'utf8').catch(() => '');

  beforeAll(async () => {
    slurm = await startSlurm(3);
    dir = mkdtempSync(join(tmpdir(), 'dynsup-slurm-'));
    const [nats, monitor, etcd, peer] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
    writeFileSync(join(dir, 'worker.mjs'), WORKER);
    const cmd = JSON.stringify([process.execPath, join(dir, 'worker.mjs'), dir]);
    // No head.address: in Slurm mode it is the batch host's (the test bed's NodeAddr, 127.0.0.1).
    file = join(dir, 'cluster.yaml');
    writeFileSync(
      file,
      `name: ${name}
stateDir: ./state
lease: 10s
controlPlane:
  nats: { port: ${nats}, monitorPort: ${monitor} }
  etcd: { port: ${etcd}, peerPort: ${peer} }
slurm:
  nodes: 3
  jobName: from-file
  output: ./job-%j.out
  time: 10m
  signalLead: 30s
  roles:
    frontend: head
    decode: { first: 1 }
    prefill: rest
defaults:
  command: ${cmd}
  restart: { initialDelay: 200ms, maxDelay: 1s }
  stop: { grace: 3s }
workers:
  prefill: { replicas: 2 }
  decode: { dependsOn: [prefill] }
  frontend: { dependsOn: [decode] }
`,
    );
  }, 120_000);

  afterAll(async () => {
    if (jobId) await execFileP('scancel', [jobId], { env: slurm.env }).catch(() => undefined);
    await slurm?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('submits the job and prints its id; flags override the file', async () => {
    const r = await dynsup(['sbatch', file, '--job-name', name], { env: env() });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^\d+\n$/);
    jobId = r.stdout.trim();
    expect(r.stderr).toContain(`submitted batch job ${jobId} (3 nodes`);
    const [jobName, nodes] = (await squeue('-j', jobId, '-o', '%j|%D')).trim().split('|');
    expect(jobName).toBe(name);
    expect(nodes).toBe('3');
  });

  it('brings up NATS, etcd and every worker, placed by role, under one agent step per node', async () => {
    const all = ['prefill-0', 'prefill-1', 'decode-0', 'frontend-0'];
    await waitFor('every worker to report', () => all.every((r) => report(r)), 60_000, 200).catch(async (err: Error) => {
      throw new Error(
        `${err.message}\njob ${jobId}: ${await squeue('-j', jobId, '-o', '%T %r').catch(() => '?')}\n--- job output:\n${(await jobOutput()).slice(-4000)}`,
      );
    });
    for (const r of all.map((x) => report(x)!)) {
      expect(r.nats, r.name).toBe('ok');
      expect(r.etcd, r.name).toBe('true');
      // The step had them (SLURM_* for srun, the leaks we exported); the worker must not.
      expect(r.bad, r.name).toEqual([]);
    }
    const s = await steps();
    expect(s.find((x) => x.name === 'batch')?.node).toBe('node1');
    expect(
      s
        .filter((x) => x.name === 'dynsup-agent')
        .map((x) => x.node)
        .sort(),
    ).toEqual(['node1', 'node2', 'node3']);
    // Each worker runs under its node's agent, itself the agent step's task (worker → agent → slurmstepd: [J.S]).
    const where: Record<string, string> = { 'frontend-0': 'node1', 'decode-0': 'node2', 'prefill-0': 'node3', 'prefill-1': 'node3' };
    for (const r of all) {
      const agent = await ppid(report(r)!.pid);
      const stepd = await ppid(agent);
      const step = s.find((x) => x.name === 'dynsup-agent' && x.node === where[r])!;
      expect((await readFile(`/proc/${stepd}/cmdline`, 'utf8')).replace(/\0/g, ' ').trim(), r).toBe(`slurmstepd: [${step.id}]`);
    }
    // The job's output file is the supervisor's terminal: every worker's lines, prefixed.
    await waitFor(
      'prefixed worker lines in the job output',
      async () => {
        const out = await jobOutput();
        return all.every((r) => new RegExp(`^${r} +\\| ready ${r} nats=ok etcd=true$`, 'm').test(out));
      },
      10_000,
      100,
    );
  });

  it('restarts a worker killed inside the job on its node, under the same agent step', async () => {
    const step = (await agentStep('node3'))!;
    const { pid } = report('prefill-0')!;
    const agent = await ppid(pid);
    unlinkSync(join(dir, 'report-prefill-0.json'));
    const grand = await pidsWithCmdline('grandchild-prefill-0');
    expect(grand.length).toBe(1);
    process.kill(pid, 'SIGKILL');
    const fresh = await waitFor('prefill-0 to come back', () => report('prefill-0'), 30_000, 100);
    expect(fresh.pid).not.toBe(pid);
    // The killed run's setsid grandchild went with it.
    await waitFor('old grandchild gone', async () => !(await pidsWithCmdline('grandchild-prefill-0')).includes(grand[0]!));
    expect(fresh.nats).toBe('ok');
    expect(await ppid(fresh.pid)).toBe(agent);
    expect((await agentStep('node3'))?.id).toBe(step.id);
    const status = JSON.parse((await dynsup(['status', file, '--json'])).stdout) as { replicas: { name: string; node: string; restarts: number }[] };
    expect(status.replicas.find((r) => r.name === 'prefill-0')).toMatchObject({ node: 'node3', restarts: 1 });
  });

  it('dynsup restart replaces a worker on its node without counting a crash', async () => {
    const { pid } = report('decode-0')!;
    unlinkSync(join(dir, 'report-decode-0.json'));
    const r = await dynsup(['restart', file, 'decode-0']);
    expect(r.code, r.stderr).toBe(0);
    const fresh = await waitFor('decode-0 restarted', () => report('decode-0'), 30_000, 100);
    expect(fresh.pid).not.toBe(pid);
    const status = JSON.parse((await dynsup(['status', file, '--json'])).stdout) as { replicas: { name: string; node: string; restarts: number }[] };
    expect(status.replicas.find((x) => x.name === 'decode-0')).toMatchObject({ node: 'node2', restarts: 0 });
  });

  it('scancel stops everything gracefully: no steps, no processes left', async () => {
    const stateDir = join(dir, 'state');
    expect((await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).length).toBeGreaterThanOrEqual(4); // the workers
    expect((await pidsWithCmdline(stateDir)).length).toBeGreaterThan(0); // nats, etcd (their config and data dirs)
    await execFileP('scancel', [jobId], { env: slurm.env });
    await waitFor('the job to leave squeue', async () => (await squeue('-j', jobId)).trim() === '', 30_000, 100);
    await waitFor('no worker processes', async () => (await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).length === 0, 15_000, 100);
    await waitFor('no NATS/etcd/agent processes', async () => (await pidsWithCmdline(stateDir)).length === 0, 15_000, 100);
    expect((await squeue('-s', '-j', jobId).catch(() => '')).trim()).toBe('');
    const out = await jobOutput();
    expect(out).toMatch(/stopping cluster .* \(SIGTERM\)/);
    expect(out).toContain('all stopped');
    expect(existsSync(join(stateDir, 'run', 'supervisor.json'))).toBe(false);
    jobId = '';
  });

  it('kill -9 of the supervisor inside the job leaves nothing running after the lease', async () => {
    const stateDir = join(dir, 'state');
    for (const r of ['frontend-0', 'decode-0', 'prefill-0', 'prefill-1']) rmSync(join(dir, `report-${r}.json`), { force: true });
    const sub = await dynsup(['sbatch', file], { env: env() });
    expect(sub.code, sub.stderr).toBe(0);
    jobId = sub.stdout.trim();
    await waitFor('workers up', () => ['frontend-0', 'decode-0', 'prefill-0', 'prefill-1'].every((r) => report(r)?.nats === 'ok'), 60_000, 200);
    const lock = await waitFor('supervisor lock', () => JSON.parse(readFileSync(join(stateDir, 'run', 'supervisor.json'), 'utf8')) as { pid: number });
    process.kill(lock.pid, 'SIGKILL');
    // With nobody renewing the lease (10s), the agents stop the workers, NATS and etcd by themselves. The
    // deadlines only stop a hung test.
    await waitFor('no worker processes', async () => (await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).length === 0, 90_000, 100);
    await waitFor('no NATS/etcd/agent processes', async () => (await pidsWithCmdline(stateDir)).length === 0, 90_000, 100);
    await waitFor('the job to end', async () => (await squeue('-j', jobId)).trim() === '', 30_000, 200);
    jobId = '';
  });

  it('in an allocation, a supervisor killed and started again adopts every worker: same pids, restarts kept', async () => {
    // An allocation held by a plain job (as salloc holds one); the supervisor is run in it by hand.
    const cleanup: ReturnType<typeof spawn>[] = [];
    const held = (await execFileP('sbatch', ['--parsable', '-N', '3', '-o', '/dev/null', '--wrap', 'sleep 600'], { env: slurm.env })).stdout
      .trim()
      .split(';')[0]!;
    try {
      const nodelist = await waitFor(
        'allocation running',
        async () => {
          const [state, nodes] = (await squeue('-j', held, '-o', '%T|%N')).trim().split('|');
          return state === 'RUNNING' ? nodes : null;
        },
        60_000,
        200,
      );
      const adir = mkdtempSync(join(tmpdir(), 'dynsup-slurm-adopt-'));
      const afile = join(adir, 'cluster.yaml');
      const [m] = await Promise.all([freePort()]);
      writeFileSync(
        afile,
        `name: adopt${process.pid}
head: { address: 127.0.0.1 }
stateDir: ./state
lease: 20s
metrics: { port: ${m} }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
workers:
  w: { command: "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.02; done", replicas: 3 }
`,
      );
      const env = { ...slurm.env, SLURM_JOB_ID: held, SLURM_JOB_NODELIST: nodelist };
      const start = () => spawn(process.execPath, [join(ROOT, 'bin/dynsup.js'), 'up', '--slurm', afile], { env, stdio: 'ignore' });
      const st = async () =>
        JSON.parse((await dynsup(['status', afile, '--json'], { env })).stdout) as {
          replicas: { name: string; node: string; pid: number; restarts: number; state: string; adopted?: boolean }[];
        };
      const first = start();
      cleanup.push(first);
      const before = await waitFor(
        'workers running',
        async () => {
          const r = (await st()).replicas;
          return r.length === 3 && r.every((x) => x.state === 'running') ? r : null;
        },
        90_000,
        200,
      );
      first.kill('SIGKILL');
      await new Promise((r) => first.once('exit', r));
      const second = start();
      cleanup.push(second);
      try {
        const after = await waitFor(
          'adopted',
          async () => {
            const r = (await st()).replicas;
            return r.length === 3 && r.every((x) => x.adopted && x.state === 'running') ? r : null;
          },
          90_000,
          200,
        );
        expect(after.map((r) => [r.name, r.pid, r.restarts])).toEqual(before.map((r) => [r.name, r.pid, r.restarts]));
        const log = join(adir, 'state/logs/w-1.log');
        await waitFor('log goes on', () => readFileSync(log, 'utf8').split('\n').length > 200, 60_000, 100);
        readFileSync(log, 'utf8')
          .split('\n')
          .filter(Boolean)
          .forEach((l, i) => expect(l).toBe(`line ${i + 1}`));
      } finally {
        second.kill('SIGTERM');
        await new Promise((r) => second.once('exit', r));
      }
      expect(await pidsWithEnv(`DYNSUP_CLUSTER=adopt${process.pid}`)).toEqual([]);
      rmSync(adir, { recursive: true, force: true });
    } finally {
      // A failed check must not leave a supervisor behind.
      for (const c of cleanup) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      await execFileP('scancel', [held], { env: slurm.env }).catch(() => undefined);
    }
  }, 240_000);
});
