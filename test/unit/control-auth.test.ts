/** Proof of the control key on control requests, answers and log batches (src/api/control-auth.ts). */
import { describe, expect, it } from 'vitest';
import {
  CLOCK_WINDOW_MS,
  ControlAuthError,
  NonceLog,
  newControlKey,
  signControlRequest,
  signLogBatch,
  signReply,
  verifyControlRequest,
  verifyLogBatch,
  verifyReply,
} from '../../src/api/control-auth.js';

const KEY = newControlKey();
const NOW = 1_800_000_000_000;

function refusal(fn: () => unknown): ControlAuthError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ControlAuthError);
    return err as ControlAuthError;
  }
  throw new Error('accepted');
}

describe('verifyControlRequest', () => {
  const verify = (text: string, seen = new NonceLog(), now = NOW) => verifyControlRequest(text, KEY, { cluster: 'c1', seen, now });

  it('accepts a request signed with the key, once', () => {
    const seen = new NonceLog();
    const signed = JSON.stringify(signControlRequest(KEY, 'c1', { op: 'restart', target: 'w-0' }, NOW));
    expect(verify(signed, seen).req).toEqual({ op: 'restart', target: 'w-0' });
    const again = refusal(() => verify(signed, seen, NOW + 1000));
    expect([again.answer, again.message]).toEqual(['silent', 'the request was sent before (a replay)']);
  });

  it('refuses what carries no proof of the key: plain requests, other keys, changed requests (answered unsigned)', () => {
    const signed = signControlRequest(KEY, 'c1', { op: 'status' }, NOW);
    const cases = [
      'not json',
      JSON.stringify({ op: 'restart', target: 'w-0' }),
      JSON.stringify(signControlRequest(newControlKey(), 'c1', { op: 'restart', target: 'w-0' }, NOW)),
      JSON.stringify({ ...signed, req: JSON.stringify({ op: 'down' }) }),
      JSON.stringify({ ...signed, ts: NOW + 1 }),
      JSON.stringify({ ...signed, nonce: 'other' }),
      JSON.stringify({ ...signed, sig: undefined }),
      JSON.stringify({ ...signed, sig: signed.sig.slice(0, -2) }),
    ];
    for (const text of cases) expect(refusal(() => verify(text)).answer, text).toBe('unsigned');
  });

  it('refuses a signed request that is for another cluster or outside the clock window (answered signed)', () => {
    const other = refusal(() => verify(JSON.stringify(signControlRequest(KEY, 'c2', { op: 'status' }, NOW))));
    expect([other.answer, other.message]).toEqual(['signed', 'the request is for cluster c2, not c1']);
    const old = refusal(() => verify(JSON.stringify(signControlRequest(KEY, 'c1', { op: 'status' }, NOW - CLOCK_WINDOW_MS - 5000))));
    expect(old.answer).toBe('signed');
    expect(old.message).toMatch(/^the request's time is 65s behind the head's clock/);
    const ahead = refusal(() => verify(JSON.stringify(signControlRequest(KEY, 'c1', { op: 'status' }, NOW + CLOCK_WINDOW_MS + 1000))));
    expect(ahead.message).toMatch(/61s ahead of the head's clock/);
    // Within the window either way: accepted.
    expect(verify(JSON.stringify(signControlRequest(KEY, 'c1', { op: 'status' }, NOW - CLOCK_WINDOW_MS + 1000))).req).toEqual({ op: 'status' });
  });

  it('keeps nonces for the window only (a long-running supervisor does not grow without bound)', () => {
    const seen = new NonceLog();
    for (let i = 0; i < 3000; i++) expect(seen.add(`n${i}`, NOW + i * 100, NOW + i * 100)).toBe(true);
    expect(seen.add('n2999', NOW, NOW + 300_000)).toBe(false);
    expect(seen.add('n0', NOW + 300_000, NOW + 300_000)).toBe(true); // long expired, forgotten
  });
});

describe('answers and log batches', () => {
  it('a client accepts only the signed answer to its own request', () => {
    const reply = JSON.stringify(signReply(KEY, 'c1', 'nonce-1', 'result', { ok: true, result: 1 }));
    expect(verifyReply(reply, KEY, 'c1', 'nonce-1')).toEqual({ kind: 'result', res: { ok: true, result: 1 } });
    expect(verifyReply(reply, KEY, 'c1', 'nonce-2')).toBeNull();
    expect(verifyReply(reply, KEY, 'c2', 'nonce-1')).toBeNull();
    expect(verifyReply(reply, newControlKey(), 'c1', 'nonce-1')).toBeNull();
    expect(verifyReply(JSON.stringify({ ok: true, result: 1 }), KEY, 'c1', 'nonce-1')).toBeNull();
    const forged = JSON.parse(reply) as { res: string };
    forged.res = JSON.stringify({ ok: true, result: 2 });
    expect(verifyReply(JSON.stringify(forged), KEY, 'c1', 'nonce-1')).toBeNull();
    expect(verifyReply('{', KEY, 'c1', 'nonce-1')).toBeNull();
  });

  it('log batches verify with their subject, first line number and bytes', () => {
    const body = Buffer.from('a\nb\n');
    const sig = signLogBatch(KEY, 'dynsup.c1.log.w-0', 7, body);
    expect(verifyLogBatch(KEY, 'dynsup.c1.log.w-0', 7, body, sig)).toBe(true);
    expect(verifyLogBatch(KEY, 'dynsup.c1.log.w-1', 7, body, sig)).toBe(false);
    expect(verifyLogBatch(KEY, 'dynsup.c1.log.w-0', 8, body, sig)).toBe(false);
    expect(verifyLogBatch(KEY, 'dynsup.c1.log.w-0', 7, Buffer.from('a\nc\n'), sig)).toBe(false);
    expect(verifyLogBatch(KEY, 'dynsup.c1.log.w-0', 7, body, undefined)).toBe(false);
  });
});
