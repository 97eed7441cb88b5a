/**
 * The head's replica state machine (supervise/replica.ts) against a fake node agent: what the head shows
 * and asks for when the agent reports starts, exits, backoff and crash loops, when health checks fail,
 * when an operator restarts, stops or scales a replica away, and when an earlier supervisor's worker is
 * adopted. The restart decision itself is the agent's (test/unit/restart-policy.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { Replica, type HealthProbe, type ReplicaEvent, type ReplicaState } from '../../src/supervise/replica.js';
import { FakeAgent, listedWorker, memoryLog, workerSpec } from '../helpers/fake-agent.js';

interface Harness {
  readonly agent: FakeAgent;
  readonly replica: Replica;
  /** Every state the replica entered, in order (consecutive repeats once). */
  readonly states: ReplicaState[];
  readonly events: ReplicaEvent[];
}

function harness(opts: { health?: HealthProbe; agent?: FakeAgent } = {}): Harness {
  const agent = opts.agent ?? new FakeAgent();
  const states: ReplicaState[] = [];
  const events: ReplicaEvent[] = [];
  const spec = workerSpec();
  const replica = new Replica({
    name: 'w-0',
    group: 'w',
    node: agent.node,
    gpus: [0],
    agent: agent.asNodeAgent,
    spec: () => spec,
    health: opts.health,
    log: memoryLog(),
    unreachableMs: () => 5000,
    onChange: (s) => {
      if (states[states.length - 1] !== s.state) states.push(s.state);
    },
    onEvent: (_name, ev) => events.push(ev),
  });
  return { agent, replica, states, events };
}

/**
 * A health probe the test answers: each probe takes the next of `answers`; once they are used up, probes
 * hang until the replica stops checking (so nothing happens that the case did not say).
 */
function scriptedProbe(answers: boolean[], over: Partial<HealthProbe> = {}): HealthProbe & { readonly probes: () => number } {
  let n = 0;
  return {
    probe: (signal) => {
      const answer = answers[n++];
      if (answer !== undefined) return Promise.resolve(answer);
      return new Promise<boolean>((resolve) => signal.addEventListener('abort', () => resolve(false), { once: true }));
    },
    probes: () => n,
    intervalMs: 0,
    timeoutMs: 60_000,
    startPeriodMs: 0,
    failureThreshold: 3,
    ...over,
  };
}

describe('Replica: what the agent reports', () => {
  it('start: pending → starting → running, the spec sent to the agent, up once running (no health check)', () => {
    const { agent, replica, states } = harness();
    expect(replica.state).toBe('pending');
    replica.start();
    expect(agent.calls).toEqual(['run w-0 restarts=0']);
    expect(replica.up).toBe(false);
    agent.started('w-0', 100);
    expect(states).toEqual(['starting', 'running']);
    expect(replica.up).toBe(true);
    expect(replica.status()).toMatchObject({ name: 'w-0', group: 'w', node: 'n1', pid: 100, restarts: 0, gpus: [0], lastExit: null });
  });

  it.each([
    ['a crash', { code: 1, signal: null }],
    ['a kill -9', { code: null, signal: 'SIGKILL' as const }],
  ])('exit → backoff → restart (%s): the exit shown, the restart counted, the new pid mirrored', (_what, exit) => {
    const { agent, replica, states, events } = harness();
    replica.start();
    agent.started('w-0', 100);
    agent.exited('w-0', exit, 'backoff', 'restarting in 1000ms');
    expect(replica.state).toBe('backoff');
    expect(replica.up).toBe(false);
    expect(replica.status()).toMatchObject({ pid: null, restarts: 1, lastExit: exit, message: 'restarting in 1000ms' });
    agent.report('w-0', { state: 'starting' });
    agent.started('w-0', 101);
    expect(states).toEqual(['starting', 'running', 'backoff', 'starting', 'running']);
    expect(replica.status()).toMatchObject({ pid: 101, restarts: 1, lastExit: exit });
    // An exit nobody asked for is passed on as it is (a crash), without `asked`.
    const exits = events.filter((e) => e.kind === 'exited');
    expect(exits).toHaveLength(1);
    expect(exits[0]).not.toHaveProperty('asked');
    // The head asks for nothing: the agent restarts by itself.
    expect(agent.calls).toEqual(['run w-0 restarts=0']);
  });

  it('crash loop → failed: inactive, up never, and a later restart starts it afresh', async () => {
    const { agent, replica, states } = harness();
    replica.start();
    agent.started('w-0', 100);
    agent.exited('w-0', { code: 1, signal: null }, 'failed', 'crash loop: 3 restarts within 60s (restart.maxRestarts 3)');
    expect(replica.state).toBe('failed');
    expect(replica.status().message).toMatch(/crash loop/);
    expect(replica.up).toBe(false);
    // A failed replica is not stopped again through the agent: there is nothing running.
    await replica.stop();
    expect(agent.calls).toEqual(['run w-0 restarts=0']);
    await replica.restart();
    expect(agent.calls).toEqual(['run w-0 restarts=0', 'run w-0 restarts=0']);
    expect(states).toEqual(['starting', 'running', 'failed', 'stopped', 'starting']);
  });

  it('policy says no restart: stopped with the agent message', () => {
    const { agent, replica } = harness();
    replica.start();
    agent.started('w-0', 100);
    agent.exited('w-0', { code: 0, signal: null }, 'stopped', 'exited cleanly (restart policy on-failure)');
    expect(replica.status()).toMatchObject({ state: 'stopped', message: 'exited cleanly (restart policy on-failure)', lastExit: { code: 0 } });
  });

  it('blocked (GPU still held) and back: mirrored, not up while blocked', () => {
    const { agent, replica, states } = harness();
    replica.start();
    agent.started('w-0', 100);
    agent.exited('w-0', { code: 1, signal: null }, 'backoff');
    agent.report('w-0', { state: 'blocked', message: 'blocked: GPU 0 still held by pid 77' });
    expect(replica.up).toBe(false);
    expect(replica.status().message).toBe('blocked: GPU 0 still held by pid 77');
    agent.started('w-0', 101);
    expect(states).toEqual(['starting', 'running', 'backoff', 'blocked', 'running']);
  });
});

