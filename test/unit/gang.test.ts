/**
 * The gang state machine (supervise/gang.ts) against fake node agents, one per member node, and a fake
 * clock: a member ending stops every member (the leader first) and restarts the gang once, counted once;
 * an operator restart is not counted; a crash loop fails the gang; policy `never` stops it; a stop while
 * members end restarts nothing. Backoff delays are 0 (the sleep is one turn of the event loop): the tests
 * wait for states, never for time.
 */
import { describe, expect, it } from 'vitest';
import { specHash, type HelloWorker, type WorkerSpec } from '../../src/agent/protocol.js';
import type { RestartPolicy } from '../../src/config/types.js';
import { Gang } from '../../src/supervise/gang.js';
import type { ReplicaEvent, ReplicaState } from '../../src/supervise/replica.js';
import { FakeAgent, FakeClock, listedWorker, memoryLog, POLICY, workerSpec } from '../helpers/fake-agent.js';

interface Harness {
  readonly gang: Gang;
  readonly clock: FakeClock;
  readonly leader: FakeAgent;
  readonly follower: FakeAgent;
  /** Every state the gang entered, in order (consecutive repeats once). */
  readonly states: ReplicaState[];
  /** The gang's own events (not its members'). */
  readonly events: ReplicaEvent[];
}

function harness(restart: Partial<RestartPolicy> = {}): Harness {
  const clock = new FakeClock();
  const leader = new FakeAgent('n1');
  const follower = new FakeAgent('n2');
  const states: ReplicaState[] = [];
  const events: ReplicaEvent[] = [];
  const member = (rank: number, agent: FakeAgent) => ({
    rank,
    spec: workerSpec(['engine', `--rank=${rank}`]),
    options: { name: `g-0/${rank}`, group: 'g', node: agent.node, gpus: [0, 1], agent: agent.asNodeAgent, log: memoryLog(), unreachableMs: () => 5000 },
  });
  const gang = new Gang({
    name: 'g-0',
    group: 'g',
    gpus: [0, 1],
    restart: { ...POLICY, ...restart },
    members: [member(0, leader), member(1, follower)],
    onChange: (s) => {
      if (states[states.length - 1] !== s.state) states.push(s.state);
    },
    onEvent: (name, ev) => {
      if (name === 'g-0') events.push(ev);
    },
    now: clock.now,
    random: () => 0.5,
  });
  return { gang, clock, leader, follower, states, events };
}

/** Start the gang and have both members' processes run. */
function running(h: Harness, pids: [number, number] = [100, 200]): void {
  if (h.gang.state === 'pending') h.gang.start();
  h.leader.started('g-0/0', pids[0]);
  h.follower.started('g-0/1', pids[1]);
}

/** A member's process ended by itself; a gang member's agent never restarts it (its policy is never). */
function memberEnds(agent: FakeAgent, name: string, exit = { code: 1, signal: null as NodeJS.Signals | null }): void {
  agent.exited(name, exit, 'stopped', 'restart policy is never');
}

