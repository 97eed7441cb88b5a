import { describe, expect, it } from 'vitest';
import { loadCluster } from '../../src/config/load.js';
import type { ClusterConfig, ReplicaPlan } from '../../src/config/types.js';
import { specHash } from '../../src/agent/protocol.js';
import { buildLaunchSpec } from '../../src/supervise/launch-spec.js';
import { describePlan, planApply, rollReplicas, type RollingUnit } from '../../src/supervise/rollout.js';

const ENV = { HOME: '/home/t', PATH: '/usr/bin:/bin' };
/** A cluster from YAML workers (and nodes), with fixed control plane ports. */
function cluster(workers: string, nodes = '  n1: { gpus: 4 }', extra = ''): ClusterConfig {
  const yaml = `name: demo
head: { address: 127.0.0.1 }
stateDir: /tmp/dynsup-rollout-unit
${extra}
nodes:
${nodes}
workers:
${workers}`;
  return loadCluster('/tmp/c.yaml', { content: Buffer.from(yaml), env: ENV, checkLocalPaths: false });
}

const base = `  prefill: { command: [p], replicas: 2, gpus: 1, port: 9200 }
  decode: { command: [d], replicas: 2, dependsOn: [prefill], port: 9300 }
  frontend: { command: [f], dependsOn: [decode], port: 8000 }`;

function plan(cur: ClusterConfig, next: ClusterConfig, running: readonly ReplicaPlan[] = cur.replicas) {
  const r = planApply(cur, running, next);
  if (!r.ok) throw new Error(r.errors.join('; '));
  return r.plan;
}