describe('Replica: health checks', () => {
  it('running → ready on the first passing check; up only once ready', async () => {
    const probe = scriptedProbe([true]);
    const { agent, replica, events } = harness({ health: probe });
    replica.start();
    agent.started('w-0', 100);
    expect(replica.state).toBe('running');
    expect(replica.up).toBe(false);
    await replica.waitFor((r) => r.state === 'ready');
    expect(replica.up).toBe(true);
    expect(events.filter((e) => e.kind === 'ready')).toHaveLength(1);
    await replica.stop();
  });

  it('failureThreshold failed checks in a row after ready: the agent is asked for a counted restart, once', async () => {
    const probe = scriptedProbe([true, false, false, false]);
    const { agent, replica, events } = harness({ health: probe });
    replica.start();
    agent.started('w-0', 100);
    await waitUntil(() => agent.calls.length === 2);
    expect(agent.calls).toEqual(['run w-0 restarts=0', 'restart w-0 counted (unhealthy (3 failed health checks))']);
    expect(events.filter((e) => e.kind === 'unhealthy')).toEqual([{ kind: 'unhealthy', failures: 3 }]);
    // The agent replaces the process and counts it; the new one is checked afresh.
    agent.exited('w-0', { code: null, signal: 'SIGKILL' }, 'backoff');
    expect(replica.status().restarts).toBe(1);
    agent.started('w-0', 101);
    expect(replica.state).toBe('running');
    await replica.stop();
  });

  it.each([
    ['a pass in between resets the count', [true, false, false, true, false, false], 6],
    ['failures before the first pass do not count (still starting)', [false, false, false, false, true, false, false], 7],
  ])('%s: no restart', async (_what, answers, probes) => {
    const probe = scriptedProbe(answers);
    const { agent, replica } = harness({ health: probe });
    replica.start();
    agent.started('w-0', 100);
    await waitUntil(() => probe.probes() > probes);
    expect(agent.calls).toEqual(['run w-0 restarts=0']);
    expect(replica.state).toBe('ready');
    await replica.stop();
  });

  it('failures inside startPeriod after ready do not count', async () => {
    // startPeriod a day: every failure falls inside it.
    const probe = scriptedProbe([true, false, false, false, false], { startPeriodMs: 86_400_000 });
    const { agent, replica } = harness({ health: probe });
    replica.start();
    agent.started('w-0', 100);
    await waitUntil(() => probe.probes() > 5);
    expect(agent.calls).toEqual(['run w-0 restarts=0']);
    await replica.stop();
  });

  it('quiesce: no more checks (a failing one would restart a replica of a cluster going down)', async () => {
    const probe = scriptedProbe([true]);
    const { agent, replica } = harness({ health: probe });
    replica.start();
    agent.started('w-0', 100);
    await replica.waitFor((r) => r.state === 'ready');
    replica.quiesce();
    const n = probe.probes();
    agent.exited('w-0', { code: 1, signal: null }, 'backoff');
    agent.started('w-0', 101);
    expect(replica.state).toBe('running');
    await settle();
    expect(probe.probes()).toBe(n);
  });
});

