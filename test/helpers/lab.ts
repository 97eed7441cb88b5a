/**
 * Multi-node test beds for integration tests, built by the scripts in scripts/:
 *  - startLab(n): n "nodes" (network namespaces with their own address and a real
 *    sshd) behind a bridge whose head address is 10.99.0.1 (scripts/testbed/lab.sh);
 *  - startSlurm(n): a real Slurm cluster of n slurmd's on this host
 *    (scripts/testbed/slurm-testbed.sh).
 * Both need root. Both are machine-global (fixed namespace names, addresses and
 * ports): only one lab and one Slurm testbed can exist at a time. A test holding
 * one keeps a lock until stop(), so a second test file (another vitest worker)
 * calling startLab waits for it instead of tearing the first one's lab down.
 *
 * Lab nodes log in as the test user dynsup-t (shell /bin/sh, empty home, no rc files), never as
 * root: lab.user. What workers run must come from lab.share (a world-readable copy of
 * test/fixtures/workers, scripts/demo and the packages they import): the repository itself may not be
 * readable by the test user. What a worker writes must go to a directory it owns: lab.userDir().
 */
import { execFile, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort } from './cluster.js';
import { ensureTestUser, userDir, type TestUser } from './test-user.js';

const execFileP = promisify(execFile);

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const LAB_SH = join(REPO, 'scripts', 'testbed', 'lab.sh');
const SLURM_SH = join(REPO, 'scripts', 'testbed', 'slurm-testbed.sh');

export const LAB_HEAD = '10.99.0.1';
export const DEFAULT_LAB_DIR = '/tmp/dynsup-lab';
export const DEFAULT_SLURM_DIR = '/tmp/dynsup-slurm';

/**
 * Takes an exclusive flock(1) on file for as long as the returned release() has
 * not been called. The lock lives in a child `flock FILE cat` whose stdin we hold:
 * if this process dies, the pipe closes, cat exits and the lock is released.
 */
function holdLock(file: string, what: string, waitMs: number): Promise<() => Promise<void>> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', ['-x', '-w', String(Math.ceil(waitMs / 1000)), file, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    const exited = new Promise<void>((r) => child.once('close', () => r()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('locked')) {
        resolve(async () => {
          child.stdin.end();
          await exited;
        });
      }
    });
    child.once('error', reject);
    child.once('close', (code) => {
      if (!out.includes('locked')) {
        reject(new Error(`${what}: could not lock ${file} within ${waitMs} ms (another test still holds it?) code=${code} ${err}`));
      }
    });
  });
}

/** Runs one of our scripts; on failure the error carries the script's stderr. */
async function script(file: string, args: string[], timeoutMs: number): Promise<string> {
  try {
    const { stdout } = await execFileP('bash', [file, ...args], {
      timeout: timeoutMs,
      maxBuffer: 16 * 1024 * 1024,
      // No TTY, no inherited stdin: the scripts must never prompt.
      env: { ...process.env, LC_ALL: 'C' },
    });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string; code?: unknown };
    throw new Error(`${file} ${args.join(' ')} failed (${String(e.code ?? e.message)}):\n${e.stderr ?? ''}${e.stdout ?? ''}`, { cause: err });
  }
}

export interface LabNode {
  /** `lab1`, `lab2`, ... */
  readonly name: string;
  /** The node's address on the lab bridge, `10.99.0.11` for lab1. */
  readonly address: string;
  /** Network namespace, for `ip netns exec NETNS cmd`. */
  readonly netns: string;
  /** The node sshd's host key, `ssh-ed25519 AAAA...` (as in known_hosts, without the address). */
  readonly hostKey: string;
}