describe('Gang', () => {
  it('start: every member run with the gang restart count; running once all run; up', () => {
    const h = harness();
    h.gang.start();
    expect(h.leader.calls).toEqual(['run g-0/0 restarts=0']);
    expect(h.follower.calls).toEqual(['run g-0/1 restarts=0']);
    h.leader.started('g-0/0', 100);
    expect(h.gang.state).toBe('starting');
    expect(h.gang.up).toBe(false);
    h.follower.started('g-0/1', 200);
    expect(h.gang.state).toBe('running');
    expect(h.gang.up).toBe(true);
    expect(h.gang.status()).toMatchObject({
      pid: 100,
      node: 'n1',
      restarts: 0,
      ranks: [
        { name: 'g-0/0', node: 'n1', pid: 100 },
        { name: 'g-0/1', node: 'n2', pid: 200 },
      ],
    });
  });

  it.each([
    ['the follower crashes', 'follower', { code: 1, signal: null }, /g-0\/1 on n2 exited with code 1/],
    ['the follower is killed -9', 'follower', { code: null, signal: 'SIGKILL' as const }, /g-0\/1 on n2 was killed by SIGKILL/],
    ['the leader crashes', 'leader', { code: 3, signal: null }, /g-0\/0 on n1 exited with code 3/],
  ])('%s: every member stopped (the leader first), the gang restarted once, counted once', async (_what, who, exit, reason) => {
    const h = harness();
    running(h);
    const [ended, other] = who === 'leader' ? [h.leader, h.follower] : [h.follower, h.leader];
    const endedName = who === 'leader' ? 'g-0/0' : 'g-0/1';
    const otherName = who === 'leader' ? 'g-0/1' : 'g-0/0';
    h.clock.advance(5000);
    memberEnds(ended, endedName, exit);
    await h.gang.waitFor((g) => g.state === 'starting');
    // The member still running was stopped through its agent; the ended one was not asked again.
    expect(other.calls).toEqual([`run ${otherName} restarts=0`, `stop ${otherName} (gang member ${endedName} ended)`, `run ${otherName} restarts=1`]);
    expect(ended.calls).toEqual([`run ${endedName} restarts=0`, `run ${endedName} restarts=1`]);
    expect(h.gang.status().lastExit).toMatchObject({ ...exit, reason: expect.stringMatching(reason) });
    expect(h.events.filter((e) => e.kind === 'rank-exited')).toMatchObject([{ kind: 'rank-exited', member: endedName, node: ended.node, exit }]);
    expect(h.events.filter((e) => e.kind === 'restarting')).toEqual([{ kind: 'restarting', delayMs: 0, restarts: 1 }]);
    running(h, [101, 201]);
    expect(h.states).toEqual(['starting', 'running', 'stopping', 'backoff', 'starting', 'running']);
    expect(h.gang.status()).toMatchObject({ state: 'running', restarts: 1, pid: 101 });
  });

  it('both members ending together: one restart, counted once', async () => {
    const h = harness();
    running(h);
    memberEnds(h.follower, 'g-0/1');
    memberEnds(h.leader, 'g-0/0', { code: null, signal: 'SIGTERM' });
    await h.gang.waitFor((g) => g.state === 'starting');
    running(h, [101, 201]);
    expect(h.gang.status().restarts).toBe(1);
    expect(h.events.filter((e) => e.kind === 'rank-exited')).toHaveLength(1);
    expect(h.leader.calls.filter((c) => c.startsWith('run'))).toEqual(['run g-0/0 restarts=0', 'run g-0/0 restarts=1']);
  });

  it('operator restart: every member stopped and run again, not counted', async () => {
    const h = harness();
    running(h);
    const done = h.gang.restart();
    await h.gang.waitFor((g) => g.state === 'starting');
    expect(h.leader.calls).toEqual(['run g-0/0 restarts=0', 'stop g-0/0 (restart requested)', 'run g-0/0 restarts=0']);
    expect(h.follower.calls).toEqual(['run g-0/1 restarts=0', 'stop g-0/1 (restart requested)', 'run g-0/1 restarts=0']);
    running(h, [101, 201]);
    await done;
    expect(h.gang.status()).toMatchObject({ state: 'running', restarts: 0 });
    expect(h.events.filter((e) => e.kind === 'rank-exited' || e.kind === 'restarting')).toEqual([]);
  });

  it('crash loop: past maxRestarts within the window the gang fails, its members stay stopped', async () => {
    const h = harness({ maxRestarts: 2, windowMs: 60_000 });
    running(h);
    for (let i = 1; i <= 2; i++) {
      h.clock.advance(1000);
      memberEnds(h.follower, 'g-0/1');
      await h.gang.waitFor((g) => g.state === 'starting');
      running(h, [100 + i, 200 + i]);
      expect(h.gang.status().restarts).toBe(i);
    }
    h.clock.advance(1000);
    memberEnds(h.follower, 'g-0/1');
    await h.gang.waitFor((g) => g.state === 'failed');
    expect(h.gang.status()).toMatchObject({
      restarts: 2,
      message: expect.stringMatching(/^crash loop: 2 restarts within 60s \(restart.maxRestarts 2\); last: g-0\/1 on n2 exited with code 1/),
    });
    expect(h.events.filter((e) => e.kind === 'failed')).toHaveLength(1);
    expect(h.leader.calls.filter((c) => c.startsWith('run'))).toHaveLength(3);
    expect(h.gang.up).toBe(false);
  });

  it('restarts spread wider than the window: never a crash loop', async () => {
    const h = harness({ maxRestarts: 2, windowMs: 60_000 });
    running(h);
    for (let i = 1; i <= 4; i++) {
      h.clock.advance(61_000);
      memberEnds(h.follower, 'g-0/1');
      await h.gang.waitFor((g) => g.state === 'starting');
      running(h, [100 + i, 200 + i]);
    }
    expect(h.gang.status()).toMatchObject({ state: 'running', restarts: 4 });
  });

  it('policy never: a member ending stops the gang for good', async () => {
    const h = harness({ policy: 'never' });
    running(h);
    memberEnds(h.follower, 'g-0/1');
    await h.gang.waitFor((g) => g.state === 'stopped');
    expect(h.gang.status()).toMatchObject({ restarts: 0, message: expect.stringMatching(/g-0\/1 on n2 exited with code 1; restart policy is never/) });
    expect(h.leader.calls).toEqual(['run g-0/0 restarts=0', 'stop g-0/0 (gang member g-0/1 ended)']);
  });

  it('stop: every member stopped, the leader first; members ending meanwhile restart nothing', async () => {
    const h = harness();
    running(h);
    await h.gang.stop('stopped by operator');
    expect(h.gang.state).toBe('stopped');
    expect(h.states).toEqual(['starting', 'running', 'stopping', 'stopped']);
    expect(h.leader.calls).toEqual(['run g-0/0 restarts=0', 'stop g-0/0 (stopped by operator)']);
    expect(h.follower.calls).toEqual(['run g-0/1 restarts=0', 'stop g-0/1 (stopped by operator)']);
    expect(h.events.filter((e) => e.kind === 'rank-exited' || e.kind === 'restarting')).toEqual([]);
  });

  it('start after failed: runs again with the count kept', async () => {
    const h = harness({ maxRestarts: 1 });
    running(h);
    memberEnds(h.follower, 'g-0/1');
    await h.gang.waitFor((g) => g.state === 'starting');
    running(h, [101, 201]);
    memberEnds(h.follower, 'g-0/1');
    await h.gang.waitFor((g) => g.state === 'failed');
    await h.gang.restart();
    expect(h.gang.state).toBe('starting');
    expect(h.leader.calls.at(-1)).toBe('run g-0/0 restarts=1');
  });
});

