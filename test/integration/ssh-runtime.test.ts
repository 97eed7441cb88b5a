/**
 * A node without Node.js: the agent needs one, so the head copies its own node binary (same OS and
 * architecture) into the node user's cache, once, and the agent runs on it. The node's sshd runs in a
 * mount namespace where the machine's node binary is covered, and its sessions get a fresh cache dir.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';
import { startSshd, type Sshd } from '../helpers/sshd.js';
import { ensureTestUser, userDir } from '../helpers/test-user.js';

let sshd: Sshd;
let c: TempCluster | undefined;
let cache: string;

beforeAll(async () => {
  const onPath = execFileSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).trim();
  const hide = [...new Set([onPath, realpathSync(onPath), process.execPath])];
  // A cache of its own: whatever an earlier run copied into the user's ~/.cache must not count.
  cache = await userDir(await ensureTestUser('clean'), 'dynsup-cache-');
  sshd = await startSshd({ address: '127.0.0.1', hide, extraConfig: [`SetEnv XDG_CACHE_HOME=${cache}`] });
});
afterAll(async () => {
  if (c) await dynsup(['down', c.file]);
  await sshd?.stop();
});

describe('a node without Node.js', () => {
  it('gets the head’s node binary copied into its cache, and the agent runs on it', async () => {
    // The node really has none: a session finds no usable node.
    const probe = execFileSync(
      'ssh',
      [
        '-F',
        '/dev/null',
        '-i',
        sshd.identityFile,
        '-p',
        String(sshd.port),
        '-o',
        `UserKnownHostsFile=${sshd.knownHostsFile}`,
        '-o',
        'BatchMode=yes',
        `${sshd.user}@127.0.0.1`,
        'node -e 0 >/dev/null 2>&1 && echo has-node || echo no-node',
      ],
      { encoding: 'utf8' },
    );
    expect(probe.trim()).toBe('no-node');

    c = await tempCluster(`nodes:
  n1:
    transport: ssh
    host: 127.0.0.1
    port: ${sshd.port}
    user: ${sshd.user}
    identityFile: ${sshd.identityFile}
    knownHosts: ${sshd.knownHostsFile}
    runDir: ${sshd.workDir}/run
workers:
  w:
    command: 'echo "agent runs on $(readlink /proc/$PPID/exe)"; exec sleep 600'
`);
    const up = await dynsup(['up', '-d', c.file, '--timeout', '120'], { timeoutMs: 150_000 });
    expect(up.code, up.stderr + up.stdout).toBe(0);
    expect((await status(c.file)).replicas[0]!.state).toBe('running');
    const copied = join(cache, 'dynsup', `node-${process.version}-${process.platform}-${process.arch}`, 'node');
    const log = join(c.dir, 'state/logs/w-0.log');
    await waitFor('the worker says what runs its agent', () => readFileSync(log, 'utf8').includes('agent runs on'));
    expect(readFileSync(log, 'utf8').trim()).toBe(`agent runs on ${copied}`);
    expect(readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8')).toMatch(/node n1: no Node\.js >= 20 there; copying the head's/);
  }, 180_000);
});
