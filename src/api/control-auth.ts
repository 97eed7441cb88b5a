/**
 * Proof of the control credentials on every control request, and on every answer and log batch: the NATS
 * password only lets a client into the cluster's account (and workers hold it with
 * `controlPlane.nats.workerCredentials: true`), so a request must also be signed with the credentials'
 * `controlKey`, which only the credentials file holds.
 *
 * A request travels as one JSON object (text):
 *
 *   { "dynsup": 1, "cluster": NAME, "ts": MS, "nonce": B64URL, "req": "<the ControlRequest as JSON text>", "sig": B64URL }
 *
 * with sig = HMAC-SHA256(controlKey, "dynsup-control-request\n" NAME "\n" MS "\n" NONCE "\n" REQ). The
 * supervisor accepts it only when the signature matches, `ts` is within CLOCK_WINDOW_MS of its own clock, and
 * the nonce was not seen in that window: a request injected without the key, one changed on the way, and one
 * captured and sent again (a JetStream republish, a replay) are refused. verifyControlRequest is that check,
 * the one place where a request is authorised (NATS here; the web UI calls it too).
 *
 * Answers are signed the same way, bound to the request's nonce (a client accepts only the answer to its
 * own request from a holder of the key), and so are the worker-line batches published for `logs -f`.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { DynsupError } from '../util/errors.js';
import type { ControlRequest, ControlResponse } from './socket.js';
// Generated with the credentials (controlplane/credentials.ts); here too, beside what it signs.
export { newControlKey } from '../controlplane/credentials.js';

/** How far a request's timestamp may be from the supervisor's clock (either way). */
export const CLOCK_WINDOW_MS = 60_000;

const VERSION = 1;

export interface SignedRequest {
  readonly dynsup: typeof VERSION;
  readonly cluster: string;
  readonly ts: number;
  readonly nonce: string;
  readonly req: string;
  readonly sig: string;
}

export interface SignedReply {
  readonly dynsup: typeof VERSION;
  /** The nonce of the request this answers. */
  readonly nonce: string;
  /** `ack`: the request was verified and is being carried out; `result`: its ControlResponse. */
  readonly kind: 'ack' | 'result';
  readonly res: string;
  readonly sig: string;
}

/** Why a request was refused, and whether the sender may be told in a signed answer. */
export class ControlAuthError extends DynsupError<'E_AUTH'> {
  /**
   * `signed`: the request was signed with the key (a clock too far off): the refusal is signed too.
   * `unsigned`: no proof of the key: the refusal cannot be signed for the sender (it lacks the key).
   * `silent`: a replay: the genuine sender has its answer coming; nothing is sent.
   */
  readonly answer: 'signed' | 'unsigned' | 'silent';
  readonly nonce: string | undefined;
  constructor(message: string, answer: ControlAuthError['answer'], nonce?: string) {
    super('E_AUTH', message);
    this.name = 'ControlAuthError';
    this.answer = answer;
    this.nonce = nonce;
  }
}

function mac(key: string, parts: readonly (string | number)[], body?: Uint8Array): Buffer {
  const h = createHmac('sha256', Buffer.from(key, 'base64url'));
  h.update(parts.join('\n'));
  if (body) h.update(body);
  return h.digest();
}

function sameMac(expected: Buffer, given: unknown): boolean {
  if (typeof given !== 'string') return false;
  const b = Buffer.from(given, 'base64url');
  return b.length === expected.length && timingSafeEqual(b, expected);
}

/** Client side: a request to send, and its nonce (to match the answer with). */
export function signControlRequest(key: string, cluster: string, req: ControlRequest, now = Date.now()): SignedRequest {
  const nonce = randomBytes(16).toString('base64url');
  const text = JSON.stringify(req);
  const sig = mac(key, ['dynsup-control-request', cluster, now, nonce, text]).toString('base64url');
  return { dynsup: VERSION, cluster, ts: now, nonce, req: text, sig };
}

/** The nonces of accepted requests, each kept for as long as its timestamp is within the window. */
export class NonceLog {
  readonly #seen = new Map<string, number>();

