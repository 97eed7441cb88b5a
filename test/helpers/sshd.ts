/**
 * A real OpenSSH server for integration tests: own host keys, own client key, own config, in a temp
 * dir; `sshd -D -e` as a child of the test process. Needs root (sshd's privilege separation) and
 * /usr/sbin/sshd.
 *
 * It logs in as a test user (test/helpers/test-user.ts), never as this machine's root: by default
 * dynsup-t (shell /bin/sh, empty home, no rc files); `login: 'rc'` gives dynsup-rc, whose bash rc files
 * are slow and noisy on purpose. Only that one user's key is authorized.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureTestUser, giveTo, type LoginKind, type TestUser } from './test-user.js';

const execFileP = promisify(execFile);
const SSHD = '/usr/sbin/sshd';

export interface StartSshdOptions {
  /** Listen address, e.g. '127.0.0.1'. */
  readonly address: string;
  /** Fixed port; default: a free high port picked by the kernel. */
  readonly port?: number;
  /** sshd MaxSessions (channels per connection). Default 64. */
  readonly maxSessions?: number;
  /** Extra sshd_config lines; they win over the fixture's own settings (sshd keeps a keyword's first value). */
  readonly extraConfig?: readonly string[];
  /**
   * Who logs in: 'clean' (default, dynsup-t: /bin/sh, no rc files) or 'rc' (dynsup-rc: bash whose
   * ~/.bashrc and ~/.profile sleep 1 s and print `rc-noise` to stdout and stderr).
   */
  readonly login?: LoginKind;
  /**
   * Files the node's sessions must not see (e.g. the node binary, for a node without Node.js): sshd runs
   * in a private mount namespace where each is covered by /dev/null. Needs root (unshare, mount).
   */
  readonly hide?: readonly string[];
}

export interface HostKey {
  readonly keyType: string;
  readonly keyBase64: string;
}

export interface Sshd {
  readonly address: string;
  readonly port: number;
  /** `[address]:port ssh-ed25519 AAAA...`: the ed25519 host key as a known_hosts line. */
  readonly hostKeyLine: string;
  /** All host keys the server offers (ed25519 first, then ecdsa-sha2-nistp256). */
  readonly hostKeys: readonly HostKey[];
  /** A known_hosts file holding hostKeyLine. */
  readonly knownHostsFile: string;
  /** Unencrypted private key authorized for `user`. */
  readonly identityFile: string;
  /** The only user that can log in (dynsup-t, or dynsup-rc with `login: 'rc'`). */
  readonly user: string;
  readonly testUser: TestUser;
  /**
   * Temp dir holding everything above; removed by stop(). Tests may put their own files here (the test
   * user can traverse it, not write to it).
   */
  readonly dir: string;
  /** A directory in `dir` owned by `user`: where commands run over ssh may write. */
  readonly workDir: string;
  /** sshd's stderr so far (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

async function keygen(file: string, type: string, passphrase = ''): Promise<void> {
  await execFileP('ssh-keygen', ['-q', '-t', type, '-N', passphrase, '-C', '', '-f', file]);
}

/** `ssh-ed25519 AAAA...` from a .pub file, comment dropped. */
async function readPub(file: string): Promise<HostKey> {
  const [keyType, keyBase64] = (await readFile(file, 'utf8')).trim().split(/\s+/);
  if (keyType === undefined || keyBase64 === undefined) throw new Error(`bad public key file ${file}`);
  return { keyType, keyBase64 };
}

/** Let the kernel pick a free port. It can be taken again before sshd binds it; start() retries. */
export function freePort(address = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, address, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function sshdConfig(dir: string, address: string, port: number, options: StartSshdOptions): string {
  return [
    // First: for most keywords sshd keeps the first value it reads, so these override the defaults below.
    ...(options.extraConfig ?? []),
    `Port ${port}`,
    `ListenAddress ${address}`,
    `HostKey ${join(dir, 'host_ed25519')}`,
    `HostKey ${join(dir, 'host_ecdsa')}`,
    `PidFile ${join(dir, 'sshd.pid')}`,
    // %u: only the test user has a file, so other users fail auth even with the right key.
    `AuthorizedKeysFile ${join(dir, 'authorized_keys.%u')}`,
    'UsePAM no',
    'StrictModes no',
    'PermitRootLogin no',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    `MaxSessions ${options.maxSessions ?? 64}`,
    // Tests connect in parallel; the default 10:30:100 would drop some of them at random.
    'MaxStartups 200',
    'PrintMotd no',
    'LogLevel VERBOSE',
    '',
  ].join('\n');
}

/**
 * Start sshd and resolve once it logged "Server listening" and the port answers with an SSH banner.
 * Rejects with sshd's stderr if it exits first.
 */
function launch(configFile: string, port: number, address: string, hide: readonly string[] = []): Promise<{ child: ChildProcess; log: () => string }> {
  return new Promise((resolve, reject) => {
    const sshd = [SSHD, '-D', '-e', '-f', configFile];
    const cover = 'n=$1; shift; while [ "$n" -gt 0 ]; do mount --bind /dev/null "$1" || exit 1; shift; n=$((n-1)); done; exec "$@"';
    const child = hide.length
      ? spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', cover, 'sh', String(hide.length), ...hide, ...sshd], {
          stdio: ['ignore', 'ignore', 'pipe'],
        })
      : spawn(sshd[0]!, sshd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`sshd: ${why}\n${stderr}`));
    };
    const timer = setTimeout(() => fail('not listening after 10s'), 10_000);
    child.once('error', (err) => fail(err.message));
    child.once('exit', (code, sig) => fail(`exited (${code ?? sig}) before listening`));
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      stderr += d;
      if (!settled && stderr.includes(`Server listening on ${address} port ${port}`)) {
        awaitBanner(address, port).then(
          () => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            child.removeAllListeners('exit');
            resolve({ child, log: () => stderr });
          },
          (err: Error) => fail(err.message),
        );
      }
    });
  });
}