export interface Lab {
  readonly dir: string;
  readonly nodes: readonly LabNode[];
  /** Address of the head (this machine) as the nodes see it. */
  readonly head: string;
  /** Private key authorized for `user` (and `rcUser`) on every node. */
  readonly key: string;
  /** The user every node accepts: dynsup-t (shell /bin/sh, empty home, no rc files). */
  readonly user: string;
  readonly testUser: TestUser;
  /** With `rcUser: true`: dynsup-rc, bash whose ~/.bashrc and ~/.profile are slow and noisy on purpose. */
  readonly rcUser: string | undefined;
  /**
   * World-readable copy of test/fixtures/workers, scripts/demo and their node_modules, same relative
   * paths as in the repository: `${lab.share}/test/fixtures/workers/lab-worker.mjs`.
   */
  readonly share: string;
  /** A fresh directory owned by `user` (in /tmp): for what workers write (reports, cwd, runDir). */
  userDir(prefix: string): Promise<string>;
  /** known_hosts with every node's `ADDRESS ssh-ed25519 AAAA...` line. */
  readonly knownHosts: string;
  /** ssh command-line options for strict, non-interactive logins into the lab. */
  readonly sshOptions: readonly string[];
  /** Looks a node up by name; throws if there is none. */
  node(name: string): LabNode;
  /** Cuts (`up = false`) or restores a node's only link: the head and all other nodes lose it. */
  link(node: string, up: boolean): Promise<void>;
  /** Runs argv inside the node's network namespace (directly, not through ssh). */
  exec(node: string, argv: readonly string[], options?: { timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>;
  /** Runs a shell command on the node through ssh as `user` (or options.user). */
  ssh(node: string, command: string, options?: { timeoutMs?: number; user?: string }): Promise<{ stdout: string; stderr: string }>;
  /** Tears the lab down (namespaces, sshds and anything else running in the nodes). Idempotent. */
  stop(): Promise<void>;
}

export interface LabClusterOptions {
  /** Prefix of its directory (a fresh `lab.userDir`: workers may write there) and of its name. */
  readonly prefix: string;
  /** Default 20s. */
  readonly lease?: string;
  /** NATS and etcd on (their ports on the lab's head address); `etcd`: more of etcd's fields, e.g. 'tls: true'. */
  readonly controlPlane?: boolean | { readonly etcd?: string };
  /** The login of each node, by index (default `lab.user` for all). */
  readonly users?: readonly string[];
  /** More fields of every node, e.g. 'gpus: 1'. */
  readonly nodeFields?: string;
  /** The body of `workers:`; a function gets the cluster's directory. */
  readonly workers: string | ((dir: string) => string);
}

/** A cluster file over every lab node (ssh, strict host keys), in a fresh directory; what it wrote. */
export async function labCluster(lab: Lab, o: LabClusterOptions): Promise<{ file: string; dir: string; name: string; etcdPort: number }> {
  const dir = await lab.userDir(`dynsup-${o.prefix}-`);
  const name = `${o.prefix.replace(/[^a-z0-9]/g, '').slice(0, 6)}${Math.random().toString(36).slice(2, 8)}`;
  const [n, m, e, p, mp] = await Promise.all([freePort(lab.head), freePort(lab.head), freePort(lab.head), freePort(), freePort(lab.head)]);
  const cp = Boolean(o.controlPlane);
  const etcdMore = typeof o.controlPlane === 'object' && o.controlPlane.etcd ? `, ${o.controlPlane.etcd}` : '';
  const node = (x: LabNode, i: number) =>
    `  ${x.name}: { transport: ssh, host: ${x.address}, user: ${o.users?.[i] ?? lab.user}, identityFile: ${lab.key}, knownHosts: ${lab.knownHosts}${o.nodeFields ? `, ${o.nodeFields}` : ''} }`;
  const file = join(dir, 'cluster.yaml');
  writeFileSync(
    file,
    `name: ${name}
head: { address: ${lab.head} }
stateDir: ${dir}/state
lease: ${o.lease ?? '20s'}
metrics: { port: ${mp} }
controlPlane:
  nats: { enabled: ${cp}, port: ${n}, monitorPort: ${m} }
  etcd: { enabled: ${cp}, port: ${e}, peerPort: ${p}${etcdMore} }
nodes:
${lab.nodes.map(node).join('\n')}
workers:
${typeof o.workers === 'function' ? o.workers(dir) : o.workers}
`,
  );
  return { file, dir, name, etcdPort: e };
}

export interface LabOptions {
  /** Also authorize dynsup-rc (a slow and noisy bash login) on every node: lab.rcUser. */
  readonly rcUser?: boolean;
}

/**
 * Brings up a lab of n nodes (tearing down any stale one). Waits up to lockWaitMs
 * for a lab another test is still using.
 */
export async function startLab(n: number, dir: string = DEFAULT_LAB_DIR, lockWaitMs = 110_000, options: LabOptions = {}): Promise<Lab> {
  const release = await holdLock('/run/dynsup-lab.session.lock', 'startLab', lockWaitMs);
  try {
    await script(LAB_SH, ['up', String(n), '--dir', dir, ...(options.rcUser ? ['--rc-user'] : [])], 120_000);
    return await describeLab(dir, release);
  } catch (err) {
    await script(LAB_SH, ['down', '--dir', dir], 120_000).catch(() => undefined);
    await release();
    throw err;
  }
}

async function describeLab(dir: string, release: () => Promise<void>): Promise<Lab> {
  const listed = JSON.parse(await readFile(join(dir, 'nodes.json'), 'utf8')) as Array<{
    name: string;
    address: string;
    netns: string;
  }>;
  // lab.env: KEY="VALUE" lines.
  const env = new Map<string, string>();
  for (const line of (await readFile(join(dir, 'lab.env'), 'utf8')).split('\n')) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)="(.*)"$/.exec(line.trim());
    if (m) env.set(m[1]!, m[2]!);
  }
  const testUser = await ensureTestUser('clean');
  if (env.get('LAB_USER') !== testUser.name) throw new Error(`lab: LAB_USER ${env.get('LAB_USER')} in ${dir}/lab.env, expected ${testUser.name}`);
  const share = env.get('LAB_SHARE');
  if (!share) throw new Error(`lab: no LAB_SHARE in ${dir}/lab.env`);
  const knownHosts = join(dir, 'known_hosts');
  const hostKeys = new Map<string, string>();
  for (const line of (await readFile(knownHosts, 'utf8')).split('\n')) {
    const [addr, type, key] = line.trim().split(/\s+/);
    if (addr && type && key) hostKeys.set(addr, `${type} ${key}`);
  }
  const nodes: LabNode[] = listed.map((n) => {
    const hostKey = hostKeys.get(n.address);
    if (!hostKey) throw new Error(`lab: no host key for ${n.name} (${n.address}) in ${knownHosts}`);
    return { name: n.name, address: n.address, netns: n.netns, hostKey };
  });
  const key = join(dir, 'id_ed25519');
  const sshOptions = [
    '-F',
    '/dev/null',
    '-i',
    key,
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'BatchMode=yes',
    '-o',
    `UserKnownHostsFile=${knownHosts}`,
    '-o',
    'GlobalKnownHostsFile=/dev/null',
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'ConnectTimeout=5',
    '-o',
    'LogLevel=ERROR',
  ];

