/**
 * The resident agent over ssh, on a lab of two nodes: lab1 logs in as the clean test user, lab2 as a user
 * whose login shell is slow and noisy on purpose (its rc files sleep 1 s and print to stdout and stderr),
 * as conda/module/pyenv set-ups on GPU clusters are. What must hold on both: bring-up, node-local restart,
 * logs without the rc files' chatter, adoption by a new supervisor, the lease; and `down` when the lab is
 * gone from under a running cluster.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, pidAlive, pidsWithEnv, spawnUp, status, waitFor } from '../helpers/cluster.js';
import { labCluster, startLab, type Lab } from '../helpers/lab.js';

let lab: Lab;
const clusters: string[] = [];
beforeAll(async () => {
  lab = await startLab(2, undefined, undefined, { rcUser: true });
}, 120_000);
afterAll(async () => {
  for (const f of clusters) await dynsup(['down', f]);
  await lab?.stop();
});

async function make(opts: { lease: string; controlPlane?: boolean; workers: string }): Promise<{ file: string; dir: string; name: string }> {
  // lab1 logs in as dynsup-t (clean), lab2 as dynsup-rc (slow, noisy rc files).
  const c = await labCluster(lab, {
    prefix: 'agent',
    lease: opts.lease,
    controlPlane: opts.controlPlane ?? false,
    users: [lab.user, lab.rcUser!],
    nodeFields: 'gpus: 1',
    workers: opts.workers,
  });
  clusters.push(c.file);
  return c;
}

const COUNTER = `command: "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.02; done"
    replicas: 2
    gpus: 1
    restart: { initialDelay: 100ms, jitter: 0 }
    stop: { grace: 2s }`;

/** `line N` lines of a log: each run counts from 1, and within a run every number comes once, in order. */
function runs(log: string): { runs: number; lines: number; text: string } {
  const text = readFileSync(log, 'utf8');
  let n = 0;
  let prev = 0;
  let count = 0;
  for (const l of text.split('\n').filter(Boolean)) {
    const m = /^line (\d+)$/.exec(l);
    if (!m) throw new Error(`unexpected line ${JSON.stringify(l)} in ${log}`);
    const k = Number(m[1]);
    if (k === 1) n++;
    else if (k !== prev + 1) throw new Error(`line ${k} follows line ${prev} in ${log}`);
    prev = k;
    count++;
  }
  return { runs: n, lines: count, text };
}

describe('resident agent over ssh (clean and slow, noisy logins)', () => {
  it('brings up, restarts on the node, keeps rc chatter out of the logs, and a new supervisor adopts every worker', async () => {
    const c = await make({ lease: '20s', workers: `  w:\n    ${COUNTER}` });
    const sup = spawnUp(c.file);
    await waitFor('running', async () => (await status(c.file)).replicas.filter((r) => r.state === 'running').length === 2, 90_000, 100);
    const st = await status(c.file);
    expect(st.replicas.map((r) => r.node).sort()).toEqual(['lab1', 'lab2']);
    const onRc = st.replicas.find((r) => r.node === 'lab2')!;

    // A crash on the noisy node is restarted by its agent: new pid, counted.
    process.kill(onRc.pid!, 'SIGKILL');
    const again = await waitFor(
      'restart on lab2',
      async () => {
        const r = (await status(c.file)).replicas.find((x) => x.name === onRc.name)!;
        return r.restarts === 1 && r.state === 'running' && r.pid !== onRc.pid ? r : null;
      },
      60_000,
      50,
    );

    // Supervisor killed; a new one adopts: same pids, same restart counts, logs go on where they were.
    const pids = (await status(c.file)).replicas.map((r) => [r.name, r.pid, r.restarts]);
    sup.kill('SIGKILL');
    await new Promise((r) => sup.once('exit', r));
    const up = await dynsup(['up', '-d', c.file, '--timeout', '90']);
    expect(up.code, up.stderr).toBe(0);
    const adopted = (await status(c.file)).replicas;
    expect(adopted.map((r) => [r.name, r.pid, r.restarts])).toEqual(pids);
    expect(adopted.every((r) => r.adopted)).toBe(true);
    expect(again.pid).toBe(adopted.find((r) => r.name === onRc.name)!.pid);

    for (const r of adopted) {
      const log = join(c.dir, 'state/logs', `${r.name}.log`);
      const before = runs(log).lines;
      await waitFor(`${r.name} log goes on`, () => runs(log).lines > before + 50, 60_000, 100);
      const got = runs(log);
      expect(got.runs).toBe(r.node === 'lab2' ? 2 : 1);
      expect(got.text).not.toContain('rc-noise');
    }
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(events).toMatch(/adopted \(pid/);

    // The lease holds on the noisy node too: supervisor gone, the agents stop every worker.
    const sup2 = (await status(c.file)).supervisor!.pid;
    process.kill(sup2, 'SIGKILL');
    await waitFor('workers gone after the lease', async () => adopted.every((r) => !pidAlive(r.pid!)), 90_000, 200);
  }, 300_000);

  it('down with every node gone (lab torn down under the cluster) is bounded, names the nodes, and the supervisor exits', async () => {
    const c = await make({ lease: '30s', controlPlane: true, workers: `  w:\n    ${COUNTER}` });
    const up = await dynsup(['up', '-d', c.file, '--timeout', '90']);
    expect(up.code, up.stderr).toBe(0);
    const sup = (await status(c.file)).supervisor!.pid;
    await lab.stop();
    const down = await dynsup(['down', c.file], { timeoutMs: 120_000 });
    expect(down.code, down.stderr).toBe(0);
    expect(down.stderr).toMatch(/could not reach node\(s\) (lab1, lab2|lab2, lab1): their workers stop by themselves within the lease/);
    expect(down.stderr).toContain(`cluster ${c.name} is down`);
    expect(pidAlive(sup)).toBe(false);
    // Nothing of the control plane restarted once stopping had begun, and nothing of it is left.
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8').split('\n');
    const from = events.findIndex((l) => /stopping cluster/.test(l));
    expect(from).toBeGreaterThan(-1);
    expect(events.slice(from).filter((l) => /"(nats|etcd) started/.test(l))).toEqual([]);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${c.name}`)).toEqual([]);
  }, 300_000);
});
