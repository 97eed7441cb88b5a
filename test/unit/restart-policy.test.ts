import { describe, expect, it } from 'vitest';
import type { RestartPolicy } from '../../src/config/types.js';
import { backoffDelay, decideRestart, EMPTY_HISTORY, isCleanExit, type RestartHistory } from '../../src/agent/restart-policy.js';
import type { ExitInfo } from '../../src/transport/types.js';

const policy = (over: Partial<RestartPolicy> = {}): RestartPolicy => ({
  policy: 'always',
  initialDelayMs: 1000,
  factor: 2,
  maxDelayMs: 30_000,
  jitter: 0,
  maxRestarts: 5,
  windowMs: 60_000,
  resetAfterMs: 30_000,
  ...over,
});
const crash: ExitInfo = { code: 1, signal: null };
const clean: ExitInfo = { code: 0, signal: null };
const killed: ExitInfo = { code: null, signal: 'SIGKILL' };

describe('backoffDelay', () => {
  it('doubles from initialDelay up to maxDelay with jitter 0', () => {
    const p = policy();
    expect(Array.from({ length: 9 }, (_, i) => backoffDelay(p, i, 0.123))).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000]);
  });

  it('uses the factor', () => {
    const p = policy({ initialDelayMs: 500, factor: 3, maxDelayMs: 10_000 });
    expect([0, 1, 2, 3, 4].map((i) => backoffDelay(p, i, 0.5))).toEqual([500, 1500, 4500, 10_000, 10_000]);
    expect([0, 1, 5].map((i) => backoffDelay(policy({ factor: 1 }), i, 0.5))).toEqual([1000, 1000, 1000]);
  });

  it('applies jitter symmetrically: random 0 → -j, 0.5 → 0, →1 → +j', () => {
    const p = policy({ jitter: 0.1 });
    expect(backoffDelay(p, 0, 0)).toBe(900);
    expect(backoffDelay(p, 0, 0.5)).toBe(1000);
    expect(backoffDelay(p, 0, 0.999999)).toBe(1100);
    expect(backoffDelay(p, 3, 0)).toBe(7200);
  });

  it('stays within [base·(1-j), base·(1+j)] for any random in [0, 1)', () => {
    for (const jitter of [0, 0.1, 0.5, 1]) {
      const p = policy({ jitter });
      for (let attempt = 0; attempt < 12; attempt++) {
        const base = Math.min(30_000, 1000 * 2 ** attempt);
        for (let k = 0; k < 200; k++) {
          const d = backoffDelay(p, attempt, k / 200);
          expect(d).toBeGreaterThanOrEqual(Math.floor(base * (1 - jitter)));
          expect(d).toBeLessThanOrEqual(Math.ceil(base * (1 + jitter)));
          expect(Number.isInteger(d)).toBe(true);
        }
      }
    }
  });

  it('never goes below 0 (jitter 1, random 0)', () => {
    expect(backoffDelay(policy({ jitter: 1 }), 0, 0)).toBe(0);
  });

  it('caps huge attempts at maxDelay instead of overflowing', () => {
    const p = policy();
    expect(backoffDelay(p, 100, 0.5)).toBe(30_000);
    expect(backoffDelay(p, 5000, 0.5)).toBe(30_000);
  });

  it('is a finite number even with initialDelay 0 after very many attempts', () => {
    // BUG (restart-policy.ts backoffDelay): 0 * factor ** attempt is 0 * Infinity = NaN once factor ** attempt
    // overflows (attempt ≥ 1024 for factor 2), and NaN survives Math.min/Math.max/Math.round.
    // Reachable with `initialDelay: 0` and `maxRestarts: 0` (unlimited): attempt only resets after a stable run.
    const p = policy({ initialDelayMs: 0, maxRestarts: 0 });
    expect(backoffDelay(p, 10, 0.5)).toBe(0);
    expect(backoffDelay(p, 2000, 0.5)).toBe(0);
  });
});

