/**
 * The core on one machine, through the real CLI and real processes: environment contract, restarts,
 * stop escalation, log integrity, supervisor death, second `up`.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dynsup, pidAlive, pidsWithEnv, spawnUp, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const started: TempCluster[] = [];
async function cluster(body: string, opts: Parameters<typeof tempCluster>[1] = {}): Promise<TempCluster> {
  const c = await tempCluster(body, { name: `t${Math.random().toString(36).slice(2, 8)}`, ...opts });
  started.push(c);
  return c;
}
afterEach(async () => {
  for (const c of started.splice(0)) await dynsup(['down', c.file]);
});

const up = async (c: TempCluster, env?: NodeJS.ProcessEnv) => {
  const r = await dynsup(['up', '-d', c.file, '--timeout', '60'], { env });
  expect(r.code, r.stderr + r.stdout).toBe(0);
};

describe('local supervision', () => {
  it('gives workers the environment contract and removes SLURM/PMI variables', async () => {
    const c = await cluster(`nodes:
  head: { transport: local, gpus: 4 }
workers:
  w:
    command: "env | sort > DIR/env-$DYNSUP_WORKER.txt; exec sleep 600"
    replicas: 2
    gpus: 2
    env: { MY_VAR: "hello {replica}", CUDA_VISIBLE_DEVICES: "9" }
`);
    const env = { ...process.env, SLURM_JOBID: '1', SLURM_JOB_ID: '1', SLURM_NODELIST: 'n[1-2]', PMI_RANK: '0', PMIX_RANK: '0', KEEP_ME: 'yes' };
    await up(c, env);
    const read = (r: string) =>
      Object.fromEntries(
        readFileSync(join(c.dir, `env-${r}.txt`), 'utf8')
          .trim()
          .split('\n')
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      );
    const e0 = await waitFor('env file', () => read('w-0'));
    const e1 = await waitFor('env file', () => read('w-1'));
    expect(e0.NATS_SERVER).toBe(`nats://127.0.0.1:${c.natsPort}`);
    expect(e0.ETCD_ENDPOINTS).toBe(`http://127.0.0.1:${c.etcdPort}`);
    expect(e0.DYNSUP_WORKER).toBe('w-0');
    expect(e0.DYNSUP_GROUP).toBe('w');
    expect(e0.DYNSUP_NODE).toBe('head');
    expect(e0.MY_VAR).toBe('hello w-0');
    expect(e0.KEEP_ME).toBe('yes');
    expect(e0.CUDA_VISIBLE_DEVICES).toBe('0,1');
    expect(e1.CUDA_VISIBLE_DEVICES).toBe('2,3');
    for (const e of [e0, e1]) expect(Object.keys(e).filter((k) => /^(SLURM_|PMI_|PMIX_)/.test(k))).toEqual([]);
    const s = await status(c.file);
    expect(s.replicas.map((r) => r.gpus)).toEqual([
      [0, 1],
      [2, 3],
    ]);
  });

  it('restarts a killed worker and counts it; stop escalates to SIGKILL of the whole group', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  stubborn:
    # Ignores SIGTERM and has a child (also ignoring it): only a SIGKILL of the group ends both.
    command: |
      trap '' TERM; sh -c "trap '' TERM; echo child $$$$ > DIR/child.pid; exec sleep 600" & wait; wait
    restart: { initialDelay: 100ms, jitter: 0 }
    stop: { grace: 1s }
`);
    await up(c);
    const first = (await status(c.file)).replicas[0]!;
    const child1 = await waitFor('child pid', () => Number(readFileSync(join(c.dir, 'child.pid'), 'utf8').split(' ')[1]));
    process.kill(first.pid!, 'SIGKILL');
    const second = await waitFor('restart', async () => {
      const r = (await status(c.file)).replicas[0]!;
      return r.restarts === 1 && r.pid && r.pid !== first.pid && r.state === 'running' ? r : null;
    });
    expect(second.lastExit).toMatchObject({ signal: 'SIGKILL' });
    // The crashed worker's child went with it (group killed when the leader died).
    await waitFor('old child gone', () => !pidAlive(child1));
    const child2 = await waitFor('new child', () => {
      const p = Number(readFileSync(join(c.dir, 'child.pid'), 'utf8').split(' ')[1]);
      return p !== child1 ? p : 0;
    });
    const down = await dynsup(['down', c.file]);
    expect(down.code).toBe(0);
    expect(pidAlive(second.pid!)).toBe(false);
    expect(pidAlive(child2)).toBe(false);
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(events).toMatch(/stubborn-0 still running 1s after the stop signal: SIGKILL/);
  });

  it('keeps every line once and in order across a restart (200,000 lines)', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  chatty:
    # Run 1 prints 1..100000 and crashes; run 2 prints 100001..200000 and stays up.
    command: "if [ -e DIR/ran ]; then seq 100001 200000; exec sleep 600; else touch DIR/ran; seq 1 100000; exit 3; fi"
    restart: { initialDelay: 50ms, jitter: 0 }
`);
    await up(c);
    const log = join(c.dir, 'state/logs/chatty-0.log');
    await waitFor('200000 lines', () => readFileSync(log, 'utf8').endsWith('200000\n'), 30_000, 100);
    const lines = readFileSync(log, 'utf8').trimEnd().split('\n');
    if (lines.length !== 200_000) console.error(`LOG ${log}`);
    expect(lines.length).toBe(200_000);
    let bad = -1;
    for (let i = 0; i < lines.length; i++)
      if (lines[i] !== String(i + 1)) {
        bad = i;
        break;
      }
    expect(bad).toBe(-1);
    const s = (await status(c.file)).replicas[0]!;
    expect(s.restarts).toBe(1);
    expect(s.lastExit).toMatchObject({ code: 3 });
  });

  it('keeps very long lines and binary output intact in the log file', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  odd:
    # Run 1 dies in the middle of a line; run 2 prints the same and stays up.
    command: |
      head -c 3000000 /dev/zero | tr '\\0' x; echo; printf 'bin\\001\\377\\376\\000end\\n'; printf 'no newline at death'
      [ -e DIR/ran ] && exec sleep 600; touch DIR/ran; exit 1
    restart: { initialDelay: 10ms }
`);
    await up(c);
    const log = join(c.dir, 'state/logs/odd-0.log');
    const one = Buffer.concat([Buffer.alloc(3_000_000, 'x'), Buffer.from('\nbin\x01\xff\xfe\x00end\nno newline at death', 'latin1')]);
    // The dead run's unterminated last line is closed with a newline, so run 2 starts on a line of its own.
    const expected = Buffer.concat([one, Buffer.from('\n'), one]);
    await waitFor('both runs logged', () => readFileSync(log).length >= expected.length, 30_000);
    expect(readFileSync(log).equals(expected)).toBe(true);
    expect((await status(c.file)).replicas[0]!.restarts).toBe(1);
  });

  it('refuses a second up; a new up adopts the workers of a killed supervisor: same pids, no restart, every line once', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w: { command: "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done", replicas: 2 }
`);
    const sup = spawnUp(c.file);
    await waitFor('running', async () => (await status(c.file)).replicas.every((r) => r.state === 'running'), 30_000, 100);
    const second = await dynsup(['up', c.file]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`already running: supervisor pid ${sup.pid}`));
    const pids = (await status(c.file)).replicas.map((r) => r.pid!);
    sup.kill('SIGKILL');
    await new Promise((r) => sup.once('exit', r));
    // The workers outlive their supervisor for the lease, and keep printing meanwhile.
    expect(pids.every((p) => pidAlive(p))).toBe(true);
    await up(c);
    const st = await status(c.file);
    expect(st.replicas.map((r) => r.pid)).toEqual(pids);
    expect(st.replicas.map((r) => [r.restarts, r.adopted])).toEqual([
      [0, true],
      [0, true],
    ]);
    const log = join(c.dir, 'state/logs/w-0.log');
    const lines = await waitFor('log goes on', () => {
      const l = readFileSync(log, 'utf8').split('\n').filter(Boolean);
      return l.length > 300 ? l : null;
    });
    // One stream across the two supervisors: line 1, 2, 3, ... with none lost or repeated.
    lines.forEach((l, i) => expect(l).toBe(`line ${i + 1}`));
  });

  it('workers of a killed supervisor stop by themselves after the lease; down then removes what is left, and up starts afresh', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600", replicas: 2 }
`);
    const sup = spawnUp(c.file);
    await waitFor('running', async () => (await status(c.file)).replicas.every((r) => r.state === 'running'), 30_000, 100);
    const pids = (await status(c.file)).replicas.map((r) => r.pid!);
    sup.kill('SIGKILL');
    await waitFor('workers gone after the lease', () => pids.every((p) => !pidAlive(p)), 60_000, 100);
    expect((await status(c.file)).running).toBe(false);
    // down after that: nothing runs, and what the crash left on disk goes (the agents are gone already).
    const down = await dynsup(['down', c.file]);
    expect(down.code, down.stderr).toBe(0);
    expect(existsSync(join(c.dir, 'state/run/nodes/head'))).toBe(false);
    expect(existsSync(join(c.dir, 'state/run/controlplane'))).toBe(false);
    expect(existsSync(join(c.dir, 'state/run/supervisor.json'))).toBe(false);
    await up(c);
    const st = await status(c.file);
    expect(st.replicas.every((r) => r.state === 'running' && !pids.includes(r.pid!) && !r.adopted && r.restarts === 0)).toBe(true);
  });

  it('stops gracefully on SIGTERM with exit 0 and leaves nothing behind', async () => {
    const name = `g${Math.random().toString(36).slice(2, 8)}`;
    const c = await cluster(
      `nodes:
  head: { transport: local }
workers:
  a: { command: "sleep 600 & sleep 600 & wait", replicas: 2 }
  b: { command: "exec sleep 600", dependsOn: [a] }
`,
      { name },
    );
    const sup = spawnUp(c.file);
    await waitFor(
      'running',
      async () => (await status(c.file)).replicas.length === 3 && (await status(c.file)).replicas.every((r) => r.state === 'running'),
      30_000,
      100,
    );
    expect((await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).length).toBeGreaterThanOrEqual(5);
    sup.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => sup.once('exit', (c) => r(c)));
    expect(code).toBe(0);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).toEqual([]);
    // Reverse dependency order: b stopped before a.
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8')
      .split('\n')
      .filter((l) => /stopped: cluster stopping/.test(l));
    expect(events[0]).toMatch(/b-0 stopped/);
  });

  it('reports bad config with exit 2 and starts nothing', async () => {
    const c = await cluster(`nodes:
  head: { transport: local, gpus: 1 }
workers:
  w: { command: "exec sleep 600", replicas: 2, gpus: 1 }
`);
    const r = await dynsup(['up', c.file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cluster\.yaml:\d+:\d+: workers\.w\.gpus: not enough GPUs/);
    expect(() => readFileSync(join(c.dir, 'state/run/supervisor.json'))).toThrow();
  });

  it('restart command restarts a replica without counting a crash', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`);
    await up(c);
    const before = (await status(c.file)).replicas[0]!;
    const r = await dynsup(['restart', c.file, 'w']);
    expect(r.code, r.stderr).toBe(0);
    const after = await waitFor('new pid', async () => {
      const x = (await status(c.file)).replicas[0]!;
      return x.pid && x.pid !== before.pid && x.state === 'running' ? x : null;
    });
    expect(after.restarts).toBe(0);
    expect(pidAlive(before.pid!)).toBe(false);
    writeFileSync(join(c.dir, 'x'), '');
  });
});

describe('adoption and the log (where output resumes)', () => {
  it('a replica adopted, scaled away and added again logs its new run from its first line', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w:
    command: "i=0; while [ $$i -lt 100 ]; do i=$$((i+1)); echo \\"line $$i\\"; done; exec sleep 600"
    replicas: 2
`);
    // 100 lines, then quiet: the new run below prints exactly as many bytes into its fresh spool as the
    // old one did into its own, so a resume at the old log's end would skip all of them.
    await up(c);
    const log = join(c.dir, 'state/logs/w-1.log');
    const hundreds = () => (existsSync(log) ? (readFileSync(log, 'utf8').match(/^line 100$/gm)?.length ?? 0) : 0);
    const firsts = () => (existsSync(log) ? (readFileSync(log, 'utf8').match(/^line 1$/gm)?.length ?? 0) : 0);
    await waitFor('w-1 printed its 100 lines', () => hundreds() === 1, 30_000, 100);
    // A new supervisor adopts both (their logs resume where they are).
    process.kill((await status(c.file)).supervisor!.pid, 'SIGKILL');
    await waitFor('supervisor gone', async () => !(await status(c.file).catch(() => null))?.running, 30_000, 100);
    await up(c);
    expect((await status(c.file)).replicas.every((r) => r.adopted)).toBe(true);
    expect(firsts()).toBe(1);
    // w-1 goes (its agent forgets it, spool and all) and comes back: a new run, whose output starts anew.
    const down = await dynsup(['scale', c.file, 'w=1']);
    expect(down.code, down.stderr).toBe(0);
    const again = await dynsup(['scale', c.file, 'w=2']);
    expect(again.code, again.stderr).toBe(0);
    await waitFor('the new w-1 run logged whole', () => hundreds() === 2, 30_000, 100);
    const runs = readFileSync(log, 'utf8').trim().split('\n');
    expect(runs).toEqual([...Array.from({ length: 100 }, (_, i) => `line ${i + 1}`), ...Array.from({ length: 100 }, (_, i) => `line ${i + 1}`)]);
  }, 120_000);
});
