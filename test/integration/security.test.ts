/**
 * An attacker on the head's network, with the tools anyone has (an etcd client, a NATS client), must not be
 * able to take over or lock out the control plane. Real etcd and nats-server, through the real CLI.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterEach, describe, expect, it } from 'vitest';
import { loadCluster } from '../../src/config/load.js';
import { etcdService } from '../../src/controlplane/services.js';
import { dynsup, pidsWithCmdline, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const started: TempCluster[] = [];
afterEach(async () => {
  for (const c of started.splice(0)) {
    await dynsup(['down', c.file]);
    expect(await pidsWithCmdline(c.dir)).toEqual([]);
  }
});

async function cluster(): Promise<TempCluster> {
  const c = await tempCluster(
    `nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`,
    { controlPlane: true, name: `sec${Math.random().toString(36).slice(2, 8)}` },
  );
  started.push(c);
  return c;
}

const clusterName = (c: TempCluster) => /^name: (\S+)$/m.exec(readFileSync(c.file, 'utf8'))![1]!;
const FAKE = JSON.stringify({ pid: 4242, host: 'evil-host', startedAt: 1 });
const eventLog = (c: TempCluster) => readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');

describe('etcd leader key', () => {
  it('a leader key put without a lease (kept in the data dir) does not stop the next up', async () => {
    const c = await cluster();
    const name = clusterName(c);
    // The cluster's own etcd, on its data dir, as dynsup would start it: the attacker's put outlives it.
    const spec = etcdService(loadCluster(c.file));
    const etcd = spawn(spec.argv[0]!, spec.argv.slice(1), { stdio: 'ignore' });
    try {
      const client = new Etcd3({ hosts: `http://127.0.0.1:${c.etcdPort}` });
      try {
        await waitFor('etcd', () => client.put(`dynsup/${name}/supervisor`).value(FAKE).then(() => true), 30_000, 200);
      } finally {
        client.close();
      }
    } finally {
      etcd.kill('SIGTERM');
      await new Promise((r) => etcd.once('exit', r));
    }

    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(eventLog(c)).toMatch(/taking over the stale leader key dynsup\/\S+\/supervisor \(it has no lease; it named pid 4242 on evil-host\)/);
    const s = await status(c.file);
    expect(s.running).toBe(true);

    // The key is the supervisor's now, with a live lease.
    const client = new Etcd3({ hosts: `http://127.0.0.1:${c.etcdPort}` });
    try {
      const kv = (await client.get(`dynsup/${name}/supervisor`).exec()).kvs[0]!;
      expect(JSON.parse(kv.value.toString()).pid).toBe(s.supervisor!.pid);
      expect(kv.lease).not.toBe('0');
    } finally {
      client.close();
    }
  }, 120_000);

  it('overwriting or deleting the leader key while supervised is logged as an error and undone; a later up still works', async () => {
    const c = await cluster();
    const name = clusterName(c);
    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const pid = (await status(c.file)).supervisor!.pid;
    const key = `dynsup/${name}/supervisor`;
    const client = new Etcd3({ hosts: `http://127.0.0.1:${c.etcdPort}` });
    const ours = async () => {
      const kv = (await client.get(key).exec()).kvs[0];
      return kv !== undefined && kv.lease !== '0' && JSON.parse(kv.value.toString()).pid === pid;
    };
    try {
      await client.put(key).value(FAKE);
      await waitFor('the claim put back', ours, 10_000, 100);
      expect(eventLog(c)).toMatch(/the leader key \S+ was overwritten \(now pid 4242 on evil-host, lease 0\), not by this supervisor/);
      await client.delete().key(key);
      await waitFor('the claim put back after a delete', ours, 10_000, 100);
      expect(eventLog(c)).toMatch(/the leader key \S+ was deleted, not by this supervisor/);
      // Last word to the attacker: the key is lease-less when the supervisor stops.
      await client.put(key).value(FAKE);
      await waitFor('the claim put back', ours, 10_000, 100);
      await client.put(key).value(FAKE);
    } finally {
      client.close();
    }
    const down = await dynsup(['down', c.file]);
    expect(down.code, down.stderr).toBe(0);
    const again = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(again.code, again.stderr + again.stdout).toBe(0);
  }, 120_000);
});
