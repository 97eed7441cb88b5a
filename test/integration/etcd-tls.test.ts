/**
 * controlPlane.etcd.tls: the etcd dynsup starts serves clients over TLS only, with a certificate of the
 * cluster's own CA. Real etcd and nats-server, through the real CLI: a plain client gets nothing, a client
 * that trusts the system store is refused, one with the CA works; a worker reaches etcd with the env it is
 * given (the CA in ETCD_AUTH_CA and in a file on its node); the CA survives restarts of dynsup.
 */
import { request } from 'node:http';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterEach, describe, expect, it } from 'vitest';
import { ROOT, dynsup, pidsWithCmdline, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const started: TempCluster[] = [];
afterEach(async () => {
  for (const c of started.splice(0)) {
    await dynsup(['down', c.file]);
    expect(await pidsWithCmdline(c.dir)).toEqual([]);
  }
});

/**
 * The worker: connects with what dynsup gave it (ETCD_ENDPOINTS, the CA file on its node, and the user of
 * controlPlane.etcd.auth when set), writes and reads back a key of its own, says so, and stays up.
 */
const PROBE = `
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
const { Etcd3 } = createRequire(${JSON.stringify(join(ROOT, 'package.json'))})('etcd3');
const e = process.env;
const ca = readFileSync(e.DYNSUP_ETCD_CA_FILE);
if (ca.toString() !== e.ETCD_AUTH_CA || !e.ETCD_AUTH_CLIENT_CERT || !e.ETCD_AUTH_CLIENT_KEY) { console.log('ENV-WRONG'); process.exit(1); }
const auth = e.ETCD_AUTH_USERNAME ? { auth: { username: e.ETCD_AUTH_USERNAME, password: e.ETCD_AUTH_PASSWORD } } : {};
const c = new Etcd3({ hosts: e.ETCD_ENDPOINTS.split(','), credentials: { rootCertificate: ca }, ...auth });
const key = 'v1/probe/' + e.DYNSUP_WORKER;
await c.put(key).value(e.PROBE_VALUE);
console.log('ETCD-OK ' + (await c.get(key).string()) + ' ' + e.ETCD_ENDPOINTS + ' ' + e.DYNSUP_ETCD_CA_FILE);
c.close();
setInterval(() => undefined, 1 << 30);
`;

async function cluster(etcd: string): Promise<TempCluster> {
  const c = await tempCluster(
    `nodes:
  head: { transport: local }
workers:
  w: { command: "exec ${process.execPath} DIR/probe.mjs", env: { PROBE_VALUE: "hello" } }
`,
    { controlPlane: true, name: `etls${Math.random().toString(36).slice(2, 8)}`, etcd },
  );
  writeFileSync(join(c.dir, 'probe.mjs'), PROBE);
  started.push(c);
  return c;
}

const tlsDir = (c: TempCluster) => join(c.dir, 'state/tls/etcd');
const mode = (file: string) => statSync(file).mode & 0o777;
const clusterName = (c: TempCluster) => /^name: (\S+)$/m.exec(readFileSync(c.file, 'utf8'))![1]!;

/** The probe's line in the replica log (its state, not the time it took, is what is waited for). */
async function probeLine(c: TempCluster, from = 0): Promise<string> {
  return waitFor(
    'the worker to reach etcd',
    () => {
      const log = readFileSync(join(c.dir, 'state/logs/w-0.log'), 'utf8').slice(from);
      if (log.includes('ENV-WRONG')) throw new Error(`worker env: ${log}`);
      return /^ETCD-OK .*$/m.exec(log)?.[0];
    },
    60_000,
    100,
  );
}

/** A raw HTTP/1.1 request of the etcd gateway's, in clear: what answers it (status 0: the connection was dropped). */
function plainHttp(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/v3/kv/range', headers: { 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', (err) => resolve({ status: 0, body: err.message }));
    req.end(JSON.stringify({ key: Buffer.from('dynsup/').toString('base64') }));
  });
}

