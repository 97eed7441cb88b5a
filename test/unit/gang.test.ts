/**
 * The gang state machine (supervise/gang.ts) against fake node agents, one per member node, and a fake
 * clock: a member ending stops every member (the leader first) and restarts the gang once, counted once;
 * an operator restart is not counted; a crash loop fails the gang; policy `never` stops it; a stop while
 * members end restarts nothing. Backoff delays are 0 (the sleep is one turn of the event loop): the tests
 * wait for states, never for time.
 */
import { describe, expect, it } from 'vitest';
import type { RestartPolicy } from '../../src/config/types.js';
import { Gang } from '../../src/supervise/gang.js';
import type { ReplicaEvent, ReplicaState } from '../../src/supervise/replica.js';
import { FakeAgent, FakeClock, memoryLog, POLICY, workerSpec } from '../helpers/fake-agent.js';

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