describe('planApply', () => {
  const cur = cluster(base);

  it('the same file: every replica kept', () => {
    const p = plan(cur, cluster(base));
    expect(p.groups.map((g) => [g.group, g.change, g.keep.length, g.replace.length, g.start.length, g.stop.length])).toEqual([
      ['prefill', 'unchanged', 2, 0, 0, 0],
      ['decode', 'unchanged', 2, 0, 0, 0],
      ['frontend', 'unchanged', 1, 0, 0, 0],
    ]);
    expect(p.replicas).toEqual(cur.replicas);
  });

  const cases: Array<[string, string, string[]]> = [
    [
      'a changed command replaces the group rolling',
      base.replace('command: [d]', 'command: [d, --v2]'),
      [
        'prefill: unchanged; keep prefill-0, prefill-1',
        'decode: changed (command); replace decode-0, decode-1 rolling, 1 at a time',
        'frontend: unchanged; keep frontend-0',
      ],
    ],
    [
      'scaled up: new replicas next to the kept',
      base.replace('replicas: 2, gpus: 1', 'replicas: 3, gpus: 1'),
      [
        'prefill: 2 → 3 replicas; start prefill-2; keep prefill-0, prefill-1',
        'decode: unchanged; keep decode-0, decode-1',
        'frontend: unchanged; keep frontend-0',
      ],
    ],
    [
      'scaled down: the highest stop',
      base.replace('replicas: 2, dependsOn', 'replicas: 1, dependsOn'),
      ['prefill: unchanged; keep prefill-0, prefill-1', 'decode: 2 → 1 replicas; stop decode-1; keep decode-0', 'frontend: unchanged; keep frontend-0'],
    ],
    [
      'an env change and maxUnavailable',
      base.replace('command: [d],', 'command: [d], env: { A: "1" }, rollout: { maxUnavailable: 2 },'),
      [
        'prefill: unchanged; keep prefill-0, prefill-1',
        'decode: changed (env, rollout); replace decode-0, decode-1 rolling, 2 at a time',
        'frontend: unchanged; keep frontend-0',
      ],
    ],
    [
      'dependsOn and rollout alone restart nothing',
      base.replace('dependsOn: [decode]', 'dependsOn: [], rollout: { maxUnavailable: 3 }'),
      [
        'prefill: unchanged; keep prefill-0, prefill-1',
        'decode: unchanged; keep decode-0, decode-1',
        'frontend: changed (dependsOn, rollout); keep frontend-0',
      ],
    ],
    [
      'a health check change replaces',
      base.replace('command: [f],', 'command: [f], health: { url: "http://127.0.0.1:{port}/h" },'),
      [
        'prefill: unchanged; keep prefill-0, prefill-1',
        'decode: unchanged; keep decode-0, decode-1',
        'frontend: changed (health); replace frontend-0 rolling, 1 at a time',
      ],
    ],
    [
      'GPUs per replica: placed afresh',
      base.replace('replicas: 2, gpus: 1', 'replicas: 2, gpus: 2'),
      [
        'prefill: changed (gpus); placed afresh (GPUs or nodes changed): stop prefill-0, prefill-1, then start prefill-0, prefill-1',
        'decode: unchanged; keep decode-0, decode-1',
        'frontend: unchanged; keep frontend-0',
      ],
    ],
    [
      'a group removed, one added',
      base.replace(/ {2}frontend:.*$/m, '  router: { command: [r] }'),
      [
        'frontend: removed from the file: stop frontend-0',
        'prefill: unchanged; keep prefill-0, prefill-1',
        'decode: unchanged; keep decode-0, decode-1',
        'router: new group: start router-0',
      ],
    ],
  ];
  it.each(cases)('%s', (_n, workers, lines) => {
    expect(describePlan(plan(cur, cluster(workers)))).toEqual(lines);
  });

  it('a replaced replica keeps its name, node and GPUs; its ports follow the new base', () => {
    const p = plan(cur, cluster(base.replace('port: 9300', 'port: 9400')));
    expect(p.groups.find((g) => g.group === 'decode')!.replace).toEqual(['decode-0', 'decode-1']);
    expect(p.replicas.filter((r) => r.group === 'decode').map((r) => [r.name, r.node, r.port])).toEqual([
      ['decode-0', 'n1', 9400],
      ['decode-1', 'n1', 9401],
    ]);
  });

  it('new replicas take GPUs the running ones leave free, wherever those are (after earlier scales)', () => {
    // Running: prefill-0 on GPU 3 (placed there by an earlier scale); the new prefill-1 takes 0.
    const running = cur.replicas.map((r) => (r.name === 'prefill-0' ? { ...r, gpuIds: [3] } : r)).filter((r) => r.name !== 'prefill-1');
    const p = plan(cur, cluster(base), running);
    expect(p.groups[0]!.start.map((r) => [r.name, r.gpuIds])).toEqual([['prefill-1', [0]]]);
  });

  it('after a rollout stopped half-way, applying the file again replaces the replicas still on the old spec', () => {
    const next = cluster(base.replace('command: [d]', 'command: [d, --v2]'));
    const newHash = specHash(
      buildLaunchSpec(
        next,
        next.groups.find((g) => g.name === 'decode')!,
        next.replicas.find((r) => r.name === 'decode-0')!,
        next.nodes[0],
      ),
    );
    // The supervisor already holds `next`; decode-0 was replaced, decode-1 still runs the old command.
    const r = planApply(next, next.replicas, next, (name) => (name === 'decode-1' ? 'old-spec-hash' : name === 'decode-0' ? newHash : undefined));
    expect(r.ok && describePlan(r.plan)[1]).toBe('decode: some replicas still run an earlier spec; replace decode-1 rolling, 1 at a time; keep decode-0');
  });

  it('unplaceable next to the running replicas: refused, with the reason', () => {
    // Scaled by hand to 4 (all GPUs); a file adding a GPU group cannot fit next to them.
    const running = [
      ...cur.replicas,
      { name: 'prefill-2', group: 'prefill', index: 2, node: 'n1', gpuIds: [2], port: 9202 },
      { name: 'prefill-3', group: 'prefill', index: 3, node: 'n1', gpuIds: [3], port: 9203 },
    ];
    const next = cluster(`${base.replace('replicas: 2, gpus: 1', 'replicas: 4, gpus: 1')}\n  extra: { command: [x], gpus: 1 }`, '  n1: { gpus: 5 }');
    const r = planApply(cluster(base, '  n1: { gpus: 5 }'), running, { ...next, nodes: [{ ...next.nodes[0]!, gpus: 4 }] });
    expect(r).toEqual({ ok: false, errors: ['extra: not enough free GPUs for replica extra-0 (1 per replica; n1: 0 free, all nodes)'] });
  });

  it('a port clash with a kept replica of another group: refused (the same check as validate and scale)', () => {
    // A file valid by itself fails validate on this; the planner checks again against what runs.
    const next = cluster(`${base}\n  side: { command: [s], port: 9500 }`);
    const r = planApply(cur, cur.replicas, { ...next, groups: next.groups.map((g) => (g.name === 'side' ? { ...g, port: 9301 } : g)) });
    expect(r).toEqual({ ok: false, errors: ['replica side-0 would use port 9301 on node n1, already used by replica decode-1'] });
  });

  it('control plane changes are refused, naming what changed', () => {
    const r = planApply(cur, cur.replicas, cluster(base, undefined, 'controlPlane: { nats: { port: 4333 } }\nlease: 20s'));
    expect(r.ok).toBe(false);
    expect(!r.ok && r.errors[0]).toMatch(
      /^lease, controlPlane\.nats changed: the control plane and how nodes are reached change only with 'dynsup down' and 'dynsup up'$/,
    );
  });

  it('a node that replicas run on may not change how it is reached; one nobody uses may', () => {
    const two = (t: string) => `  n1: { gpus: 4 }\n  n2: { transport: ssh, host: ${t} }`;
    const c = cluster(base, two('a.example'));
    expect(planApply(c, c.replicas, cluster(base, two('b.example'))).ok).toBe(true);
    const r = planApply(c, c.replicas, cluster(base, '  n1: { gpus: 4, transport: ssh, host: x }\n  n2: { transport: ssh, host: a.example }'));
    expect(!r.ok && r.errors[0]).toMatch(/^nodes\.n1 \(how it is reached\) changed/);
  });
});

