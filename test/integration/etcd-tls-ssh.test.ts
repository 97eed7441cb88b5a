/**
 * controlPlane.etcd.tls on a lab of two ssh nodes: etcd listens on the lab's bridge address (head.address,
 * not 127.0.0.1), and a worker on each node, started by that node's agent as the lab's test user, reaches
 * it over https with only the env it is given: ETCD_ENDPOINTS=https://<head.address>:<port> and the CA,
 * which the node's agent wrote into a 0600 file of the lab user on that node (DYNSUP_ETCD_CA_FILE). The
 * workers' etcd client checks the name it dialled (head.address, an IP) against etcd's certificate, so
 * the certificate's SAN for head.address is what lets them in. In clear, the port answers nothing; `down`
 * leaves no process and no file on the nodes. Real etcd, sshd and nodes (network namespaces).
 */
import { request } from 'node:http';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkServerIdentity, connect, type PeerCertificate } from 'node:tls';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, pidsWithEnv, waitFor } from '../helpers/cluster.js';
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

/**
 * The worker: connects with what dynsup gave it (ETCD_ENDPOINTS, the CA file on its node), writes and
 * reads back a key of its own, says where it ran and with what, and stays up. etcd3 comes from lab.share
 * (the repository may not be readable by the lab user); its gRPC client verifies the dialled address
 * against etcd's certificate (no name override here, unlike dynsup's own clients).
 */
const probe = (share: string) => `
import { createRequire } from 'node:module';
import { readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
const { Etcd3 } = createRequire(${JSON.stringify(join(share, 'probe.cjs'))})('etcd3');
const e = process.env;
const ca = readFileSync(e.DYNSUP_ETCD_CA_FILE);
if (ca.toString() !== e.ETCD_AUTH_CA || !e.ETCD_AUTH_CLIENT_CERT || !e.ETCD_AUTH_CLIENT_KEY) { console.log('ENV-WRONG'); process.exit(1); }
const c = new Etcd3({ hosts: e.ETCD_ENDPOINTS.split(','), credentials: { rootCertificate: ca } });
const key = 'v1/probe/' + e.DYNSUP_WORKER;
await c.put(key).value(e.DYNSUP_NODE + '@' + hostname());
console.log(['ETCD-OK', await c.get(key).string(), e.ETCD_ENDPOINTS, e.DYNSUP_ETCD_CA_FILE, process.getuid()].join(' '));
c.close();
setInterval(() => undefined, 1 << 30);
`;

function logOf(dir: string, replica: string): string {
  try {
    return readFileSync(join(dir, 'state', 'logs', `${replica}.log`), 'utf8');
  } catch {
    return '';
  }
}

/** The probe's line in the replica log (its state, not the time it took, is what is waited for). */
function probeLine(dir: string, replica: string): Promise<string> {
  return waitFor(
    `${replica} to reach etcd`,
    () => {
      const log = logOf(dir, replica);
      if (log.includes('ENV-WRONG')) throw new Error(`${replica} env: ${log}`);
      return /^ETCD-OK .*$/m.exec(log)?.[0];
    },
    90_000,
    200,
  );
}

/** A raw HTTP/1.1 request of the etcd gateway's, in clear: what answers it (status 0: the connection was dropped). */
function plainHttp(host: string, port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request({ host, port, method: 'POST', path: '/v3/kv/range', headers: { 'content-type': 'application/json' }, timeout: 10_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer')));
    req.on('error', (err) => resolve({ status: 0, body: err.message }));
    req.end(JSON.stringify({ key: Buffer.from('v1/').toString('base64') }));
  });
}

/** etcd's certificate as served at host:port, verified against ca (the chain only: names are checked by the caller). */
function servedCert(host: string, port: number, ca: Buffer): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, ca, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined }, () => {
      const cert = s.getPeerCertificate();
      s.end();
      resolve(cert);
    });
    s.on('error', reject);
  });
}

