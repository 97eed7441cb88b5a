// @vitest-environment node
//
// The test beds themselves (scripts/testbed/lab.sh, scripts/testbed/slurm-testbed.sh): if these
// fail, every multi-node test built on them would fail in confusing ways.
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLab, startSlurm, type Lab, type SlurmTestbed } from '../helpers/lab.js';

const execFileP = promisify(execFile);

/** Retries fn until it resolves or deadlineMs passes (the last error is thrown). */
async function eventually<T>(fn: () => Promise<T>, deadlineMs = 15_000, stepMs = 200): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() >= end) throw err;
      await new Promise((r) => setTimeout(r, stepMs));
    }
  }
}

describe('lab (scripts/testbed/lab.sh)', { timeout: 120_000 }, () => {
  let lab: Lab;
  let server: Server;
  let port = 0;

  beforeAll(async () => {
    lab = await startLab(3, undefined, undefined, { rcUser: true });
    // A service on the head, as nats-server/etcd will be: it greets each client
    // with the address it came from.
    server = createServer((sock) => sock.end(`hello ${sock.remoteAddress}\n`));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, lab.head, resolve);
    });
    port = (server.address() as AddressInfo).port;
  }, 120_000);

  afterAll(async () => {
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    await lab?.stop();
    // Nothing of the lab survives `down`.
    const { stdout } = await execFileP('ip', ['netns', 'list']);
    expect(stdout).not.toMatch(/dynsup-lab/);
  }, 120_000);

  /** Connects from inside the node's namespace to the head's server. */
  const fromNode = (node: string, seconds = 5) =>
    lab.exec(node, ['timeout', String(seconds), 'bash', '-c', `exec 3<>/dev/tcp/${lab.head}/${port} && cat <&3`], {
      timeoutMs: seconds * 1000 + 5_000,
    });

  it('describes three nodes', () => {
    expect(lab.nodes.map((n) => [n.name, n.address])).toEqual([
      ['lab1', '10.99.0.11'],
      ['lab2', '10.99.0.12'],
      ['lab3', '10.99.0.13'],
    ]);
    expect(lab.head).toBe('10.99.0.1');
    for (const n of lab.nodes) expect(n.hostKey).toMatch(/^ssh-ed25519 AAAA/);
  });

  it('logs into every node with strict host key checking', async () => {
    for (const n of lab.nodes) {
      const { stdout } = await lab.ssh(n.name, 'hostname; ip -o -4 addr show dev eth0');
      const [hostname, addrLine] = stdout.split('\n');
      expect(hostname).toBe(n.name);
      expect(addrLine).toContain(`inet ${n.address}/24`);
    }
  });

  it('logs in as the test user, never root: /bin/sh, an empty home, and the shared worker files', async () => {
    expect(lab.user).toBe('dynsup-t');
    const worker = join(lab.share, 'test/fixtures/workers/lab-worker.mjs');
    const { stdout, stderr } = await lab.ssh('lab1', `id -un; echo "$0"; ls -A "$HOME" | wc -l; test -r ${worker} && echo readable`);
    expect(stdout.split('\n')).toEqual(['dynsup-t', 'sh', '0', 'readable', '']);
    expect(stderr).toBe('');
    // The packages the workers import resolve from the share, as the test user.
    const mods = await lab.ssh(
      'lab2',
      `cd ${join(lab.share, 'test/fixtures/workers')} && node --input-type=module -e "await import('nats'); await import('etcd3'); console.log('ok')"`,
    );
    expect(mods.stdout).toBe('ok\n');
    // Only the test users have keys: root is refused.
    const err = await lab.ssh('lab1', 'true', { user: 'root' }).catch((e: unknown) => e);
    expect((err as { stderr: string }).stderr).toMatch(/Permission denied/);
  });

  it('rcUser: a slow and noisy bash login (rc output on stdout and stderr ahead of the command)', async () => {
    expect(lab.rcUser).toBe('dynsup-rc');
    const { stdout, stderr } = await lab.ssh('lab3', 'id -un', { user: lab.rcUser });
    expect(stdout).toBe('rc-noise\ndynsup-rc\n');
    expect(stderr).toBe('rc-noise\n');
  });

  it('refuses a node whose host key is not the known one', async () => {
    // lab2's key filed under lab1's address: a strict client must refuse lab1.
    const lab2 = lab.node('lab2');
    const wrong = join(lab.dir, 'known_hosts.wrong');
    await writeFile(wrong, `${lab.node('lab1').address} ${lab2.hostKey}\n`);
    const opts = lab.sshOptions.map((o) => (o.startsWith('UserKnownHostsFile=') ? `UserKnownHostsFile=${wrong}` : o));
    const err = await execFileP('ssh', ['-n', ...opts, `${lab.user}@${lab.node('lab1').address}`, 'true']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as { stderr: string }).stderr).toMatch(/HOST IDENTIFICATION HAS CHANGED|Host key verification failed/);
  });

  it('lets a process in each node reach a TCP server on the head', async () => {
    for (const n of lab.nodes) {
      const { stdout } = await fromNode(n.name);
      expect(stdout.trim()).toBe(`hello ${n.address}`);
    }
  });

  it('cuts a node off with link down and restores it with link up', async () => {
    await lab.link('lab2', false);
    try {
      // A cut link drops packets (no RST): both just time out.
      await expect(fromNode('lab2', 2)).rejects.toThrow();
      await expect(lab.ssh('lab2', 'true', { timeoutMs: 2_000 })).rejects.toThrow();
      // Only lab2 is cut off.
      expect((await fromNode('lab1')).stdout.trim()).toBe('hello 10.99.0.11');
      expect((await lab.ssh('lab3', 'hostname')).stdout.trim()).toBe('lab3');
    } finally {
      await lab.link('lab2', true);
    }
    expect((await eventually(() => fromNode('lab2'))).stdout.trim()).toBe('hello 10.99.0.12');
    expect((await eventually(() => lab.ssh('lab2', 'hostname'))).stdout.trim()).toBe('lab2');
  });
});

