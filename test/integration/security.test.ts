/**
 * An attacker on the head's network, with the tools anyone has (an etcd client, a NATS client), must not be
 * able to take over or lock out the control plane. Real etcd and nats-server, through the real CLI.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { connect, headers, type NatsConnection } from 'nats';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { loadCluster } from '../../src/config/load.js';
import { newControlKey, signControlRequest } from '../../src/api/control-auth.js';
import { etcdService } from '../../src/controlplane/services.js';
import { BIN, dynsup, pidsWithCmdline, status, tempCluster, waitFor, type StatusJson, type TempCluster } from '../helpers/cluster.js';

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
        await waitFor(
          'etcd',
          () =>
            client
              .put(`dynsup/${name}/supervisor`)
              .value(FAKE)
              .then(() => true),
          30_000,
          200,
        );
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

describe('NATS: anonymous clients (workers, anyone on the network) cannot reach the control plane', () => {
  const TOKEN = 'tok-7f3a9c1e55';
  let c: TempCluster;
  let name: string;
  let anon: NatsConnection;
  const remote = (args: string[]) => dynsup([...args, '--head', '127.0.0.1']);
  const pids = (s: StatusJson) => Object.fromEntries(s.replicas.map((r) => [r.name, r.pid]));
  // One cluster for the whole block (the afterEach above is for the etcd tests' clusters).
  afterAll(async () => {
    await anon?.close().catch(() => undefined);
    if (!c) return;
    await dynsup(['down', c.file]);
    expect(await pidsWithCmdline(c.dir)).toEqual([]);
  });

  it('runs a cluster whose worker prints a token; an anonymous client may use NATS and JetStream', async () => {
    c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w:
    command: "while true; do echo \\"token ${TOKEN}\\"; sleep 0.1; done"
    replicas: 2
`,
      { controlPlane: true, name: `nsec${Math.random().toString(36).slice(2, 8)}` },
    );
    name = clusterName(c);
    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    anon = await connect({ servers: `nats://127.0.0.1:${c.natsPort}` });
    // What workers need still works: publish/subscribe and JetStream of their own.
    const sub = anon.subscribe('work.x', { max: 1 });
    anon.publish('work.x', 'hello');
    for await (const m of sub) expect(m.string()).toBe('hello');
    const jsm = await anon.jetstreamManager();
    await jsm.streams.add({ name: 'WORK', subjects: ['work.>'] });
    await anon.jetstream().publish('work.y', 'stored');
    expect((await jsm.streams.getMessage('WORK', { last_by_subj: 'work.y' })).string()).toBe('stored');
  }, 120_000);

  it('a JetStream republish onto the control subject restarts and scales nothing', async () => {
    const before = await status(c.file);
    const jsm = await anon.jetstreamManager();
    // The attack from issue 17: a stream whose republish turns messages on evil.ctl into control requests.
    await jsm.streams.add({ name: 'EVIL', subjects: ['evil.ctl'], republish: { src: 'evil.ctl', dest: `dynsup.${name}.control` } });
    const js = anon.jetstream();
    await js.publish('evil.ctl', JSON.stringify({ op: 'restart', target: 'w-0' }));
    await js.publish('evil.ctl', JSON.stringify({ op: 'scale', group: 'w', count: 4 }));
    expect((await jsm.streams.info('EVIL')).state.messages).toBe(2); // the attack ran in full
    await new Promise((r) => setTimeout(r, 3000));
    const after = await status(c.file);
    expect(after.replicas.map((r) => r.name).sort()).toEqual(['w-0', 'w-1']);
    expect(pids(after)).toEqual(pids(before));
    expect(after.replicas.every((r) => r.restarts === 0)).toBe(true);
  }, 60_000);

  it('an anonymous stream on dynsup.<cluster>.> and a subscription to > read no control request, reply or log line', async () => {
    const jsm = await anon.jetstreamManager();
    const snoop = await jsm.streams.add({ name: 'SNOOP', subjects: [`dynsup.${name}.>`] }).then(
      () => true,
      () => false,
    );
    const seen: string[] = [];
    const all = anon.subscribe('>');
    void (async () => {
      for await (const m of all) seen.push(`${m.subject} ${m.string()}`);
    })();
    const inbox = anon.subscribe('_INBOX.>');
    void (async () => {
      for await (const m of inbox) seen.push(`${m.subject} ${m.string()}`);
    })();
    await anon.flush();

    // Positive control: the cluster's credentials do see the log lines (and the status reply is real).
    const creds = JSON.parse(readFileSync(join(c.dir, 'state/run/credentials.json'), 'utf8')) as { natsUser: string; natsPassword: string };
    const ctl = await connect({ servers: `nats://127.0.0.1:${c.natsPort}`, user: creds.natsUser, pass: creds.natsPassword });
    let logLines = 0;
    const logs = ctl.subscribe(`dynsup.${name}.log.>`);
    void (async () => {
      for await (const m of logs) if (m.string().includes(TOKEN)) logLines++;
    })();

    const s = await remote(['status', c.file, '--json']);
    expect(s.code, s.stderr).toBe(0);
    expect(s.stdout).toContain('w-0');
    const r = await remote(['restart', c.file, 'w-1']);
    expect(r.code, r.stderr).toBe(0);
    await waitFor('log lines on the control account', () => logLines >= 3, 10_000, 100);
    await new Promise((res) => setTimeout(res, 500));
    await ctl.close();

    expect(seen.filter((m) => m.includes(TOKEN) || m.includes('w-0') || m.includes('restart') || m.includes('"replicas"'))).toEqual([]);
    expect(seen.filter((m) => m.startsWith('dynsup.'))).toEqual([]);
    if (snoop) expect((await jsm.streams.info('SNOOP')).state.messages).toBe(0);
    all.unsubscribe();
    inbox.unsubscribe();
    await anon.close();
  }, 60_000);
});

/** The NATS URL a worker of `c` got (NATS_SERVER in its environment), split for nats.js. */
function workerNats(pid: number): { servers: string; user?: string; pass?: string } {
  const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  const url = new URL(env.find((e) => e.startsWith('NATS_SERVER='))!.slice('NATS_SERVER='.length));
  return { servers: `nats://${url.host}`, ...(url.username ? { user: decodeURIComponent(url.username), pass: decodeURIComponent(url.password) } : {}) };
}

