/**
 * controlPlane.etcd.tls: the cluster's own CA and the certificates the etcd dynsup starts serves with, in
 * <stateDir>/tls/etcd (dir 0700, keys 0600), made with `openssl` on `up`:
 *
 *   ca.pem, ca.key          the CA: made once and kept, so that the CA workers were given stays valid
 *                           across runs (a file of it is on their nodes; adopted workers keep theirs)
 *   server.pem, server.key  etcd's certificate: head.address, 127.0.0.1 and localhost. Issued again when
 *                           it does not cover the head's address (Slurm: another batch host) or expires soon
 *   client.pem, client.key  a client certificate for workers: Dynamo's etcd client turns TLS on only when
 *                           ETCD_AUTH_CA, ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY are all set. etcd
 *                           asks no client for a certificate (no --trusted-ca-file), so it proves nothing
 *
 * dynsup itself, the CLI and workers verify etcd against ca.pem; nobody trusts it by accident (it is in no
 * system store).
 */
import { execFile } from 'node:child_process';
import { X509Certificate, randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ClusterConfig } from '../config/types.js';
import { DynsupError, errorMessage } from '../util/errors.js';

const run = promisify(execFile);

/** What workers and dynsup's clients are given: PEM text. */
export interface EtcdTlsMaterial {
  readonly ca: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

export function etcdTlsDir(stateDir: string): string {
  return join(stateDir, 'tls', 'etcd');
}

export function etcdTlsFiles(stateDir: string) {
  const dir = etcdTlsDir(stateDir);
  const f = (n: string) => join(dir, n);
  return {
    dir,
    ca: f('ca.pem'),
    caKey: f('ca.key'),
    server: f('server.pem'),
    serverKey: f('server.key'),
    client: f('client.pem'),
    clientKey: f('client.key'),
  };
}

/** The names etcd's certificate must hold: what workers dial (head.address), and this machine's loopback. */
export function serverNames(cluster: Pick<ClusterConfig, 'headAddress'>): string[] {
  const head = cluster.headAddress.replace(/^\[(.*)\]$/, '$1');
  return [...new Set([head, '127.0.0.1', 'localhost'])];
}

/** Re-issue a leaf this long before it expires (a long-lived cluster's next `up` renews it). */
const RENEW_MS = 30 * 24 * 3600_000;

/**
 * Make what is missing or no longer right (idempotent: a second `up` changes nothing) and return the PEMs
 * workers get. Called under the supervisor's lock, so no two `up` write here at once.
 */
export async function ensureEtcdTls(cluster: ClusterConfig): Promise<EtcdTlsMaterial> {
  const f = etcdTlsFiles(cluster.stateDir);
  await mkdir(f.dir, { recursive: true, mode: 0o700 });
  await chmod(f.dir, 0o700);
  let ca = await readCert(f.ca);
  const caKeyThere = await readFile(f.caKey).then(
    () => true,
    () => false,
  );
  if (ca && !caKeyThere) {
    throw new DynsupError(
      'E_CONTROL_PLANE',
      `${f.ca} has no key beside it (${f.caKey}): restore it, or remove ${f.dir} to make a new CA (workers then need the new one: restart them)`,
    );
  }
  if (!ca) {
    await openssl(f.dir, [
      ['req', '-x509', ...EC_KEY, '-nodes', '-keyout', `${f.caKey}.tmp`, '-out', `${f.ca}.tmp`, '-days', '3650'],
      ['-subj', `/CN=dynsup ${cluster.name} etcd CA`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    ]);
    await chmod(`${f.caKey}.tmp`, 0o600);
    await rename(`${f.caKey}.tmp`, f.caKey);
    await rename(`${f.ca}.tmp`, f.ca);
    ca = (await readCert(f.ca))!;
    // A new CA: leaves of an earlier one (a removed ca.*) are of no use.
    await rm(f.server, { force: true });
    await rm(f.client, { force: true });
  }
  const names = serverNames(cluster);
  const server = await readCert(f.server);
  if (!server || !usable(server, ca) || !names.every((n) => (isIP(n) ? server.checkIP(n) : server.checkHost(n)))) {
    const san = names.map((n) => (isIP(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
    await issue(f, 'server', `/CN=dynsup ${cluster.name} etcd`, [`subjectAltName=${san}`, 'extendedKeyUsage=serverAuth']);
  }
  const client = await readCert(f.client);
  if (!client || !usable(client, ca)) await issue(f, 'client', '/CN=workers', ['extendedKeyUsage=clientAuth']);
  const [caPem, clientCert, clientKey] = await Promise.all([readFile(f.ca, 'utf8'), readFile(f.client, 'utf8'), readFile(f.clientKey, 'utf8')]);
  return { ca: caPem, clientCert, clientKey };
}

/** The CA of an etcd with controlPlane.etcd.tls, as clients take it (null when there is none yet). */
export async function readEtcdCa(stateDir: string): Promise<Buffer | null> {
  return readFile(etcdTlsFiles(stateDir).ca).catch(() => null);
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'];

async function readCert(file: string): Promise<X509Certificate | null> {
  const pem = await readFile(file).catch(() => null);
  if (!pem) return null;
  try {
    return new X509Certificate(pem);
  } catch {
    return null; // unreadable: issued anew
  }
}

function usable(cert: X509Certificate, ca: X509Certificate): boolean {
  return cert.checkIssued(ca) && cert.verify(ca.publicKey) && Date.parse(cert.validTo) - Date.now() > RENEW_MS;
}

/** A key and a certificate signed by the CA, written beside it as NAME.key / NAME.pem. */
async function issue(f: ReturnType<typeof etcdTlsFiles>, name: 'server' | 'client', subject: string, ext: string[]): Promise<void> {
  const [pem, key] = name === 'server' ? [f.server, f.serverKey] : [f.client, f.clientKey];
  const csr = join(f.dir, `${name}.csr.tmp`);
  const extFile = join(f.dir, `${name}.ext.tmp`);
  await writeFile(extFile, ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', ...ext, ''].join('\n'), {
    mode: 0o600,
  });
  try {
    await openssl(f.dir, [['req', '-new', ...EC_KEY, '-nodes', '-keyout', `${key}.tmp`, '-out', csr, '-subj', subject]]);
    await openssl(f.dir, [
      ['x509', '-req', '-in', csr, '-CA', f.ca, '-CAkey', f.caKey, '-set_serial', `0x${randomBytes(16).toString('hex')}`],
      ['-days', '825', '-extfile', extFile, '-out', `${pem}.tmp`],
    ]);
    await chmod(`${key}.tmp`, 0o600);
    await rename(`${key}.tmp`, key);
    await rename(`${pem}.tmp`, pem);
  } finally {
    await rm(csr, { force: true });
    await rm(extFile, { force: true });
  }
}

async function openssl(cwd: string, args: string[][]): Promise<void> {
  try {
    // umask is the process's: keys are chmod-ed after, in a dir only we can enter.
    await run('openssl', args.flat(), { cwd, timeout: 60_000 });
  } catch (err) {
    const e = err as { code?: unknown; stderr?: string };
    if (e.code === 'ENOENT') {
      throw new DynsupError(
        'E_CONTROL_PLANE',
        'controlPlane.etcd.tls needs `openssl` on the head to make its CA and certificates: install it (Debian: apt-get install openssl)',
        {
          cause: err,
        },
      );
    }
    throw new DynsupError(
      'E_CONTROL_PLANE',
      `controlPlane.etcd.tls: openssl ${args[0]![0]} failed: ${(e.stderr ?? '').trim().slice(-500) || errorMessage(err)}`,
      {
        cause: err,
      },
    );
  }
}

/**
 * etcd3 options for a client that verifies etcd against `ca` (none: plain http, or the system's trust).
 * The name checked is `localhost`, which etcd's certificate always holds: gRPC would send the dialled
 * address as the TLS server name, an IP there is against RFC 6066 and Node warns (DEP0123) on every
 * connection. The check stays one against this cluster's own CA, which signs no other server certificate.
 */
export function caCredentials(ca: Buffer | null | undefined): {
  credentials?: { rootCertificate: Buffer };
  grpcOptions?: { 'grpc.ssl_target_name_override': string };
} {
  return ca ? { credentials: { rootCertificate: ca }, grpcOptions: { 'grpc.ssl_target_name_override': 'localhost' } } : {};
}