describe('etcd with controlPlane.etcd.tls on two ssh nodes', () => {
  it('a worker on each node reaches etcd over https at head.address with its env only; the CA file is on its node, 0600, the lab user’s; down leaves nothing', async () => {
    const {
      file,
      dir,
      name,
      etcdPort: e,
    } = await labCluster(lab, {
      prefix: 'etls',
      controlPlane: { etcd: 'tls: true' },
      workers: (dir) =>
        lab.nodes
          .map(
            (x) => `  on${x.name}:
    command: [node, ${dir}/probe.mjs]
    nodes: [${x.name}]
    restart: { initialDelay: 100ms, jitter: 0 }
    stop: { grace: 2s }`,
          )
          .join('\n'),
    });
    writeFileSync(join(dir, 'probe.mjs'), probe(lab.share));
    clusters.push(file);
    const up = await dynsup(['up', '-d', file, '--timeout', '90']);
    expect(up.code, up.stderr + up.stdout).toBe(0);
    const ca = readFileSync(join(dir, 'state/tls/etcd/ca.pem'));

    // etcd's certificate, as served on the bridge address: the CA's, and it names head.address (an IP SAN).
    const cert = await servedCert(lab.head, e, ca);
    expect(cert.subjectaltname).toContain(`IP Address:${lab.head}`);
    expect(checkServerIdentity(lab.head, cert)).toBeUndefined();
    expect(checkServerIdentity('10.99.0.250', cert)).toBeInstanceOf(Error);

    const caFiles: string[] = [];
    for (const node of lab.nodes) {
      const replica = `on${node.name}-0`;
      const [, value, endpoint, caFile, uid] = (await probeLine(dir, replica)).split(' ');
      // It ran on its node (that node's hostname), as the lab user, and dialled head.address over https.
      expect(value).toBe(`${node.name}@${node.name}`);
      expect(Number(uid)).toBe(lab.testUser.uid);
      expect(endpoint).toBe(`https://${lab.head}:${e}`);
      // The CA file: in that node's agent run dir, written by that agent (the lab user's, 0600), the CA.
      expect(caFile!.startsWith(`/tmp/dynsup-${lab.user}/${name}/${node.name}/`), caFile).toBe(true);
      const st = statSync(caFile!);
      expect(st.mode & 0o777).toBe(0o600);
      expect(st.uid).toBe(lab.testUser.uid);
      expect(readFileSync(caFile!)).toEqual(ca);
      // The same, as the lab user sees it on the node through ssh.
      const seen = await lab.ssh(node.name, `stat -c '%a %U' ${caFile} && cat ${caFile}`);
      expect(seen.stdout).toBe(`600 ${lab.user}\n${ca.toString()}`);
      caFiles.push(caFile!);
    }
    expect(new Set(caFiles).size).toBe(2);

    // What the workers wrote is in etcd, read from here over https at head.address with the CA.
    const client = new Etcd3({ hosts: `https://${lab.head}:${e}`, credentials: { rootCertificate: ca } });
    try {
      for (const node of lab.nodes) expect(await client.get(`v1/probe/on${node.name}-0`).string()).toBe(`${node.name}@${node.name}`);
    } finally {
      client.close();
    }

    // In clear at head.address: no etcd answer (etcd drops the connection).
    const plain = await plainHttp(lab.head, e);
    expect(plain.status).not.toBe(200);
    expect(plain.body).not.toMatch(/"kvs"|"header"/);

    const down = await dynsup(['down', file]);
    expect(down.code, down.stderr).toBe(0);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).toEqual([]);
    for (const f of caFiles) expect(existsSync(f), f).toBe(false);
    for (const node of lab.nodes) expect(existsSync(`/tmp/dynsup-${lab.user}/${name}/${node.name}`)).toBe(false);
    rmSync(dir, { recursive: true, force: true }); // kept for a look when the test fails
  }, 240_000);
});
