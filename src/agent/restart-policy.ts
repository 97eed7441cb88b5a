/** The restart decision after a worker exits. Pure: time and randomness come in as arguments. */
import type { RestartPolicy } from '../config/types.js';
import type { ExitInfo } from './protocol.js';

export interface RestartHistory {
  /** Times (ms) of restarts still inside the crash-loop window. */
  readonly restarts: readonly number[];
  /** Consecutive backoff steps taken since the last stable run. */
  readonly attempt: number;
}

export const EMPTY_HISTORY: RestartHistory = { restarts: [], attempt: 0 };

export type RestartDecision =
  | { readonly kind: 'restart'; readonly delayMs: number; readonly history: RestartHistory }
  | { readonly kind: 'stop'; readonly reason: string }
  | { readonly kind: 'fail'; readonly reason: string };

export function isCleanExit(exit: ExitInfo): boolean {
  return exit.code === 0 && exit.signal === null;
}

/** The delay before restart number `attempt` (0-based), with jitter drawn from `random` ∈ [0, 1). */
export function backoffDelay(policy: RestartPolicy, attempt: number, random: number): number {
  // initialDelay 0 stays 0 (0 × factor^1024 would be NaN); the cap bounds everything else.
  const base = policy.initialDelayMs === 0 ? 0 : Math.min(policy.maxDelayMs, policy.initialDelayMs * policy.factor ** attempt);
  return Math.max(0, Math.round(base * (1 + policy.jitter * (2 * random - 1))));
}

export function decideRestart(policy: RestartPolicy, exit: ExitInfo, uptimeMs: number, history: RestartHistory, now: number, random: number): RestartDecision {
  if (policy.policy === 'never') return { kind: 'stop', reason: 'restart policy is never' };
  if (policy.policy === 'on-failure' && isCleanExit(exit)) return { kind: 'stop', reason: 'exited cleanly (restart policy on-failure)' };
  // A run that lasted resetAfter was healthy: the crash-loop window and backoff start over.
  const stable = uptimeMs >= policy.resetAfterMs;
  const attempt = stable ? 0 : history.attempt;
  const recent = stable ? [] : history.restarts.filter((t) => now - t < policy.windowMs);
  if (policy.maxRestarts > 0 && recent.length >= policy.maxRestarts) {
    return {
      kind: 'fail',
      reason: `crash loop: ${recent.length} restarts within ${Math.round(policy.windowMs / 1000)}s (restart.maxRestarts ${policy.maxRestarts})`,
    };
  }
  return {
    kind: 'restart',
    delayMs: backoffDelay(policy, attempt, random),
    history: { restarts: [...recent, now], attempt: attempt + 1 },
  };
}