describe('Replica: what the operator asks', () => {
  it('restart: the agent asked for an uncounted restart; the exit carries why; resolves once the new process runs', async () => {
    const { agent, replica, events } = harness();
    replica.start();
    agent.started('w-0', 100);
    const done = replica.restart();
    expect(agent.calls).toEqual(['run w-0 restarts=0', 'restart w-0 not counted (restart requested)']);
    agent.exited('w-0', { code: null, signal: 'SIGTERM' }, 'starting', null, false);
    agent.started('w-0', 101);
    await done;
    expect(replica.status()).toMatchObject({ state: 'running', pid: 101, restarts: 0 });
    expect(events.find((e) => e.kind === 'exited')).toMatchObject({ asked: 'restart requested' });
  });

  it('stop: the agent stops it with the reason; stopped; the exit is an asked one; a second stop asks nothing', async () => {
    const { agent, replica, events } = harness();
    replica.start();
    agent.started('w-0', 100);
    await replica.stop('stopped by operator');
    expect(replica.state).toBe('stopped');
    expect(agent.calls).toEqual(['run w-0 restarts=0', 'stop w-0 (stopped by operator)']);
    expect(events.find((e) => e.kind === 'exited')).toMatchObject({ asked: 'stopped by operator' });
    await replica.stop();
    expect(agent.calls).toHaveLength(2);
  });

  it('stop with the node unreachable: stopped, saying the agent stops it within the lease', async () => {
    const agent = new FakeAgent('n2');
    const { replica } = harness({ agent });
    replica.start();
    agent.started('w-0', 100);
    agent.reachable = false;
    await replica.stop();
    expect(replica.status()).toMatchObject({ state: 'stopped', message: 'stopped (node n2 unreachable: its agent stops the worker within the lease)' });
  });

  it('remove (scale down): stopped and forgotten by the agent', async () => {
    const { agent, replica } = harness();
    replica.start();
    agent.started('w-0', 100);
    await replica.remove();
    expect(replica.status()).toMatchObject({ state: 'stopped' });
    expect(agent.calls).toEqual(['run w-0 restarts=0', 'stop w-0 (removed)', 'forget w-0']);
    expect(agent.has('w-0')).toBe(false);
  });

  it('a fatal log line: one counted restart per process, none once quiesced', () => {
    const { agent, replica, events } = harness();
    replica.start();
    agent.started('w-0', 100);
    replica.fatalLog('CUDA error', 'CUDA error: out of memory');
    replica.fatalLog('CUDA error', 'CUDA error: again');
    expect(agent.calls).toEqual(['run w-0 restarts=0', 'restart w-0 counted (log line matched /CUDA error/)']);
    expect(events.filter((e) => e.kind === 'fatal-log')).toHaveLength(1);
    agent.exited('w-0', { code: null, signal: 'SIGTERM' }, 'backoff');
    agent.started('w-0', 101);
    replica.quiesce();
    replica.fatalLog('CUDA error', 'CUDA error: out of memory');
    expect(agent.calls).toHaveLength(2);
  });

  it('kill: SIGKILL through the agent', () => {
    const { agent, replica } = harness();
    replica.start();
    replica.kill();
    expect(agent.calls).toEqual(['run w-0 restarts=0', 'signal w-0 SIGKILL']);
  });
});

describe('Replica: adoption', () => {
  it.each([
    ['the same spec, running', { state: 'running' as const, pid: 42, same: true }, true],
    ['another spec (the file changed)', { state: 'running' as const, pid: 42, same: false }, false],
    ['the same spec, in backoff', { state: 'backoff' as const, pid: null, same: true }, false],
  ])('%s: adopted %s', (_what, w, adopted) => {
    const agent = new FakeAgent();
    agent.adoptable = [listedWorker('w-0', w.same ? workerSpec() : 'other', w.pid, { state: w.state, restarts: 4, containment: 'cgroup' })];
    const { replica, events } = harness({ agent });
    replica.start();
    expect(events.some((e) => e.kind === 'adopted')).toBe(adopted);
    if (adopted) {
      expect(events).toContainEqual({ kind: 'adopted', pid: 42, restarts: 4 });
      expect(replica.status().adopted).toBe(true);
      // A new process is not the adopted one any more.
      agent.started('w-0', 42);
      agent.exited('w-0', { code: 1, signal: null }, 'backoff');
      agent.started('w-0', 43);
      expect(replica.status().adopted).toBeUndefined();
    } else expect(replica.status().adopted).toBeUndefined();
  });
});

/** Let pending promise callbacks and zero-delay timers run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/** Wait (by turns of the event loop, not by time) until `cond` holds. */
async function waitUntil(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 10_000 && !cond(); i++) await new Promise((r) => setImmediate(r));
  expect(cond()).toBe(true);
}
