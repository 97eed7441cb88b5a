/**
 * Operating a running cluster from another process, as another machine would: NATS request/reply with the
 * cluster's credentials, state in etcd, live logs on NATS, /metrics, health-based restarts.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, freePort, pidAlive, ROOT, spawnUp, tempCluster, waitFor, type StatusJson, type TempCluster } from '../helpers/cluster.js';

let c: TempCluster;
const NAME = `op${Math.random().toString(36).slice(2, 7)}`;
let healthPort: number;
const remote = (args: string[]) => dynsup([...args, '--head', '127.0.0.1']);
const remoteStatus = async () => JSON.parse((await remote(['status', c.file, '--json'])).stdout) as StatusJson & { source: string };

beforeAll(async () => {
  healthPort = await freePort();
  c = await tempCluster(
    `nodes:
  head: { transport: local, gpus: 2 }
workers:
  w:
    command: "i=0; while true; do i=$$((i+1)); echo \\"tick $$i\\"; sleep 0.05; done"
    replicas: 2
    gpus: 1
    restart: { initialDelay: 100ms }
  fast:
    command: "i=0; while true; do j=0; while [ $$j -lt 40 ]; do i=$$((i+1)); j=$$((j+1)); echo \\"fast $$i\\"; done; sleep 0.01; done"
  hung:
    command: [node, ${ROOT}/test/fixtures/workers/hangs.mjs]
    port: ${healthPort}
    env: { HANG_AFTER_MS: "1500" }
    health: { url: "http://127.0.0.1:{port}/health", interval: 200ms, timeout: 300ms, failureThreshold: 3 }
    restart: { initialDelay: 100ms, maxRestarts: 0 }
    stop: { grace: 1s }
`,
    { controlPlane: true, name: NAME },
  );
  const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
  expect(r.code, r.stderr).toBe(0);
}, 120_000);
afterAll(async () => {
  await dynsup(['down', c.file]);
});

describe('operating a cluster over NATS and etcd', () => {
  it('status, restart and logs -f work over NATS from another process', async () => {
    const s = await remoteStatus();
    expect(s.source).toBe('supervisor');
    expect(s.replicas.map((r) => r.name).sort()).toEqual(['fast-0', 'hung-0', 'w-0', 'w-1']);
    const before = s.replicas.find((r) => r.name === 'w-1')!.pid;
    const r = await remote(['restart', c.file, 'w-1']);
    expect(r.code, r.stderr).toBe(0);
    await waitFor('w-1 restarted', async () => {
      const x = (await remoteStatus()).replicas.find((y) => y.name === 'w-1')!;
      return x.pid !== before && x.state === 'running';
    });

    // logs -f over NATS: the same lines as the log file.
    const { spawn } = await import('node:child_process');
    const follower = spawn(process.execPath, [join(ROOT, 'bin/dynsup.js'), 'logs', c.file, 'w-0', '-f', '-n', '0', '--head', '127.0.0.1']);
    let out = '';
    follower.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('followed lines', () => out.split('\n').filter((l) => /^tick \d+$/.test(l)).length >= 20, 20_000, 100);
    follower.kill('SIGINT');
    const followed = out.split('\n').filter((l) => /^tick \d+$/.test(l));
    const file = readFileSync(join(c.dir, 'state/logs/w-0.log'), 'utf8').split('\n');
    const at = file.indexOf(followed[0]!);
    expect(at).toBeGreaterThanOrEqual(0);
    expect(file.slice(at, at + followed.length)).toEqual(followed); // same lines, same order, none missing
  });

  it('logs -f over NATS joins history and live output without repeating or skipping a line', async () => {
    const { spawn } = await import('node:child_process');
    // A worker printing ~4000 lines/s: lines are printed while the follower subscribes and asks for the
    // history, so both carry some of the same lines. Several followers, several boundaries.
    for (let round = 0; round < 5; round++) {
      const follower = spawn(process.execPath, [join(ROOT, 'bin/dynsup.js'), 'logs', c.file, 'fast-0', '-f', '-n', '20', '--head', '127.0.0.1']);
      let out = '';
      follower.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const nums = () => [...out.matchAll(/^fast (\d+)$/gm)].map((m) => Number(m[1]));
      await waitFor('followed lines', () => nums().length >= 400, 20_000, 50);
      follower.kill('SIGINT');
      const n = nums();
      const breaks = n.flatMap((v, i) => (i && v !== n[i - 1]! + 1 ? [`${n[i - 1]} -> ${v}`] : []));
      expect(breaks, `round ${round}`).toEqual([]);
    }
  });

  it('scale adds and removes replicas by the GPU rules, and refuses (exit 2) when GPUs are short', async () => {
    let r = await remote(['scale', c.file, 'w=1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/stopped w-1/);
    r = await remote(['scale', c.file, 'w=3']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/not enough free GPUs/);
    r = await remote(['scale', c.file, 'w=2']);
    expect(r.code, r.stderr).toBe(0);
    const s = await waitFor('w-1 back', async () => {
      const x = await remoteStatus();
      return x.replicas.find((y) => y.name === 'w-1' && y.state === 'running') ? x : null;
    });
    expect(
      s.replicas
        .filter((y) => y.group === 'w')
        .map((y) => y.gpus)
        .sort(),
    ).toEqual([[0], [1]]);
  });

  it('rejects control requests with wrong or missing credentials, and anonymous NATS clients', async () => {
    const bad = join(c.dir, 'bad-creds.json');
    writeFileSync(bad, JSON.stringify({ natsUser: 'dynsup', natsPassword: 'guess', controlKey: 'a2V5' }));
    let r = await dynsup(['restart', c.file, 'w-0', '--head', '127.0.0.1', '--creds', bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/not allowed into the control plane.*(Authorization|AUTHORIZATION)/i);
    // A credentials file of an older dynsup (no control key) is named as such.
    writeFileSync(bad, JSON.stringify({ natsUser: 'dynsup', natsPassword: 'guess' }));
    r = await dynsup(['restart', c.file, 'w-0', '--head', '127.0.0.1', '--creds', bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/has no control key \(written by an older dynsup\)/);
    r = await dynsup(['restart', c.file, 'w-0', '--head', '127.0.0.1', '--creds', join(c.dir, 'nope.json')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no control credentials/);
    // A worker-like anonymous client may use NATS but not the control subjects.
    const nc = await connect({ servers: `nats://127.0.0.1:${c.natsPort}` });
    const errs: string[] = [];
    void (async () => {
      for await (const s of nc.status()) if (s.type === 'error') errs.push(String(s.data));
    })();
    await expect(nc.request(`dynsup.${NAME}.control`, '{"op":"down"}', { timeout: 1000 })).rejects.toThrow();
    await nc.flush().catch(() => undefined);
    // The server's -ERR arrives asynchronously (on a loaded machine after the flush): wait for it.
    await waitFor('permissions violation reported', () => /PERMISSIONS_VIOLATION|Permissions Violation/.test(errs.join(' ')), 10_000, 20);
    await nc.close();
    expect((await remoteStatus()).source).toBe('supervisor'); // still running
  });

  it('serves Prometheus metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${c.metricsPort}/metrics`)).text();
    const sample = (name: string, labels: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && labels.split(',').every((kv) => l.includes(kv)));
      return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    expect(text).toMatch(/^# TYPE dynsup_replicas gauge$/m);
    expect(sample('dynsup_replicas', 'group="w",state="running"')).toBe(2);
    expect(sample('dynsup_control_plane_up', 'service="nats"')).toBe(1);
    expect(sample('dynsup_control_plane_up', 'service="etcd"')).toBe(1);
    expect(sample('dynsup_replica_restarts_total', 'replica="w-0"')).toBeGreaterThanOrEqual(0);
    expect(sample('dynsup_log_lines_total', 'replica="w-0"')).toBeGreaterThan(10);
    expect(sample('dynsup_log_bytes_total', 'replica="w-0"')).toBeGreaterThan(50);
  });

  it('restarts a worker that is alive but stops answering its health check', async () => {
    const first = (await remoteStatus()).replicas.find((r) => r.name === 'hung-0')!;
    const s = await waitFor(
      'hung worker replaced',
      async () => {
        const x = (await remoteStatus()).replicas.find((r) => r.name === 'hung-0')!;
        return x.restarts >= 1 && x.pid !== first.pid ? x : null;
      },
      30_000,
      100,
    );
    expect(s.restarts).toBeGreaterThanOrEqual(1);
    expect(pidAlive(first.pid!)).toBe(false);
    expect(readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8')).toMatch(/hung-0 unhealthy after 3 failed checks/);
  });
});

describe('scale and ports', () => {
  it('refuses (exit 2, nothing changed) a replica whose port another replica or the control plane uses', async () => {
    const [base, other] = [await freePort(), await freePort()];
    const d = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  a: { command: "exec sleep 600", port: ${base} }
  b: { command: "exec sleep 600", port: ${base + 1} }
  m: { command: "exec sleep 600", port: MPORT }
  o: { command: "exec sleep 600", port: ${other} }
`,
      { name: `sp${Math.random().toString(36).slice(2, 7)}` },
    );
    // The metrics port is only known once the file is written: m's base sits right below it.
    writeFileSync(d.file, readFileSync(d.file, 'utf8').replace('MPORT', String(d.metricsPort - 1)));
    try {
      const up = await dynsup(['up', '-d', d.file, '--timeout', '60']);
      expect(up.code, up.stderr).toBe(0);
      const before = JSON.parse((await dynsup(['status', d.file, '--json'])).stdout) as StatusJson;
      const pids = (s: StatusJson) => s.replicas.map((r) => `${r.name}:${r.pid}:${r.state}`).sort();

      let r = await dynsup(['scale', d.file, 'a=2']);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`cannot scale a to 2: replica a-1 would use port ${base + 1} on node head, already used by replica b-0`);
      r = await dynsup(['scale', d.file, 'm=2']);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`replica m-1 would use port ${d.metricsPort} on node head, already used by metrics.port`);
      const after = JSON.parse((await dynsup(['status', d.file, '--json'])).stdout) as StatusJson;
      expect(pids(after)).toEqual(pids(before));
      expect(after.replicas.map((x) => x.name).sort()).toEqual(['a-0', 'b-0', 'm-0', 'o-0']);

      // A port that is free is fine: the same placement gives o-1 the next port.
      r = await dynsup(['scale', d.file, 'o=2']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/started o-1/);
    } finally {
      await dynsup(['down', d.file]);
    }
  });
});

describe('supervisor death with etcd state', () => {
  it('status reports the supervisor gone with the last known states; a new up takes over', async () => {
    const d = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600", replicas: 2 }
`,
      { controlPlane: true, name: `dd${Math.random().toString(36).slice(2, 7)}` },
    );
    const sup = spawnUp(d.file);
    try {
      await waitFor(
        'up',
        async () => {
          const r = await dynsup(['status', d.file, '--json']);
          const reps = (JSON.parse(r.stdout) as StatusJson).replicas ?? [];
          return r.code === 0 && reps.length === 2 && reps.every((x) => x.state === 'running');
        },
        60_000,
        200,
      );
      sup.kill('SIGKILL');
      await new Promise((r) => sup.once('exit', r));
      const r = await dynsup(['status', d.file]);
      if (!/from etcd/.test(r.stdout)) console.error('STATUS OUT', r.stdout, r.stderr);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/supervisor NOT running .*last known state from etcd \(last supervisor pid \d+/);
      expect(r.stdout).toMatch(/w-0 +head +running/);
      const again = await dynsup(['up', '-d', d.file, '--timeout', '60']);
      expect(again.code, again.stderr).toBe(0);
      const s = JSON.parse((await dynsup(['status', d.file, '--json'])).stdout) as StatusJson & { source: string };
      expect(s.source).toBe('supervisor');
      expect(s.replicas.every((x) => x.state === 'running')).toBe(true);
    } finally {
      await dynsup(['down', d.file]);
    }
  }, 120_000);
});