/** Connect once and read the `SSH-2.0-` identification line: proves it is our sshd answering. */
function awaitBanner(address: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: address, port });
    let got = '';
    sock.setEncoding('utf8');
    sock.once('error', reject);
    sock.on('data', (d: string) => {
      got += d;
      if (got.includes('\n')) {
        sock.destroy();
        if (got.startsWith('SSH-2.0-')) resolve();
        else reject(new Error(`unexpected banner ${JSON.stringify(got)}`));
      }
    });
    sock.once('end', () => reject(new Error('closed before banner')));
  });
}

export async function startSshd(options: StartSshdOptions): Promise<Sshd> {
  const { address } = options;
  await mkdir('/run/sshd', { recursive: true }); // privilege separation directory sshd insists on
  const testUser = await ensureTestUser(options.login ?? 'clean');
  const dir = await mkdtemp(join(tmpdir(), 'dynsup-sshd-'));
  try {
    // sshd reads authorized_keys with the user's rights: the user may traverse (not list) the dir.
    await chmod(dir, 0o711);
    const workDir = join(dir, 'work');
    await mkdir(workDir);
    await giveTo(testUser, workDir);
    await Promise.all([keygen(join(dir, 'host_ed25519'), 'ed25519'), keygen(join(dir, 'host_ecdsa'), 'ecdsa'), keygen(join(dir, 'id_ed25519'), 'ed25519')]);
    const hostKeys = [await readPub(join(dir, 'host_ed25519.pub')), await readPub(join(dir, 'host_ecdsa.pub'))];
    const clientPub = await readFile(join(dir, 'id_ed25519.pub'), 'utf8');
    await writeFile(join(dir, `authorized_keys.${testUser.name}`), clientPub, { mode: 0o644 });

    const configFile = join(dir, 'sshd_config');
    let lastError: unknown;
    // A picked port can be grabbed by someone else before sshd binds it: then pick another.
    for (let attempt = 0; attempt < (options.port === undefined ? 5 : 1); attempt++) {
      const port = options.port ?? (await freePort(address));
      await writeFile(configFile, sshdConfig(dir, address, port, options));
      let started: { child: ChildProcess; log: () => string };
      try {
        started = await launch(configFile, port, address, options.hide);
      } catch (err) {
        lastError = err;
        if (String(err).includes('Address already in use')) continue;
        throw err;
      }
      const hostPart = port === 22 ? address : `[${address}]:${port}`;
      const ed = hostKeys[0] as HostKey;
      const hostKeyLine = `${hostPart} ${ed.keyType} ${ed.keyBase64}`;
      const knownHostsFile = join(dir, 'known_hosts');
      await writeFile(knownHostsFile, hostKeyLine + '\n');
      return {
        address,
        port,
        hostKeyLine,
        hostKeys,
        knownHostsFile,
        identityFile: join(dir, 'id_ed25519'),
        user: testUser.name,
        testUser,
        dir,
        workDir,
        log: started.log,
        stop: () => stopSshd(started.child, dir),
      };
    }
    throw lastError;
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

async function stopSshd(child: ChildProcess, dir: string): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    await exited;
  }
  await rm(dir, { recursive: true, force: true });
}
