/**
 * The ssh transport on a real lab: 3 network-namespace nodes, each with its own sshd and host key; NATS and
 * etcd on the bridge address so workers connect across namespaces. Nodes are logged into as the lab's test
 * user (lab.user, not root); workers run scripts from lab.share and write into dirs that user owns.
 * Deadlines below only stop a hung test: they are generous so that a slow machine does not fail it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, freePort, pidAlive, pidsWithEnv, ROOT, spawnUp, status, waitFor } from '../helpers/cluster.js';
import { startLab, type Lab } from '../helpers/lab.js';

let lab: Lab;
const clusters: string[] = [];
const dirs: string[] = [];
beforeAll(async () => {
  lab = await startLab(3);
}, 120_000);
let failed = false;
afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') failed = true;
});
afterAll(async () => {
  for (const f of clusters) await dynsup(['down', f]);
  await lab?.stop();
  // The clusters' dirs (state, logs) stay for a look when a test failed.
  if (failed) console.error(`ssh.test: cluster dirs kept: ${dirs.join(' ')}`);
  else for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Made {
  file: string;
  dir: string;
  name: string;
}

async function make(opts: { lease: string; nodes?: string; workers?: string; knownHosts?: string; controlPlane?: boolean }): Promise<Made> {
  const dir = await lab.userDir('dynsup-ssh-'); // the workers (as lab.user) write their reports here
  dirs.push(dir);
  const name = `s${Math.random().toString(36).slice(2, 8)}`;
  const [n, m, e, p, mp] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(lab.head)]);
  const kh = opts.knownHosts ?? lab.knownHosts;
  const nodes =
    opts.nodes ??
    lab.nodes
      .map((x) => `  ${x.name}: { transport: ssh, host: ${x.address}, user: ${lab.user}, identityFile: ${lab.key}, knownHosts: ${kh}, gpus: 2 }`)
      .join('\n');
  const yaml = `name: ${name}
head: { address: ${lab.head} }
stateDir: ${dir}/state
lease: ${opts.lease}
metrics: { port: ${mp} }
controlPlane:
  nats: { enabled: ${opts.controlPlane ?? true}, port: ${n}, monitorPort: ${m} }
  etcd: { enabled: ${opts.controlPlane ?? true}, port: ${e}, peerPort: ${p} }
nodes:
${nodes}
workers:
${
  opts.workers ??
  `  w:
    command: [node, ${lab.share}/test/fixtures/workers/lab-worker.mjs]
    replicas: 3
    gpus: 2
    env: { REPORT_DIR: ${dir} }
    restart: { initialDelay: 100ms }
    stop: { grace: 2s }`
}
`;
  const file = join(dir, 'cluster.yaml');
  writeFileSync(file, yaml);
  clusters.push(file);
  return { file, dir, name };
}

const report = (m: Made, r: string) => {
  const f = join(m.dir, `${r}.json`);
  return existsSync(f)
    ? (JSON.parse(readFileSync(f, 'utf8')) as { pid: number; hostname: string; env: Record<string, string>; nats: boolean; etcd: boolean; errors: string[] })
    : null;
};

/** Lines `line N` of a replica's log: each run counts from 1; within a run every number once, in order. */
function checkRuns(log: string): { runs: number; lines: number } {
  const nums = readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('line '))
    .map((l) => Number(l.slice(5)));
  let runs = 0;
  let prev = 0;
  for (const n of nums) {
    if (n === 1) runs++;
    else if (n !== prev + 1) throw new Error(`line ${n} follows line ${prev} in ${log}`);
    prev = n;
  }
  return { runs, lines: nums.length };
}