  const node = (name: string): LabNode => {
    const found = nodes.find((x) => x.name === name);
    if (!found) throw new Error(`lab: no node ${name} (have ${nodes.map((x) => x.name).join(', ')})`);
    return found;
  };
  let stopped = false;

  return {
    dir,
    nodes,
    head: LAB_HEAD,
    key,
    user: testUser.name,
    testUser,
    rcUser: env.get('LAB_RC_USER'),
    share,
    userDir: (prefix) => userDir(testUser, prefix),
    knownHosts,
    sshOptions,
    node,
    async link(name, up) {
      node(name);
      await script(LAB_SH, ['link', name, up ? 'up' : 'down', '--dir', dir], 30_000);
    },
    exec(name, argv, options = {}) {
      return execFileP('ip', ['netns', 'exec', node(name).netns, ...argv], {
        timeout: options.timeoutMs ?? 30_000,
        maxBuffer: 16 * 1024 * 1024,
      });
    },
    ssh(name, command, options = {}) {
      return execFileP('ssh', ['-n', ...sshOptions, `${options.user ?? testUser.name}@${node(name).address}`, command], {
        timeout: options.timeoutMs ?? 30_000,
        maxBuffer: 16 * 1024 * 1024,
      });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await script(LAB_SH, ['down', '--dir', dir], 120_000);
      } finally {
        await release();
      }
    },
  };
}

export interface SlurmTestbed {
  readonly dir: string;
  /** `node1`..`nodeN`. */
  readonly nodes: readonly string[];
  /** process.env without its SLURM_* plus SLURM_CONF: pass as `env` to sbatch/srun/squeue/scontrol. */
  readonly env: NodeJS.ProcessEnv;
  /** Cancels jobs, stops slurmd/slurmctld/munged. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Brings up a Slurm cluster of n nodes (tearing down any stale one). Waits up to
 * lockWaitMs for a testbed another test is still using.
 */
export async function startSlurm(n: number, dir: string = DEFAULT_SLURM_DIR, lockWaitMs = 110_000): Promise<SlurmTestbed> {
  const release = await holdLock('/run/dynsup-slurm.session.lock', 'startSlurm', lockWaitMs);
  try {
    await script(SLURM_SH, ['up', '--nodes', String(n), '--dir', dir], 120_000);
    return await describeSlurm(n, dir, release);
  } catch (err) {
    await script(SLURM_SH, ['down', '--dir', dir], 120_000).catch(() => undefined);
    await release();
    throw err;
  }
}

async function describeSlurm(n: number, dir: string, release: () => Promise<void>): Promise<SlurmTestbed> {
  // SLURM_* from our own environment (tests run inside a real job, say) would
  // make srun/sbatch attach to that job; the testbed's variables replace them.
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SLURM_')));
  // slurm.env is `export KEY=VALUE` lines.
  for (const line of (await readFile(join(dir, 'slurm.env'), 'utf8')).split('\n')) {
    const m = /^export ([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!;
  }
  if (!env.SLURM_CONF) throw new Error(`slurm testbed: no SLURM_CONF in ${dir}/slurm.env`);
  let stopped = false;
  return {
    dir,
    nodes: Array.from({ length: n }, (_, i) => `node${i + 1}`),
    env,
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await script(SLURM_SH, ['down', '--dir', dir], 120_000);
      } finally {
        await release();
      }
    },
  };
}
