/**
 * Control over NATS: the supervisor answers requests on dynsup.<cluster>.control and publishes every
 * worker line on dynsup.<cluster>.log.<replica>, so `status`, `restart`, `scale`, `logs -f`... work from
 * any machine that reaches the head and holds the cluster's credentials. Requests, answers and line
 * batches carry proof of the credentials' control key (control-auth.ts).
 */
import { connect, createInbox, headers, type NatsConnection } from 'nats';
import { DynsupError, errorMessage } from '../util/errors.js';
import { ControlAuthError, NonceLog, signControlRequest, signLogBatch, signReply, verifyControlRequest, verifyLogBatch, verifyReply } from './control-auth.js';
import { subjects, type Credentials } from '../controlplane/credentials.js';
import type { ControlRequest, ControlResponse } from './socket.js';

/** Lines waiting to be published, per replica; beyond this a slow link drops lines (counted), never blocks a worker. */
const MAX_PENDING_BYTES = 256 * 1024;
const FLUSH_MS = 25;

export class NatsControl {
  readonly #nc: NatsConnection;
  readonly #cluster: string;
  readonly #key: string;
  readonly #pending = new Map<string, { parts: Buffer[]; bytes: number; firstSeq: number }>();
  #timer: NodeJS.Timeout | undefined;
  dropped = 0;

  private constructor(nc: NatsConnection, cluster: string, key: string) {
    this.#nc = nc;
    this.#cluster = cluster;
    this.#key = key;
  }

  /**
   * Answer control requests on dynsup.<cluster>.control: only those verifyControlRequest accepts (signed
   * with the credentials' control key, fresh, not seen before, `seen` being the supervisor's one NonceLog)
   * reach `handler`. A verified request is acknowledged at once (signed), then answered (signed); refusals
   * are logged through `onRefused`.
   */
  static async start(
    url: string,
    cluster: string,
    creds: Credentials,
    handler: (req: ControlRequest) => Promise<unknown>,
    opts: { seen?: NonceLog; onRefused?: (why: string) => void } = {},
  ): Promise<NatsControl> {
    const nc = await connect({
      servers: url,
      user: creds.natsUser,
      pass: creds.natsPassword,
      name: `dynsup-supervisor-${cluster}`,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      timeout: 5000,
    });
    const ctl = new NatsControl(nc, cluster, creds.controlKey);
    const seen = opts.seen ?? new NonceLog();
    const refused = rateLimited(opts.onRefused ?? (() => undefined));
    const key = creds.controlKey;
    nc.subscribe(subjects(cluster).control, {
      callback: (err, msg) => {
        if (err) return;
        // A request nobody waits for (a JetStream republish, a bare publish) is no client's.
        if (!msg.reply) return refused('a control request without a reply subject (not sent by a dynsup client)');
        let v: ReturnType<typeof verifyControlRequest>;
        try {
          v = verifyControlRequest(msg.string(), key, { cluster, seen });
        } catch (e) {
          if (!(e instanceof ControlAuthError)) throw e;
          refused(e.message);
          const res: ControlResponse = { ok: false, error: `refused: ${e.message}`, code: 'E_AUTH' };
          if (e.answer === 'signed' && e.nonce) msg.respond(JSON.stringify(signReply(key, cluster, e.nonce, 'result', res)));
          else if (e.answer === 'unsigned') msg.respond(JSON.stringify(res));
          return;
        }
        const answer = (res: ControlResponse) => msg.respond(JSON.stringify(signReply(key, cluster, v.nonce, 'result', res)));
        msg.respond(JSON.stringify(signReply(key, cluster, v.nonce, 'ack', null)));
        handler(v.req).then(
          (result) => answer({ ok: true, result }),
          (e) => answer({ ok: false, error: errorMessage(e), code: (e as DynsupError).code }),
        );
      },
    });
    await nc.flush();
    return ctl;
  }

  /**
   * Queue a worker line for followers. Batched; bounded per replica. `seq` is the line's number in its
   * replica's log; each message carries its first line's (header Dynsup-Seq), so a follower can tell
   * which lines it already got from the history (`tail`).
   */
  publishLine(replica: string, line: Buffer, seq: number): void {
    let p = this.#pending.get(replica);
    if (!p) this.#pending.set(replica, (p = { parts: [], bytes: 0, firstSeq: 0 }));
    if (p.bytes + line.length + 1 > MAX_PENDING_BYTES) {
      this.dropped++;
      return;
    }
    if (!p.bytes) p.firstSeq = seq;
    // Copied: the line may be a view of a read buffer, and this batch is sent later.
    p.parts.push(Buffer.from(line), NL);
    p.bytes += line.length + 1;
    this.#timer ??= setTimeout(() => this.#flush(), FLUSH_MS);
  }