describe('ssh transport on a 3-node lab', () => {
  it('runs workers on every node with the environment contract; they reach NATS and etcd on the head', async () => {
    const m = await make({ lease: '20s' });
    const r = await dynsup(['up', '-d', m.file, '--timeout', '60'], { env: { ...process.env, SLURM_JOB_ID: '7', PMI_RANK: '1' } });
    expect(r.code, r.stderr).toBe(0);
    const reps = await waitFor('reports', () => {
      const all = ['w-0', 'w-1', 'w-2'].map((x) => report(m, x));
      return all.every(Boolean) ? all.map((x) => x!) : null;
    });
    expect(reps.map((x) => x.hostname).sort()).toEqual(['lab1', 'lab2', 'lab3']);
    for (const [i, x] of reps.entries()) {
      expect(x.errors).toEqual([]);
      expect(x.nats).toBe(true);
      expect(x.etcd).toBe(true);
      expect(x.env.DYNSUP_WORKER).toBe(`w-${i}`);
      expect(x.env.DYNSUP_NODE).toBe(x.hostname);
      expect(x.env.CUDA_VISIBLE_DEVICES).toBe('0,1');
      expect(x.env.NATS_SERVER).toMatch(/^nats:\/\/10\.99\.0\.1:\d+$/);
      expect(Object.keys(x.env).filter((k) => /^(SLURM_|PMI_|PMIX_)/.test(k))).toEqual([]);
    }

    // A crash on a node is restarted (and counted), like a local one: a new pid, restart count 1, and the
    // other replicas untouched. (How fast: scripts/bench/restart.mjs.)
    const victim = reps[1]!.pid;
    process.kill(victim, 'SIGKILL'); // the lab shares this machine's pid namespace
    const restarted = await waitFor(
      'restart',
      async () => {
        const s = (await status(m.file)).replicas.find((x) => x.name === 'w-1')!;
        return s.restarts === 1 && s.pid !== victim && s.state === 'running' ? s : null;
      },
      60_000,
      20,
    );
    expect(pidAlive(restarted.pid!)).toBe(true);
    expect(restarted.lastExit).toMatchObject({ signal: 'SIGKILL' });
    expect((await status(m.file)).replicas.filter((x) => x.name !== 'w-1').map((x) => [x.name, x.pid, x.restarts])).toEqual(
      [reps[0]!, reps[2]!].map((x) => [x.env.DYNSUP_WORKER, x.pid, 0]),
    );

    // Link down for less than the lease (but long enough for ssh keepalives to drop the connection).
    const before = (await status(m.file)).replicas.map((x) => [x.name, x.pid]);
    const log = join(m.dir, 'state/logs/w-2.log');
    const linesBefore = checkRuns(log).lines;
    await lab.link('lab3', false);
    await sleep(9000);
    await lab.link('lab3', true);
    // Re-attached: same pids, no restart, and the log catches up with everything printed meanwhile.
    await waitFor('log catches up', () => checkRuns(log).lines > linesBefore + 800, 60_000, 200);
    const after = (await status(m.file)).replicas;
    expect(after.map((x) => [x.name, x.pid])).toEqual(before);
    expect(after.find((x) => x.name === 'w-2')!.restarts).toBe(0);
    const { runs } = checkRuns(log);
    expect(runs).toBe(1); // every line once and in order, one run only
    const events = readFileSync(join(m.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(events).toMatch(/node lab3: connection to the agent lost/);
    expect(events).toMatch(/node lab3: reconnected after/);

    // Operated from a node (another machine as far as the network goes): status over NATS.
    const fromNode = await lab.exec('lab1', [process.execPath, join(ROOT, 'bin/dynsup.js'), 'status', m.file, '--head', lab.head, '--json']);
    const remote = JSON.parse(fromNode.stdout) as { source: string; replicas: { name: string; pid: number }[] };
    expect(remote.source).toBe('supervisor');
    expect(remote.replicas.map((x) => [x.name, x.pid])).toEqual(before);

    const down = await dynsup(['down', m.file]);
    expect(down.code).toBe(0);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${m.name}`)).toEqual([]);
    // Runtime files removed on every node.
    const left = await lab.ssh('lab2', `ls -A /tmp/dynsup-${lab.user}/${m.name} 2>/dev/null | wc -l`);
    expect(left.stdout.trim()).toBe('0');
  }, 300_000);

  it('a partition longer than the lease stops the workers on the node; they are restarted when it is back', async () => {
    const m = await make({
      lease: '4s',
      controlPlane: false,
      workers: `  w:
    command: "echo started; exec sleep 600"
    replicas: 3
    gpus: 2
    restart: { initialDelay: 100ms }
    stop: { grace: 1s }`,
    });
    const r = await dynsup(['up', '-d', m.file, '--timeout', '60']);
    expect(r.code, r.stderr).toBe(0);
    const old = (await status(m.file)).replicas.find((x) => x.node === 'lab2')!;
    await lab.link('lab2', false);
    // The node side stops its worker by itself once the lease (4s) runs out.
    await waitFor('worker stopped on the cut-off node', () => !pidAlive(old.pid!), 60_000, 100);
    await sleep(6000); // let the head also conclude the node is gone (lease + margin)
    await lab.link('lab2', true);
    const fresh = await waitFor(
      'restarted after reconnect',
      async () => {
        const s = (await status(m.file)).replicas.find((x) => x.name === old.name)!;
        return s.pid && s.pid !== old.pid && s.state === 'running' ? s : null;
      },
      90_000,
      100,
    );
    expect(fresh.restarts).toBeGreaterThanOrEqual(1);
    expect(pidAlive(fresh.pid!)).toBe(true);
    // The other nodes were not disturbed.
    expect((await status(m.file)).replicas.filter((x) => x.node !== 'lab2').every((x) => x.restarts === 0)).toBe(true);
  }, 240_000);

  it('kill -9 of the supervisor: nothing is left on any node after the lease', async () => {
    const m = await make({
      lease: '3s',
      controlPlane: false,
      workers: `  w:
    command: "sleep 600 & exec sleep 600"
    replicas: 3
    gpus: 2`,
    });
    const sup = spawnUp(m.file);
    await waitFor('running', async () => (await status(m.file)).replicas.filter((x) => x.state === 'running').length === 3, 90_000, 100);
    expect((await pidsWithEnv(`DYNSUP_CLUSTER=${m.name}`)).length).toBeGreaterThanOrEqual(6);
    sup.kill('SIGKILL');
    await new Promise((r) => sup.once('exit', r));
    // With nobody renewing their lease, the node agents stop every worker and its children by themselves.
    await waitFor('no worker left', async () => (await pidsWithEnv(`DYNSUP_CLUSTER=${m.name}`)).length === 0, 60_000, 100);
  }, 240_000);

  it('refuses unknown and mismatched host keys, and reports an unreachable node by name, starting nothing', async () => {
    const empty = join(mkdtempSync(join(tmpdir(), 'kh-')), 'known_hosts');
    dirs.push(dirname(empty));
    writeFileSync(empty, '');
    const unknown = await make({ lease: '10s', controlPlane: false, knownHosts: empty, workers: `  w: { command: "exec sleep 600", replicas: 3, gpus: 2 }` });
    let r = await dynsup(['up', unknown.file]);
    expect(r.code).toBe(1);
    expect(r.stderr + r.stdout).toMatch(/lab1.*host key.*not in|lab1.*unknown host key|lab1.*E_SSH_HOSTKEY_UNKNOWN/);
    expect(r.stderr + r.stdout).toContain(`${lab.user}@10.99.0.11`);

    // lab2's address with lab1's key: a man in the middle, as far as dynsup can tell.
    const wrong = join(mkdtempSync(join(tmpdir(), 'kh-')), 'known_hosts');
    dirs.push(dirname(wrong));
    writeFileSync(wrong, lab.nodes.map((x, i) => `${x.address} ${lab.nodes[(i + 1) % 3]!.hostKey}`).join('\n') + '\n');
    const mismatch = await make({ lease: '10s', controlPlane: false, knownHosts: wrong, workers: `  w: { command: "exec sleep 600", replicas: 3, gpus: 2 }` });
    r = await dynsup(['up', mismatch.file]);
    expect(r.code).toBe(1);
    expect(r.stderr + r.stdout).toMatch(new RegExp(`lab2 \\(${lab.user}@10\\.99\\.0\\.12:22\\): .*(does not match|mismatch|CHANGED|changed)`, 'i'));

    const nodes = [
      ...lab.nodes.map(
        (x) => `  ${x.name}: { transport: ssh, host: ${x.address}, user: ${lab.user}, identityFile: ${lab.key}, knownHosts: ${lab.knownHosts}, gpus: 2 }`,
      ),
      `  ghost: { transport: ssh, host: 10.99.0.250, user: ${lab.user}, identityFile: ${lab.key}, knownHosts: ${lab.knownHosts}, gpus: 2 }`,
    ].join('\n');
    const gone = await make({ lease: '10s', controlPlane: false, nodes, workers: `  w: { command: "exec sleep 600", replicas: 4, gpus: 2 }` });
    r = await dynsup(['up', gone.file], { timeoutMs: 60_000 });
    expect(r.code).toBe(1);
    expect(r.stderr + r.stdout).toMatch(/ghost/);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${gone.name}`)).toEqual([]);
    // Nothing left on the nodes it did reach: their runtime dirs are gone.
    const leftover = await lab.ssh('lab1', `ls /tmp/dynsup-${lab.user}/${gone.name} 2>/dev/null | wc -l`);
    expect(leftover.stdout.trim()).toBe('0');
  }, 240_000);

  it('delivers hostile env values and arguments to the remote shell literally', async () => {
    const marker = join(tmpdir(), `pwned-${Math.random().toString(36).slice(2, 8)}`);
    const values = {
      argv: `$(touch ${marker}-argv)`,
      A: `$(touch ${marker}-env)`,
      B: "'; rm -rf ~ #",
      C: 'line1\nline2 `id` $HOME "q" \\ end',
    };
    // JSON strings are valid YAML; `$` is doubled for dynsup's own ${VAR} interpolation.
    const y = (v: string) => JSON.stringify(v.replaceAll('$', '$$'));
    const script = 'printf "%s\\n" "$1" "$HOSTILE_A" "$HOSTILE_B" "$HOSTILE_C" > "$OUT"; exec sleep 600';
    const m = await make({
      lease: '10s',
      controlPlane: false,
      workers: `  w:
    command: [sh, -c, ${y(script)}, argv0, ${y(values.argv)}]
    env: { HOSTILE_A: ${y(values.A)}, HOSTILE_B: ${y(values.B)}, HOSTILE_C: ${y(values.C)}, OUT: "{replica}-out.txt" }`,
    });
    writeFileSync(m.file, readFileSync(m.file, 'utf8').replace('    env: {', `    cwd: ${m.dir}\n    env: {`));
    const r = await dynsup(['up', '-d', m.file, '--timeout', '60']);
    expect(r.code, r.stderr).toBe(0);
    const out = await waitFor('output', () => (existsSync(join(m.dir, 'w-0-out.txt')) ? readFileSync(join(m.dir, 'w-0-out.txt'), 'utf8') : null));
    expect(out).toBe(`${values.argv}\n${values.A}\n${values.B}\n${values.C}\n`);
    expect(existsSync(`${marker}-argv`)).toBe(false);
    expect(existsSync(`${marker}-env`)).toBe(false);
    await dynsup(['down', m.file]);
  });

  it('the example cluster files validate', async () => {
    for (const f of [
      'clusters/lab-ssh.yaml',
      'clusters/dynamo-trtllm-disagg.yaml',
      'clusters/slurm-disagg.yaml',
      'clusters/gpu-local.yaml',
      'clusters/local.yaml',
    ]) {
      const r = await dynsup(['validate', join(ROOT, f)], { env: { ...process.env, HF_TOKEN: 'hf_example' } });
      expect(r.code, `${f}: ${r.stderr}`).toBe(0);
    }
  });
});