describe('etcd with controlPlane.etcd.tls: true', () => {
  it('serves over TLS only, verified against the cluster CA; a worker reaches it with its env; the CA outlives restarts', async () => {
    const c = await cluster('tls: true');
    const name = clusterName(c);
    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr + r.stdout).toBe(0);

    // The CA and certificates: in the state dir, only for us.
    const dir = tlsDir(c);
    expect(mode(dir)).toBe(0o700);
    for (const k of ['ca.key', 'server.key', 'client.key']) expect(mode(join(dir, k))).toBe(0o600);
    const ca = readFileSync(join(dir, 'ca.pem'));
    const caKey = readFileSync(join(dir, 'ca.key'));

    // In clear: the port answers no etcd request (etcd drops the connection), and an etcd client over
    // http gets nothing.
    const plain = await plainHttp(c.etcdPort);
    expect(plain.status).not.toBe(200);
    expect(plain.body).not.toMatch(/"kvs"|"header"/);
    const http = new Etcd3({ hosts: `http://127.0.0.1:${c.etcdPort}`, dialTimeout: 2000 });
    try {
      await expect(http.get(`dynsup/${name}/supervisor`).string()).rejects.toThrow();
    } finally {
      http.close();
    }
    // Over TLS with the system's trust: the cluster's CA is in no store, so the server is refused.
    const untrusted = new Etcd3({ hosts: `https://127.0.0.1:${c.etcdPort}`, dialTimeout: 2000 });
    try {
      await expect(untrusted.get(`dynsup/${name}/supervisor`).string()).rejects.toThrow();
    } finally {
      untrusted.close();
    }
    // With the CA: etcd answers, and the supervisor's leader key is there (dynsup itself talks TLS to it).
    const trusted = new Etcd3({ hosts: `https://127.0.0.1:${c.etcdPort}`, credentials: { rootCertificate: ca } });
    try {
      const leader = JSON.parse((await trusted.get(`dynsup/${name}/supervisor`).string())!) as { pid: number };
      expect(leader.pid).toBe((await status(c.file)).supervisor!.pid);
    } finally {
      trusted.close();
    }

    // The worker: https endpoint, the CA's PEM in ETCD_AUTH_CA and in a 0600 file on its node.
    const first = await probeLine(c);
    const [, value, endpoint, caFile] = first.split(' ');
    expect(value).toBe('hello');
    expect(endpoint).toBe(`https://127.0.0.1:${c.etcdPort}`);
    expect(readFileSync(caFile!)).toEqual(ca);
    expect(mode(caFile!)).toBe(0o600);

    // The supervisor dies: status reads the last state from etcd, over TLS with the CA of the state dir.
    const sup = (await status(c.file)).supervisor!.pid;
    process.kill(sup, 'SIGKILL');
    await waitFor('the supervisor to be gone', async () => (await dynsup(['status', c.file, '--json'])).code !== 0, 30_000, 100);
    const fromEtcd = JSON.parse((await dynsup(['status', c.file, '--json'])).stdout) as { source: string };
    expect(fromEtcd.source).toBe('etcd');

    // A new up within the lease adopts the worker: the same CA, and its CA file still verifies etcd.
    const again = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(again.code, again.stderr + again.stdout).toBe(0);
    expect(readFileSync(join(dir, 'ca.pem'))).toEqual(ca);
    expect(readFileSync(join(dir, 'ca.key'))).toEqual(caKey);
    const adopted = new Etcd3({ hosts: endpoint!, credentials: { rootCertificate: readFileSync(caFile!) } });
    try {
      expect(await adopted.get('v1/probe/w-0').string()).toBe('hello');
    } finally {
      adopted.close();
    }

    // down + up: a new etcd, a new worker process, the same CA and the same file on the node.
    const logBefore = readFileSync(join(c.dir, 'state/logs/w-0.log'), 'utf8').length;
    expect((await dynsup(['down', c.file])).code).toBe(0);
    const third = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(third.code, third.stderr + third.stdout).toBe(0);
    expect(readFileSync(join(dir, 'ca.pem'))).toEqual(ca);
    const line = await probeLine(c, logBefore);
    expect(line.split(' ')[3]).toBe(caFile);
  }, 240_000);

  it('combines with auth: the worker user over TLS, anonymous clients refused even with the CA', async () => {
    const c = await cluster('tls: true, auth: true');
    const name = clusterName(c);
    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect((await probeLine(c)).split(' ')[1]).toBe('hello');
    const ca = readFileSync(join(tlsDir(c), 'ca.pem'));
    const anon = new Etcd3({ hosts: `https://127.0.0.1:${c.etcdPort}`, credentials: { rootCertificate: ca } });
    try {
      await expect(anon.get(`dynsup/${name}/supervisor`).string()).rejects.toThrow(/user name is empty/);
    } finally {
      anon.close();
    }
  }, 180_000);
});