/**
 * An mpi gang: the leader runs mpirun, the follower is on demand (started when mpirun asks, with its
 * command line). A new supervisor adopts it from what the agents' hellos list.
 */
describe('Gang: adopting a running mpi gang (a new supervisor)', () => {
  const MPIRUN = workerSpec(['mpirun', '--host', 'n1:2,n2:2', 'engine']);
  const ORTED = 'orted --hnp-uri 1234.0;tcp://10.0.0.1:4567';
  /** onDemandSpec's stand-in: the member's own environment around the command mpirun asked for. */
  const adoptSpec = (rank: number, command: string): WorkerSpec => ({ ...workerSpec(['sh', '-c', command]), env: { DYNSUP_NODE_RANK: String(rank) } });

  const listed = listedWorker;

  function mpiHarness(leaderListed: HelloWorker[], followerListed: HelloWorker[]) {
    const leader = new FakeAgent('n1');
    const follower = new FakeAgent('n2');
    leader.adoptable = leaderListed;
    follower.adoptable = followerListed;
    const events: ReplicaEvent[] = [];
    const options = (rank: number, agent: FakeAgent) => ({
      name: `g-0/${rank}`,
      group: 'g',
      node: agent.node,
      gpus: [0, 1],
      agent: agent.asNodeAgent,
      log: memoryLog(),
      unreachableMs: () => 5000,
    });
    const gang = new Gang({
      name: 'g-0',
      group: 'g',
      gpus: [0, 1],
      restart: POLICY,
      members: [
        { rank: 0, spec: MPIRUN, options: options(0, leader) },
        { rank: 1, spec: null, options: options(1, follower) },
      ],
      onEvent: (name, ev) => events.push({ ...ev, ...(name === 'g-0' ? {} : { member: name }) } as ReplicaEvent),
      adoptSpec,
      random: () => 0.5,
    });
    return { gang, leader, follower, events };
  }

  it('the daemon mpirun started on the other node is adopted with the spec rebuilt from its command: same pid, count kept, its end restarts the gang once', async () => {
    const h = mpiHarness([listed('g-0/0', MPIRUN, 100)], [listed('g-0/1', adoptSpec(1, ORTED), 200, { command: ORTED })]);
    h.gang.start();
    // Run (the agent adopts: same hash), not launched anew; with the gang's count.
    expect(h.leader.calls).toEqual(['run g-0/0 restarts=2']);
    expect(h.follower.calls).toEqual(['run g-0/1 restarts=2']);
    expect(specHash(h.follower.specOf('g-0/1')!)).toBe(specHash(adoptSpec(1, ORTED)));
    expect(h.events.filter((e) => e.kind === 'adopted')).toHaveLength(2);
    // The agents say they run (adopted: a report, no 'started').
    h.leader.report('g-0/0', { state: 'running', pid: 100 });
    expect(h.gang.state).toBe('starting');
    h.follower.report('g-0/1', { state: 'running', pid: 200 });
    expect(h.gang.status()).toMatchObject({
      state: 'running',
      restarts: 2,
      ranks: [
        { name: 'g-0/0', state: 'running', pid: 100 },
        { name: 'g-0/1', state: 'running', pid: 200 },
      ],
    });

    // The adopted daemon ends: the new head sees it, stops mpirun, restarts the gang once.
    memberEnds(h.follower, 'g-0/1', { code: null, signal: 'SIGKILL' });
    await h.gang.waitFor((g) => g.state === 'starting');
    expect(h.gang.status()).toMatchObject({ restarts: 3, lastExit: { reason: expect.stringMatching(/g-0\/1 on n2 was killed by SIGKILL/) } });
    expect(h.leader.calls).toEqual(['run g-0/0 restarts=2', 'stop g-0/0 (gang member g-0/1 ended)', 'run g-0/0 restarts=3']);
    // The daemon is not run again with the old command: the new mpirun asks, with its own.
    expect(h.follower.calls).toEqual(['run g-0/1 restarts=2']);
    h.leader.started('g-0/0', 101);
    const asked = h.gang.launch(1, adoptSpec(1, 'orted --hnp-uri 999.0;tcp://10.0.0.1:4999'));
    expect(h.follower.calls).toEqual(['run g-0/1 restarts=2', 'run g-0/1 restarts=3']);
    expect(h.follower.specOf('g-0/1')!.argv).toEqual(['sh', '-c', 'orted --hnp-uri 999.0;tcp://10.0.0.1:4999']);
    h.follower.started('g-0/1', 201);
    await asked;
    expect(h.gang.status()).toMatchObject({ state: 'running', restarts: 3 });
  });

  it.each([
    ['the daemon is not running any more', [listed('g-0/0', MPIRUN, 100)], [listed('g-0/1', adoptSpec(1, ORTED), null, { command: ORTED })]],
    ['its agent does not say its command (an older agent)', [listed('g-0/0', MPIRUN, 100)], [listed('g-0/1', adoptSpec(1, ORTED), 200)]],
    ['the rebuilt spec would differ (another environment)', [listed('g-0/0', MPIRUN, 100)], [listed('g-0/1', 'other', 200, { command: ORTED })]],
    ['the leader is not adopted (its mpirun is gone)', [], [listed('g-0/1', adoptSpec(1, ORTED), 200, { command: ORTED })]],
  ])('%s: the daemon is left to the leader (never run again by the head)', (_what, leaderListed, followerListed) => {
    const h = mpiHarness(leaderListed, followerListed);
    h.gang.start();
    expect(h.follower.calls).toEqual([]);
    h.leader.report('g-0/0', { state: 'running', pid: 100 });
    expect(h.gang.status().ranks).toMatchObject([
      { name: 'g-0/0', state: 'running' },
      { name: 'g-0/1', state: 'pending' },
    ]);
  });

  it('only the first start adopts: a start after a stop leaves the daemon to the new mpirun', async () => {
    const h = mpiHarness([listed('g-0/0', MPIRUN, 100)], [listed('g-0/1', adoptSpec(1, ORTED), 200, { command: ORTED })]);
    h.gang.start();
    h.leader.report('g-0/0', { state: 'running', pid: 100 });
    h.follower.report('g-0/1', { state: 'running', pid: 200 });
    await h.gang.stop('stopped by operator');
    await h.gang.restart();
    expect(h.leader.calls.at(-1)).toBe('run g-0/0 restarts=2');
    expect(h.follower.calls).toEqual(['run g-0/1 restarts=2', 'stop g-0/1 (stopped by operator)']);
  });
});