function workerEnv(pid: number): Record<string, string> {
  return Object.fromEntries(
    readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .filter(Boolean)
      .map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]),
  );
}

describe('NATS: a client with the NATS password but not the control key (a worker, with workerCredentials: true)', () => {
  let c: TempCluster;
  let name: string;
  let nc: NatsConnection;
  let control: string;
  const remote = (args: string[]) => dynsup([...args, '--head', '127.0.0.1']);
  const pids = (s: StatusJson) => Object.fromEntries(s.replicas.map((r) => [r.name, r.pid]));
  const settle = () => new Promise((r) => setTimeout(r, 2000));
  afterAll(async () => {
    await nc?.close().catch(() => undefined);
    if (!c) return;
    await dynsup(['down', c.file]);
    expect(await pidsWithCmdline(c.dir)).toEqual([]);
  });

  it('runs a cluster whose workers hold the NATS credentials of the control account', async () => {
    c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w:
    command: "while true; do echo \\"real line\\"; sleep 0.1; done"
    replicas: 2
`,
      { controlPlane: true, name: `wsec${Math.random().toString(36).slice(2, 8)}`, nats: 'workerCredentials: true' },
    );
    name = clusterName(c);
    control = `dynsup.${name}.control`;
    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    // What a worker holds: the cluster's NATS user and password, in NATS_SERVER.
    const opts = workerNats((await status(c.file)).replicas[0]!.pid!);
    expect(opts.user).toBe('dynsup');
    nc = await connect(opts);
  }, 120_000);

  it('an injected request (unsigned, or signed with a guessed key) restarts and scales nothing, and is refused', async () => {
    const before = await status(c.file);
    const unsigned = await nc.request(control, JSON.stringify({ op: 'restart', target: 'w-0' }), { timeout: 5000 });
    expect(JSON.parse(unsigned.string())).toMatchObject({ ok: false, code: 'E_AUTH' });
    const guessed = signControlRequest(newControlKey(), name, { op: 'scale', group: 'w', count: 4 });
    const refused = await nc.request(control, JSON.stringify(guessed), { timeout: 5000 });
    expect(JSON.parse(refused.string())).toMatchObject({
      ok: false,
      code: 'E_AUTH',
      error: expect.stringMatching(/not signed with this cluster's control key/),
    });
    // The republish attack of issue 17, inside the control account this time.
    const jsm = await nc.jetstreamManager();
    await jsm.streams.add({ name: 'EVIL', subjects: ['evil.ctl'], republish: { src: 'evil.ctl', dest: control } });
    await nc.jetstream().publish('evil.ctl', JSON.stringify({ op: 'restart', target: 'w-0' }));
    await nc.jetstream().publish('evil.ctl', JSON.stringify(signControlRequest(newControlKey(), name, { op: 'scale', group: 'w', count: 4 })));
    expect((await jsm.streams.info('EVIL')).state.messages).toBe(2);
    await settle();
    const after = await status(c.file);
    expect(after.replicas.map((r) => r.name).sort()).toEqual(['w-0', 'w-1']);
    expect(pids(after)).toEqual(pids(before));
    expect(eventLog(c)).toMatch(/refused a control request over NATS: /);
  }, 60_000);

  it('a genuine request captured and sent again (directly, or by a JetStream republish) is refused', async () => {
    const captured: Uint8Array[] = [];
    const tap = nc.subscribe(control, { callback: (_e, m) => captured.push(m.data) });
    // A stream on the control subject: it stores the request, and answers its publisher with a PubAck.
    const jsm = await nc.jetstreamManager();
    await jsm.streams.add({ name: 'CAPTURE', subjects: [control] });
    await nc.flush();
    const r = await remote(['restart', c.file, 'w-1']);
    expect(r.code, r.stderr).toBe(0); // the PubAck on its inbox was no answer of the supervisor's
    expect(r.stdout).toBe('restarted w-1\n');
    const restarted = await waitFor('w-1 running again', async () => {
      const s = await status(c.file);
      const w1 = s.replicas.find((x) => x.name === 'w-1');
      return w1?.state === 'running' ? s : null;
    });
    await waitFor('the request captured', () => captured.length === 1 && true);
    tap.unsubscribe();
    await jsm.streams.delete('CAPTURE');

    // Sent again at once, with a reply subject: no answer (a replay), no restart.
    await expect(nc.request(control, captured[0]!, { timeout: 2000 })).rejects.toThrow(/TIMEOUT/i);
    // Through a JetStream republish.
    await jsm.streams.add({ name: 'REPLAY', subjects: ['evil.replay'], republish: { src: 'evil.replay', dest: control } });
    await nc.jetstream().publish('evil.replay', captured[0]!);
    await settle();
    expect(pids(await status(c.file))).toEqual(pids(restarted));
  }, 60_000);

  it('forged answers are ignored: status, restart and logs -f show only what the supervisor sent', async () => {
    const fakeStatus = {
      cluster: name,
      controlPlane: [],
      replicas: [
        { name: 'evil-0', group: 'w', node: 'head', state: 'running', pid: 1, restarts: 0, lastExit: null, gpus: [], startedAt: 1, since: 1, message: null },
      ],
    };
    // Answer every control request first: unsigned, and signed with a guessed key for the request's own nonce.
    const liar = nc.subscribe(control, {
      callback: (_e, m) => {
        const nonce = (JSON.parse(m.string()) as { nonce: string }).nonce;
        const res = JSON.stringify({ ok: true, result: fakeStatus });
        m.respond(JSON.stringify({ ok: true, result: fakeStatus }));
        m.respond(JSON.stringify({ dynsup: 1, nonce, kind: 'result', res, sig: Buffer.alloc(32).toString('base64url') }));
        m.respond(JSON.stringify({ ok: false, error: 'pwned', code: 'E_AUTH' }));
      },
    });
    await nc.flush();
    const s = await remote(['status', c.file, '--json']);
    expect(s.code, s.stderr).toBe(0);
    expect((JSON.parse(s.stdout) as StatusJson).replicas.map((r) => r.name).sort()).toEqual(['w-0', 'w-1']);
    const r = await remote(['restart', c.file, 'w-0']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('restarted w-0\n');
    liar.unsubscribe();

    // Forged worker lines on the log subject (with and without a signature header) are not shown.
    const follower = spawn(process.execPath, [BIN, 'logs', c.file, 'w-0', '-f', '--head', '127.0.0.1', '-n', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    follower.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor('live lines', () => out.split('real line').length > 3, 20_000);
      for (const sig of [undefined, Buffer.alloc(32).toString('base64url')]) {
        const h = headers();
        h.set('Dynsup-Seq', '1000000');
        if (sig) h.set('Dynsup-Sig', sig);
        nc.publish(`dynsup.${name}.log.w-0`, 'FORGED line\n', { headers: h });
      }
      nc.publish(`dynsup.${name}.log.w-0`, 'FORGED line\n');
      await nc.flush();
      const seen = out.length;
      await waitFor('more live lines', () => out.slice(seen).split('real line').length > 3, 20_000);
    } finally {
      follower.kill('SIGINT');
    }
    expect(out).not.toContain('FORGED');
  }, 60_000);
});

describe('etcd with controlPlane.etcd.auth: true', () => {
  it('anonymous clients can neither put a fake leader key nor read dynsup/; workers use their own user for everything else', async () => {
    const c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`,
      { controlPlane: true, name: `esec${Math.random().toString(36).slice(2, 8)}`, etcd: 'auth: true' },
    );
    started.push(c);
    const name = clusterName(c);
    const key = `dynsup/${name}/supervisor`;
    const hosts = `http://127.0.0.1:${c.etcdPort}`;
    for (let round = 0; round < 2; round++) {
      // Round 2: the data dir has authentication on already; up sets nothing up twice.
      const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
      expect(r.code, r.stderr + r.stdout).toBe(0);
      const anon = new Etcd3({ hosts });
      try {
        await expect(anon.put(key).value(FAKE)).rejects.toThrow(/user name is empty/);
        await expect(anon.get(key).string()).rejects.toThrow(/user name is empty/);
        await expect(anon.put('v1/instances/x').value('1')).rejects.toThrow(/user name is empty/);
      } finally {
        anon.close();
      }
      // A worker's credentials: its own keys, not dynsup's.
      const env = workerEnv((await status(c.file)).replicas[0]!.pid!);
      expect(env.ETCD_AUTH_USERNAME).toBe('workers');
      const worker = new Etcd3({ hosts: env.ETCD_ENDPOINTS!, auth: { username: env.ETCD_AUTH_USERNAME!, password: env.ETCD_AUTH_PASSWORD! } });
      try {
        await worker.put('v1/instances/w-0').value('here');
        expect(await worker.get('v1/instances/w-0').string()).toBe('here');
        const lease = worker.lease(5);
        await lease.put('zz/lease').value('1');
        await lease.revoke();
        await expect(worker.put(key).value(FAKE)).rejects.toThrow(/permission denied/);
        await expect(worker.delete().key(key)).rejects.toThrow(/permission denied/);
        await expect(worker.getAll().prefix(`dynsup/${name}/`).strings()).rejects.toThrow(/permission denied/);
      } finally {
        worker.close();
      }
      // The supervisor's own view is intact, and status from another machine reads it with the credentials.
      const s = await status(c.file);
      expect(s.running).toBe(true);
      const remote = await dynsup(['status', c.file, '--json', '--head', '127.0.0.1', '--creds', join(c.dir, 'state/run/credentials.json')]);
      expect(remote.code, remote.stderr).toBe(0);
      const down = await dynsup(['down', c.file]);
      expect(down.code, down.stderr).toBe(0);
    }
    expect(eventLog(c)).toMatch(/etcd authentication turned on/);
  }, 180_000);
});