describe('decideRestart', () => {
  it('restarts a crash-looping worker with the backoff schedule, then fails at maxRestarts within the window', () => {
    const p = policy();
    let history: RestartHistory = EMPTY_HISTORY;
    let now = 0;
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      const d = decideRestart(p, crash, 100, history, now, 0.5);
      if (d.kind !== 'restart') throw new Error(`expected restart at ${i}, got ${JSON.stringify(d)}`);
      delays.push(d.delayMs);
      expect(d.history.attempt).toBe(i + 1);
      expect(d.history.restarts.at(-1)).toBe(now);
      history = d.history;
      now += d.delayMs + 100;
    }
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16_000]);
    // 5 restarts at 0, 1100, 3200, 7300, 15400: all within 60 s of now = 31 500.
    expect(now).toBe(31_500);
    expect(decideRestart(p, crash, 100, history, now, 0.5)).toEqual({
      kind: 'fail',
      reason: 'crash loop: 5 restarts within 60s (restart.maxRestarts 5)',
    });
  });

  it('forgets restarts older than the window, but keeps backing off', () => {
    const p = policy({ maxRestarts: 2, windowMs: 10_000 });
    const history: RestartHistory = { restarts: [0, 5000], attempt: 2 };
    expect(decideRestart(p, crash, 100, history, 9999, 0.5).kind).toBe('fail');
    const d = decideRestart(p, crash, 100, history, 10_000, 0.5);
    expect(d).toEqual({ kind: 'restart', delayMs: 4000, history: { restarts: [5000, 10_000], attempt: 3 } });
    const later = decideRestart(p, crash, 100, history, 15_000, 0.5);
    expect(later).toEqual({ kind: 'restart', delayMs: 4000, history: { restarts: [15_000], attempt: 3 } });
  });

  it('starts over from initialDelay after a run of at least resetAfter, forgetting earlier restarts', () => {
    const p = policy();
    const history: RestartHistory = { restarts: [1, 2, 3, 4, 5], attempt: 5 };
    expect(decideRestart(p, crash, 29_999, history, 40_000, 0.5).kind).toBe('fail');
    expect(decideRestart(p, crash, 30_000, history, 40_000, 0.5)).toEqual({
      kind: 'restart',
      delayMs: 1000,
      history: { restarts: [40_000], attempt: 1 },
    });
  });

  it('never gives up with maxRestarts 0', () => {
    const p = policy({ maxRestarts: 0 });
    let history: RestartHistory = EMPTY_HISTORY;
    for (let i = 0; i < 1000; i++) {
      const d = decideRestart(p, crash, 10, history, i * 10, 0.5);
      expect(d.kind).toBe('restart');
      if (d.kind === 'restart') history = d.history;
    }
    expect(history.attempt).toBe(1000);
  });

  it('applies jitter to the delay it returns', () => {
    const d = decideRestart(policy({ jitter: 0.2 }), crash, 10, EMPTY_HISTORY, 0, 0);
    expect(d).toMatchObject({ kind: 'restart', delayMs: 800 });
  });

  it.each([
    ['always', clean, 'restart'],
    ['always', crash, 'restart'],
    ['always', killed, 'restart'],
    ['on-failure', clean, 'stop'],
    ['on-failure', crash, 'restart'],
    ['on-failure', killed, 'restart'],
    ['on-failure', { code: 0, signal: 'SIGTERM' } as ExitInfo, 'restart'],
    ['never', clean, 'stop'],
    ['never', crash, 'stop'],
    ['never', killed, 'stop'],
  ] as const)('policy %s, exit %j → %s', (name, exit, kind) => {
    expect(decideRestart(policy({ policy: name }), exit, 100, EMPTY_HISTORY, 0, 0.5).kind).toBe(kind);
  });

  it('explains a stop', () => {
    expect(decideRestart(policy({ policy: 'never' }), crash, 1, EMPTY_HISTORY, 0, 0.5)).toEqual({ kind: 'stop', reason: 'restart policy is never' });
    expect(decideRestart(policy({ policy: 'on-failure' }), clean, 1, EMPTY_HISTORY, 0, 0.5)).toEqual({
      kind: 'stop',
      reason: 'exited cleanly (restart policy on-failure)',
    });
  });

  it('a never/on-failure stop does not count against the crash loop', () => {
    const full: RestartHistory = { restarts: [1, 2, 3, 4, 5], attempt: 5 };
    expect(decideRestart(policy({ policy: 'on-failure' }), clean, 1, full, 10, 0.5).kind).toBe('stop');
  });

  it('does not mutate the history it is given', () => {
    const history: RestartHistory = Object.freeze({ restarts: Object.freeze([1, 2]) as readonly number[], attempt: 2 });
    const d = decideRestart(policy(), crash, 10, history, 100, 0.5);
    expect(history).toEqual({ restarts: [1, 2], attempt: 2 });
    expect(d).toMatchObject({ kind: 'restart', history: { restarts: [1, 2, 100], attempt: 3 } });
  });
});

describe('isCleanExit', () => {
  it('is exit code 0 without a signal, nothing else', () => {
    expect(isCleanExit(clean)).toBe(true);
    expect(isCleanExit(crash)).toBe(false);
    expect(isCleanExit(killed)).toBe(false);
    expect(isCleanExit({ code: 0, signal: 'SIGTERM' })).toBe(false);
    expect(isCleanExit({ code: 143, signal: null })).toBe(false);
  });
});