/** A fake replica: up until replaced, then down for `downPolls` checks of `up`. */
function unit(name: string, log: string[], downPolls = 2, failAfter = false): RollingUnit & { polls: number } {
  let down = -1;
  const u = {
    name,
    polls: 0,
    get up() {
      if (down < 0) return true;
      u.polls++;
      if (down > 0) down--;
      const up = down === 0 && !failAfter;
      if (up) log.push(`${name} up`);
      return up;
    },
    get failed() {
      return failAfter && down === 0;
    },
    async replace() {
      log.push(`${name} replaced`);
      down = downPolls;
    },
  };
  return u;
}

describe('rollReplicas', () => {
  it('one at a time: the next only once the previous is up', async () => {
    const log: string[] = [];
    await rollReplicas([unit('a', log), unit('b', log), unit('c', log)], [], 1, { readyTimeoutMs: 60_000, pollMs: 1 });
    expect(log.filter((l) => l.endsWith('replaced') || l.endsWith('up')).filter((l, i, a) => a.indexOf(l) === i)).toEqual([
      'a replaced',
      'a up',
      'b replaced',
      'b up',
      'c replaced',
      'c up',
    ]);
  });

  it('maxUnavailable 2: two at a time', async () => {
    const log: string[] = [];
    await rollReplicas([unit('a', log), unit('b', log), unit('c', log)], [], 2, { readyTimeoutMs: 60_000, pollMs: 1 });
    expect(log.slice(0, 2)).toEqual(['a replaced', 'b replaced']);
    expect(log.indexOf('c replaced')).toBeGreaterThan(Math.min(log.indexOf('a up'), log.indexOf('b up')));
  });

  it('a member of the group that is down counts against maxUnavailable: nothing up is taken down meanwhile', async () => {
    const log: string[] = [];
    let otherUp = false;
    const other: RollingUnit = {
      name: 'x',
      get up() {
        return otherUp;
      },
      failed: false,
      replace: async () => undefined,
    };
    const p = rollReplicas([unit('a', log)], [other], 1, { readyTimeoutMs: 60_000, pollMs: 1 });
    await new Promise((r) => setTimeout(r, 30));
    expect(log).toEqual([]);
    otherUp = true;
    await p;
    expect(log[0]).toBe('a replaced');
  });

  it('a replaced unit that fails stops the rollout, naming what was not replaced', async () => {
    const log: string[] = [];
    await expect(rollReplicas([unit('a', log, 1, true), unit('b', log)], [], 1, { readyTimeoutMs: 60_000, pollMs: 1 })).rejects.toThrow(
      'a failed after its replacement; rollout stopped (not replaced: b)',
    );
    expect(log).toEqual(['a replaced']);
  });
});

describe('planApply with gangs (nodesPerReplica > 1)', () => {
  const nodes = '  n1: { gpus: 2 }\n  n2: { gpus: 2 }\n  n3: { gpus: 2 }\n  n4: { gpus: 2 }\n  h: {}';
  const gangs = `  engine: { command: [serve, --rank, "{rank}"], replicas: 2, nodesPerReplica: 2, gpus: 2 }
  side: { command: [s], nodes: [h] }`;
  const cur = cluster(gangs, nodes);

  it('a gang replica is one unit: replaced whole, keeping its nodes', () => {
    const p = plan(cur, cluster(gangs.replace('--rank', '--node-rank'), nodes));
    expect(describePlan(p)).toEqual(['engine: changed (command); replace engine-0, engine-1 rolling, 1 at a time', 'side: unchanged; keep side-0']);
    expect(p.replicas.filter((r) => r.group === 'engine').map((r) => r.gangNodes)).toEqual([
      ['n1', 'n2'],
      ['n3', 'n4'],
    ]);
  });

  it('a change of how ranks are launched replaces them; of the nodes a gang spans, places it afresh', () => {
    expect(describePlan(plan(cur, cluster(gangs.replace('nodesPerReplica: 2,', 'nodesPerReplica: 2, launch: mpi,'), nodes)))[0]).toBe(
      'engine: changed (launch); replace engine-0, engine-1 rolling, 1 at a time',
    );
    expect(describePlan(plan(cur, cluster(gangs.replace('replicas: 2, nodesPerReplica: 2', 'replicas: 1, nodesPerReplica: 4'), nodes)))[0]).toBe(
      'engine: 2 → 1 replicas; changed (nodesPerReplica); placed afresh (GPUs or nodes changed): stop engine-0, engine-1, then start engine-0',
    );
  });

  it('a third gang goes onto two new whole nodes next to the running ones; how a node a gang runs on is reached may not change', () => {
    const p = plan(cur, cluster(gangs.replace('replicas: 2', 'replicas: 3'), `${nodes}\n  n5: { gpus: 2 }\n  n6: { gpus: 2 }`));
    expect(p.groups[0]!.start.map((r) => [r.name, r.gangNodes])).toEqual([['engine-2', ['n5', 'n6']]]);
    expect(p.groups[0]!.keep).toEqual(['engine-0', 'engine-1']);
    const moved = planApply(cur, cur.replicas, cluster(gangs, nodes.replace('n2: { gpus: 2 }', 'n2: { gpus: 2, transport: ssh, host: x }')));
    expect(!moved.ok && moved.errors[0]).toMatch(/^nodes\.n2 \(how it is reached\) changed/);
  });
});