  /** Record `nonce` (of a request stamped `ts`); false when it was recorded already. */
  add(nonce: string, ts: number, now: number): boolean {
    if (this.#seen.size > 1024) for (const [n, t] of this.#seen) if (Math.abs(now - t) > CLOCK_WINDOW_MS) this.#seen.delete(n);
    if (this.#seen.has(nonce)) return false;
    this.#seen.set(nonce, ts);
    return true;
  }
}

/**
 * Supervisor side: the request in `text` if it carries proof of `key` for `cluster`, is fresh and was not
 * accepted before; otherwise throws ControlAuthError (whose `answer` says how to refuse it). `seen` is the
 * supervisor's one NonceLog, shared by every way requests arrive.
 */
export function verifyControlRequest(
  text: string,
  key: string,
  opts: { readonly cluster: string; readonly seen: NonceLog; readonly now?: number },
): { req: ControlRequest; nonce: string } {
  const now = opts.now ?? Date.now();
  let m: Partial<SignedRequest> | null;
  try {
    m = JSON.parse(text) as Partial<SignedRequest> | null;
  } catch {
    throw new ControlAuthError('not a signed control request (not JSON)', 'unsigned');
  }
  if (
    !m ||
    typeof m !== 'object' ||
    m.dynsup !== VERSION ||
    typeof m.req !== 'string' ||
    typeof m.nonce !== 'string' ||
    typeof m.ts !== 'number' ||
    typeof m.cluster !== 'string'
  ) {
    throw new ControlAuthError("not a signed control request (dynsup clients sign every request with the credentials' controlKey)", 'unsigned');
  }
  if (!sameMac(mac(key, ['dynsup-control-request', m.cluster, m.ts, m.nonce, m.req]), m.sig)) {
    throw new ControlAuthError("the request is not signed with this cluster's control key (wrong or outdated credentials file?)", 'unsigned');
  }
  if (m.cluster !== opts.cluster) throw new ControlAuthError(`the request is for cluster ${m.cluster}, not ${opts.cluster}`, 'signed', m.nonce);
  const skew = m.ts - now;
  if (Math.abs(skew) > CLOCK_WINDOW_MS) {
    throw new ControlAuthError(
      `the request's time is ${Math.round(Math.abs(skew) / 1000)}s ${skew < 0 ? 'behind' : 'ahead of'} the head's clock (at most ${CLOCK_WINDOW_MS / 1000}s is accepted): synchronise the clocks (NTP)`,
      'signed',
      m.nonce,
    );
  }
  if (!opts.seen.add(m.nonce, m.ts, now)) throw new ControlAuthError('the request was sent before (a replay)', 'silent', m.nonce);
  let req: ControlRequest;
  try {
    req = JSON.parse(m.req) as ControlRequest;
  } catch {
    throw new ControlAuthError('bad request', 'signed', m.nonce);
  }
  return { req, nonce: m.nonce };
}

/** Supervisor side: an answer to the request with `nonce`. */
export function signReply(key: string, cluster: string, nonce: string, kind: SignedReply['kind'], res: ControlResponse | null): SignedReply {
  const text = JSON.stringify(res);
  return { dynsup: VERSION, nonce, kind, res: text, sig: mac(key, ['dynsup-control-reply', cluster, nonce, kind, text]).toString('base64url') };
}

/**
 * Client side: the answer in `text` if it is a genuine answer to the request with `nonce`, else null
 * (anything else on the inbox is not the supervisor's and is ignored).
 */
export function verifyReply(text: string, key: string, cluster: string, nonce: string): { kind: SignedReply['kind']; res: ControlResponse | null } | null {
  try {
    const m = JSON.parse(text) as Partial<SignedReply> | null;
    if (!m || m.dynsup !== VERSION || m.nonce !== nonce || (m.kind !== 'ack' && m.kind !== 'result') || typeof m.res !== 'string') return null;
    if (!sameMac(mac(key, ['dynsup-control-reply', cluster, nonce, m.kind, m.res]), m.sig)) return null;
    return { kind: m.kind, res: JSON.parse(m.res) as ControlResponse | null };
  } catch {
    return null;
  }
}

/** The signature of a batch of worker lines published on `subject` (header Dynsup-Sig). */
export function signLogBatch(key: string, subject: string, firstSeq: number, body: Uint8Array): string {
  return mac(key, ['dynsup-log', subject, firstSeq, ''], body).toString('base64url');
}

export function verifyLogBatch(key: string, subject: string, firstSeq: number, body: Uint8Array, sig: string | undefined): boolean {
  return sameMac(mac(key, ['dynsup-log', subject, firstSeq, ''], body), sig);
}
