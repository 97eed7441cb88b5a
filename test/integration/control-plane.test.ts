/** Real nats-server and etcd under the supervisor: health, restart after a crash, port conflicts. */
import { createServer, type Server } from 'node:net';
import { Etcd3 } from 'etcd3';
import { connect } from 'nats';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dynsup, freePort, pidAlive, pidsWithCmdline, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const started: TempCluster[] = [];
afterEach(async () => {
  for (const c of started.splice(0)) {
    await dynsup(['down', c.file]);
    expect(await pidsWithCmdline(c.dir)).toEqual([]);
  }
});

describe('control plane', () => {
  it('starts NATS (JetStream) and etcd healthy, restarts each after kill -9, and down leaves nothing', async () => {
    const c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`,
      { controlPlane: true },
    );
    started.push(c);
    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr).toBe(0);

    const useNats = async () => {
      const nc = await connect({ servers: `nats://127.0.0.1:${c.natsPort}`, timeout: 2000, reconnect: false });
      const info = await (await nc.jetstreamManager()).getAccountInfo();
      await nc.close();
      return info.limits !== undefined;
    };
    const useEtcd = async () => {
      const etcd = new Etcd3({ hosts: `http://127.0.0.1:${c.etcdPort}` });
      try {
        await etcd.put('dynsup-test').value('ok');
        return (await etcd.get('dynsup-test').string()) === 'ok';
      } finally {
        etcd.close();
      }
    };
    expect(await useNats()).toBe(true);
    expect(await useEtcd()).toBe(true);

    for (const name of ['nats', 'etcd']) {
      const before = (await status(c.file)).controlPlane.find((s) => s.name === name)!;
      expect(before.state).toBe('ready');
      process.kill(before.pid!, 'SIGKILL');
      const after = await waitFor(
        `${name} restarted`,
        async () => {
          const s = (await status(c.file)).controlPlane.find((x) => x.name === name)!;
          return s.state === 'ready' && s.pid !== before.pid ? s : null;
        },
        30_000,
        100,
      );
      expect(after.restarts).toBe(1);
      expect(pidAlive(before.pid!)).toBe(false);
    }
    expect(await useNats()).toBe(true);
    expect(await waitFor('etcd usable', useEtcd, 10_000)).toBe(true);
  });

  it('names the port and the process holding it when a port is taken', async () => {
    const c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`,
      { controlPlane: true },
    );
    started.push(c);
    const blocker: Server = createServer();
    await new Promise<void>((r) => blocker.listen(c.etcdPort, '127.0.0.1', r));
    try {
      const r = await dynsup(['up', c.file]);
      expect(r.code).toBe(1);
      expect(r.stderr + r.stdout).toMatch(new RegExp(`controlPlane.etcd.port: port ${c.etcdPort} on 127.0.0.1 is already in use by pid ${process.pid} \\(`));
      expect(await pidsWithCmdline(c.dir)).toEqual([]);
    } finally {
      blocker.close();
    }
  });

  it('a service that cannot start ends failed after its crash-loop limit, with the reason, instead of restarting for ever', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dynsup-cp-'));
    const fake = join(dir, 'nats-server');
    // What nats-server does when the head's address is gone.
    writeFileSync(
      fake,
      '#!/bin/sh\necho "[FTL] Error listening on port: 10.255.0.1:4222, listen tcp 10.255.0.1:4222: bind: cannot assign requested address" >&2\nexit 1\n',
      { mode: 0o755 },
    );
    const file = join(dir, 'cluster.yaml');
    const [p1, p2, p3] = await Promise.all([freePort(), freePort(), freePort()]);
    writeFileSync(
      file,
      `name: cpfail
head: { address: 127.0.0.1 }
stateDir: ./state
metrics: { port: ${p3} }
controlPlane:
  nats: { binary: ${fake}, port: ${p1}, monitorPort: ${p2} }
  etcd: { enabled: false }
nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`,
    );
    started.push({ dir, file, natsPort: p1, etcdPort: 0, metricsPort: p3 });
    const r = await dynsup(['up', file], { timeoutMs: 90_000 });
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toMatch(/control plane not healthy .*nats \(failed: crash loop: 10 restarts within 60s/);
    expect(readFileSync(join(dir, 'state/logs/nats.log'), 'utf8')).toContain('cannot assign requested address');
    expect(await pidsWithCmdline(dir)).toEqual([]);
  }, 120_000);
});