describe('slurm testbed (scripts/testbed/slurm-testbed.sh)', { timeout: 120_000 }, () => {
  let slurm: SlurmTestbed;

  beforeAll(async () => {
    slurm = await startSlurm(3);
  }, 120_000);

  afterAll(async () => {
    await slurm?.stop();
  }, 120_000);

  it('shows three idle nodes', async () => {
    const { stdout } = await execFileP('sinfo', ['-h', '-N', '-o', '%N %T'], { env: slurm.env });
    expect(stdout.trim().split('\n')).toEqual(['node1 idle', 'node2 idle', 'node3 idle']);
  });

  it('runs an sbatch -N 3 job with one step task on each node', async () => {
    const out = join(slurm.dir, 'testbed-%j.out');
    const { stdout } = await execFileP('sbatch', ['--parsable', '-N', '3', '-o', out, '--wrap', 'srun --overlap -N3 bash -c "echo \\$SLURMD_NODENAME"'], {
      env: slurm.env,
    });
    const jobId = stdout.trim().split(';')[0]!;
    expect(jobId).toMatch(/^\d+$/);

    const state = await eventually(async () => {
      const { stdout: job } = await execFileP('scontrol', ['-o', 'show', 'job', jobId], { env: slurm.env });
      const s = /JobState=(\S+)/.exec(job)?.[1] ?? 'UNKNOWN';
      if (['PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING'].includes(s)) throw new Error(`job ${jobId} is ${s}`);
      return s;
    }, 60_000);
    expect(state).toBe('COMPLETED');

    const lines = (await readFile(out.replace('%j', jobId), 'utf8')).trim().split('\n').sort();
    expect(lines).toEqual(['node1', 'node2', 'node3']);
  });
});
