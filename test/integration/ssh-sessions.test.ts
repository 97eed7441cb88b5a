/**
 * A node whose sshd allows only 2 sessions per connection running 12 workers: MaxSessions is no limit any
 * more (every worker runs under the node's one agent, reached through one channel), and every worker's
 * output arrives.
 * The node is logged into as the test user (sshd.user), its runtime dir in a directory that user owns.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, pidsWithEnv, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';
import { startSshd, type Sshd } from '../helpers/sshd.js';

const REPLICAS = 12;
let sshd: Sshd;
let c: TempCluster;
const name = `sess${Math.random().toString(36).slice(2, 8)}`;

beforeAll(async () => {
  sshd = await startSshd({ address: '127.0.0.1', maxSessions: 2 });
});
afterAll(async () => {
  if (c) await dynsup(['down', c.file]);
  await sshd?.stop();
});

describe('more workers on a node than one ssh connection has sessions', () => {
  it(`runs ${REPLICAS} workers on a MaxSessions=2 node, restarts one, streams every line, and down leaves nothing`, async () => {
    c = await tempCluster(
      `nodes:
  head: { transport: local }
  n1:
    transport: ssh
    host: 127.0.0.1
    port: ${sshd.port}
    user: ${sshd.user}
    identityFile: ${sshd.identityFile}
    knownHosts: ${sshd.knownHostsFile}
    runDir: ${sshd.workDir}/n1-run
workers:
  w:
    nodes: [n1]
    replicas: ${REPLICAS}
    command: 'i=0; while [ $i -lt 50 ]; do echo "$DYNSUP_WORKER line $i"; i=$((i+1)); done; exec sleep 600'
`,
      { name },
    );
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr + up.stdout).toBe(0);
    const s = await status(c.file);
    expect(s.replicas.filter((r) => r.state === 'running' || r.state === 'ready')).toHaveLength(REPLICAS);
    const log = (i: number) => readFileSync(join(c.dir, `state/logs/w-${i}.log`), 'utf8');
    const expected = (i: number) => Array.from({ length: 50 }, (_, k) => `w-${i} line ${k}\n`).join('');
    for (let i = 0; i < REPLICAS; i++) await waitFor(`w-${i}'s 50 lines`, () => log(i) === expected(i), 60_000, 100);
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(events).not.toMatch(/n1: (cannot|connection .*lost)/);

    // A restart needs no new channel: the node's agent restarts the worker itself.
    const victim = s.replicas.find((r) => r.name === `w-${REPLICAS - 1}`)!;
    const r = await dynsup(['restart', c.file, victim.name]);
    expect(r.code, r.stderr).toBe(0);
    await waitFor(
      'w-11 restarted',
      async () => {
        const x = (await status(c.file)).replicas.find((y) => y.name === victim.name);
        return x && x.pid !== victim.pid && x.state === 'running' ? x : null;
      },
      60_000,
      100,
    );
    await waitFor("w-11's second run's lines", () => log(REPLICAS - 1) === expected(REPLICAS - 1).repeat(2), 60_000, 100);

    const down = await dynsup(['down', c.file]);
    expect(down.code, down.stderr).toBe(0);
    expect(await pidsWithEnv(`DYNSUP_CLUSTER=${name}`)).toEqual([]);
  }, 240_000);
});