  #flush(): void {
    this.#timer = undefined;
    if (this.#nc.isClosed()) return;
    for (const [replica, p] of this.#pending) {
      if (!p.bytes) continue;
      const subject = subjects(this.#cluster).log(replica);
      const body = Buffer.concat(p.parts, p.bytes);
      const h = headers();
      h.set(SEQ_HEADER, String(p.firstSeq));
      h.set(SIG_HEADER, signLogBatch(this.#key, subject, p.firstSeq, body));
      this.#nc.publish(subject, body, { headers: h });
    }
    this.#pending.clear();
  }

  async close(): Promise<void> {
    clearTimeout(this.#timer);
    this.#flush();
    await this.#nc.drain().catch(() => undefined);
  }
}

const NL = Buffer.from('\n');
const SEQ_HEADER = 'Dynsup-Seq';
const SIG_HEADER = 'Dynsup-Sig';

/** `fn`, called at most once per 10 s; what was held back is counted in the next call. */
function rateLimited(fn: (why: string) => void): (why: string) => void {
  let last = 0;
  let held = 0;
  return (why) => {
    const now = Date.now();
    if (now - last < 10_000) {
      held++;
      return;
    }
    fn(held ? `${why} (and ${held} more refused since the last report)` : why);
    last = now;
    held = 0;
  };
}

/** How long a client waits for a signed acknowledgement after a refusal it cannot verify (or no responders). */
const UNVERIFIED_GRACE_MS = 1500;

/**
 * Client side: one request to a running supervisor over NATS, signed with the credentials' control key.
 * Only a signed answer to this very request counts: anything else arriving on the inbox (from another
 * client of the account) is ignored. An unsigned refusal (a supervisor that holds another key) or "no
 * responders" ends the wait when no signed acknowledgement follows within UNVERIFIED_GRACE_MS.
 */
export async function requestOverNats(url: string, cluster: string, creds: Credentials, req: ControlRequest, timeoutMs = 30_000): Promise<unknown> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: url, user: creds.natsUser, pass: creds.natsPassword, timeout: 3000, reconnect: false });
  } catch (err) {
    if (/authorization|permission/i.test(errorMessage(err)))
      throw new DynsupError('E_AUTH', `not allowed into the control plane at ${url}: ${errorMessage(err)} (wrong credentials?)`);
    throw new DynsupError('E_NOT_RUNNING', `cannot reach the control plane at ${url}: ${errorMessage(err)}`);
  }
  const signed = signControlRequest(creds.controlKey, cluster, req);
  const inbox = createInbox();
  const sub = nc.subscribe(inbox);
  const timers: NodeJS.Timeout[] = [];
  try {
    return await new Promise<unknown>((resolve, reject) => {
      let acked = false;
      let unverified: DynsupError | undefined;
      timers.push(
        setTimeout(
          () => reject(unverified ?? new DynsupError('E_TIMEOUT', `no answer from the supervisor of ${cluster} within ${timeoutMs / 1000}s`)),
          timeoutMs,
        ),
      );
      const unconfirmed = (err: DynsupError) => {
        if (acked || unverified) return;
        unverified = err;
        timers.push(setTimeout(() => !acked && reject(err), UNVERIFIED_GRACE_MS));
      };
      void (async () => {
        for await (const m of sub) {
          if (m.data.length === 0 && m.headers?.code === 503) {
            unconfirmed(new DynsupError('E_NOT_RUNNING', `no supervisor is answering for cluster ${cluster} at ${url}`));
            continue;
          }
          const v = verifyReply(m.string(), creds.controlKey, cluster, signed.nonce);
          if (!v) {
            const refusal = unsignedRefusal(m.string());
            // A ControlAuthError: the supervisor runs (status says so) but refuses these credentials.
            if (refusal)
              unconfirmed(
                new ControlAuthError(
                  `the supervisor of ${cluster} ${refusal} (is ${url} this cluster's head, and the credentials file its current one?)`,
                  'unsigned',
                ),
              );
            continue;
          }
          if (v.kind === 'ack') {
            acked = true;
            continue;
          }
          const res = v.res;
          if (!res) continue;
          if (res.ok) resolve(res.result);
          else reject(new DynsupError((res.code as never) ?? 'E_INTERNAL', res.error));
          return;
        }
      })().catch(reject);
      nc.publish(subjects(cluster).control, JSON.stringify(signed), { reply: inbox });
    });
  } catch (err) {
    if (err instanceof DynsupError) throw err;
    if (/authorization|permission/i.test(errorMessage(err))) throw new DynsupError('E_AUTH', `not allowed: ${errorMessage(err)} (wrong credentials?)`);
    throw new DynsupError('E_TIMEOUT', `no answer from the supervisor of ${cluster}: ${errorMessage(err)}`);
  } finally {
    for (const t of timers) clearTimeout(t);
    sub.unsubscribe();
    await nc.close();
  }
}

/** The words of an unsigned refusal ({ok: false, code: 'E_AUTH'}), or null. */
function unsignedRefusal(text: string): string | null {
  try {
    const r = JSON.parse(text) as Partial<ControlResponse & { ok: false }> | null;
    return r && r.ok === false && r.code === 'E_AUTH' && typeof r.error === 'string' ? r.error : null;
  } catch {
    return null;
  }
}

/** Client side: follow worker lines over NATS until the signal aborts. */
export async function followOverNats(
  url: string,
  cluster: string,
  creds: Credentials,
  replicas: readonly string[] | null,
  /** `firstSeq`: the number of the chunk's first line. */
  onLines: (replica: string, chunk: Buffer, firstSeq: number) => void,
  signal: AbortSignal,
  /** Called for each batch that is not signed with the control key (not the supervisor's: dropped). */
  onForged: () => void = () => undefined,
): Promise<void> {
  const nc = await connect({ servers: url, user: creds.natsUser, pass: creds.natsPassword, timeout: 3000, maxReconnectAttempts: -1 });
  const subs = (replicas ?? [null]).map((r) =>
    nc.subscribe(r ? subjects(cluster).log(r) : subjects(cluster).logs, {
      callback: (err, msg) => {
        if (err) return;
        const seq = Number(msg.headers?.get(SEQ_HEADER));
        if (!Number.isSafeInteger(seq) || !verifyLogBatch(creds.controlKey, msg.subject, seq, msg.data, msg.headers?.get(SIG_HEADER))) return onForged();
        onLines(msg.subject.slice(subjects(cluster).log('').length), Buffer.from(msg.data), seq);
      },
    }),
  );
  await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  for (const s of subs) s.unsubscribe();
  await nc.close();
}
