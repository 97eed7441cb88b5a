/**
 * `apply` and `restart --rolling` with a gang (nodesPerReplica: 2, launch: ranks) on a lab of two ssh
 * nodes, next to a plain group on the head: the gang is replaced whole (its ranks on both nodes, with the
 * new command), the other group is untouched.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, freePort, pidAlive, pidsWithEnv, waitFor, type StatusJson } from '../helpers/cluster.js';
import { startLab, type Lab } from '../helpers/lab.js';

let lab: Lab;
let v1 = '';
beforeAll(async () => {
  lab = await startLab(2);
}, 120_000);
afterAll(async () => {
  if (v1) await dynsup(['down', v1]);
  await lab?.stop();
});

/** The rank programs of a cluster, with their node and command line. */
async function ranks(cluster: string): Promise<{ pid: number; node: string; cmd: string }[]> {
  const out: { pid: number; node: string; cmd: string }[] = [];
  for (const pid of await pidsWithEnv(`DYNSUP_CLUSTER=${cluster}`)) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (!argv[0]!.includes('python') || !argv.some((a) => a.includes('gang_ranks.py'))) continue;
      const node = /(?:^|\0)DYNSUP_NODE=([^\0]*)/.exec(readFileSync(`/proc/${pid}/environ`, 'utf8'))?.[1] ?? '?';
      out.push({ pid, node, cmd: argv.join(' ') });
    } catch {
      /* gone */
    }
  }
  return out.sort((a, b) => a.node.localeCompare(b.node));
}

describe('apply with a gang', () => {
  it('a changed gang is replaced whole on both its nodes, the plain group keeps its pid; restart --rolling restarts the gang whole', async () => {
    const dir = await lab.userDir('dynsup-apply-gang-');
    const name = `ga${Math.random().toString(36).slice(2, 6)}`;
    const [mp, port] = await Promise.all([freePort(lab.head), freePort(lab.head)]);
    const yaml = `name: ${name}
head: { address: ${lab.head} }
stateDir: ${dir}/state
lease: 20s
metrics: { port: ${mp} }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
nodes:
  head: { transport: local }
${lab.nodes.map((x) => `  ${x.name}: { transport: ssh, host: ${x.address}, user: ${lab.user}, identityFile: ${lab.key}, knownHosts: ${lab.knownHosts} }`).join('\n')}
workers:
  engine:
    command: [/usr/bin/python3, -u, ${lab.share}/test/fixtures/workers/gang_ranks.py, --nnodes, '{nnodes}', --node-rank, '{rank}', --dist-init-addr, '{leader}:${port}']
    nodesPerReplica: 2
    nodes: [lab1, lab2]
    restart: { initialDelay: 100ms, jitter: 0 }
    stop: { grace: 2s }
  side:
    command: "exec sleep 600"
    nodes: [head]
`;
    v1 = join(dir, 'v1.yaml');
    writeFileSync(v1, yaml);
    const v2 = join(dir, 'v2.yaml');
    writeFileSync(v2, yaml.replace(`'{leader}:${port}']`, `'{leader}:${port}', --engine-config, v2]`));

    const up = await dynsup(['up', '-d', v1, '--timeout', '120']);
    expect(up.code, up.stderr).toBe(0);
    const st = async (): Promise<StatusJson> => JSON.parse((await dynsup(['status', v1, '--json'])).stdout) as StatusJson;
    const side = (await st()).replicas.find((r) => r.name === 'side-0')!;
    const before = await waitFor(
      'both ranks',
      async () => {
        const rs = await ranks(name);
        return rs.length === 2 ? rs : null;
      },
      60_000,
      200,
    );
    expect(before.map((r) => r.node)).toEqual(['lab1', 'lab2']);

    const dry = await dynsup(['apply', v2, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('engine: changed (command); replace engine-0 rolling, 1 at a time');
    expect(dry.stdout).toContain('side: unchanged; keep side-0');

    const applied = await dynsup(['apply', v2]);
    expect(applied.code, applied.stderr).toBe(0);
    const after = await waitFor(
      'both new ranks with the new command',
      async () => {
        const rs = await ranks(name);
        return rs.length === 2 && rs.every((r) => r.cmd.includes('--engine-config v2')) ? rs : null;
      },
      60_000,
      200,
    );
    expect(after.map((r) => r.node)).toEqual(['lab1', 'lab2']);
    for (const r of before) expect(pidAlive(r.pid), `old rank on ${r.node}`).toBe(false);
    const s = await st();
    expect(s.replicas.find((r) => r.name === 'side-0')!.pid).toBe(side.pid);
    expect(s.replicas.find((r) => r.name === 'engine-0')!.state).toBe('running');

    const rolled = await dynsup(['restart', v1, 'engine', '--rolling']);
    expect(rolled.code, rolled.stderr).toBe(0);
    expect(rolled.stdout).toBe('restarted (rolling) engine-0\n');
    const again = await waitFor(
      'both ranks restarted',
      async () => {
        const rs = await ranks(name);
        return rs.length === 2 && rs.every((r) => !after.some((a) => a.pid === r.pid)) ? rs : null;
      },
      60_000,
      200,
    );
    expect(again.map((r) => r.node)).toEqual(['lab1', 'lab2']);
    expect((await st()).replicas.find((r) => r.name === 'side-0')!.pid).toBe(side.pid);
  }, 240_000);
});
