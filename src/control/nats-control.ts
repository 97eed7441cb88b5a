/**
 * Control over NATS: the supervisor answers requests on dynsup.<cluster>.control and publishes every
 * worker line on dynsup.<cluster>.log.<replica>, so `status`, `restart`, `scale`, `logs -f`... work from
 * any machine that reaches the head and holds the cluster's credentials.
 */
import { connect, headers, type NatsConnection } from 'nats';
import { DynsupError, errorMessage } from '../util/errors.js';
import { subjects, type Credentials } from './credentials.js';
import type { ControlRequest, ControlResponse } from './socket.js';

/** Lines waiting to be published, per replica; beyond this a slow link drops lines (counted), never blocks a worker. */
const MAX_PENDING_BYTES = 256 * 1024;
const FLUSH_MS = 25;

export class NatsControl {
  readonly #nc: NatsConnection;
  readonly #cluster: string;
  readonly #pending = new Map<string, { parts: Buffer[]; bytes: number; firstSeq: number }>();
  #timer: NodeJS.Timeout | undefined;
  dropped = 0;

  private constructor(nc: NatsConnection, cluster: string) {
    this.#nc = nc;
    this.#cluster = cluster;
  }

  static async start(url: string, cluster: string, creds: Credentials, handler: (req: ControlRequest) => Promise<unknown>): Promise<NatsControl> {
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
    const ctl = new NatsControl(nc, cluster);
    nc.subscribe(subjects(cluster).control, {
      callback: (err, msg) => {
        if (err) return;
        let req: ControlRequest;
        try {
          req = JSON.parse(msg.string()) as ControlRequest;
        } catch {
          msg.respond(JSON.stringify({ ok: false, error: 'bad request' } satisfies ControlResponse));
          return;
        }
        handler(req).then(
          (result) => msg.respond(JSON.stringify({ ok: true, result } satisfies ControlResponse)),
          (e) => msg.respond(JSON.stringify({ ok: false, error: errorMessage(e), code: (e as DynsupError).code } satisfies ControlResponse)),
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
      const h = headers();
      h.set(SEQ_HEADER, String(p.firstSeq));
      this.#nc.publish(subjects(this.#cluster).log(replica), Buffer.concat(p.parts, p.bytes), { headers: h });
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

/** Client side: one request to a running supervisor over NATS. */
export async function requestOverNats(url: string, cluster: string, creds: Credentials, req: ControlRequest, timeoutMs = 30_000): Promise<unknown> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: url, user: creds.natsUser, pass: creds.natsPassword, timeout: 3000, reconnect: false });
  } catch (err) {
    throw new DynsupError('E_NOT_RUNNING', `cannot reach the control plane at ${url}: ${errorMessage(err)}`);
  }
  try {
    const msg = await nc.request(subjects(cluster).control, JSON.stringify(req), { timeout: timeoutMs }).catch((err: Error & { code?: string }) => {
      if (err.code === '503') throw new DynsupError('E_NOT_RUNNING', `no supervisor is answering for cluster ${cluster} at ${url}`);
      if (/authorization|permission/i.test(err.message)) throw new DynsupError('E_USAGE', `not allowed: ${err.message} (wrong credentials?)`);
      throw new DynsupError('E_TIMEOUT', `no answer from the supervisor of ${cluster}: ${err.message}`);
    });
    const res = JSON.parse(msg.string()) as ControlResponse;
    if (!res.ok) throw new DynsupError((res.code as never) ?? 'E_INTERNAL', res.error);
    return res.result;
  } finally {
    await nc.close();
  }
}

/** Client side: follow worker lines over NATS until the signal aborts. */
export async function followOverNats(
  url: string,
  cluster: string,
  creds: Credentials,
  replicas: readonly string[] | null,
  /** `firstSeq`: the number of the chunk's first line (undefined from a supervisor that does not say). */
  onLines: (replica: string, chunk: Buffer, firstSeq: number | undefined) => void,
  signal: AbortSignal,
): Promise<void> {
  const nc = await connect({ servers: url, user: creds.natsUser, pass: creds.natsPassword, timeout: 3000, maxReconnectAttempts: -1 });
  const subs = (replicas ?? [null]).map((r) =>
    nc.subscribe(r ? subjects(cluster).log(r) : subjects(cluster).logs, {
      callback: (err, msg) => {
        if (err) return;
        const seq = Number(msg.headers?.get(SEQ_HEADER));
        onLines(msg.subject.slice(subjects(cluster).log('').length), Buffer.from(msg.data), Number.isSafeInteger(seq) && seq > 0 ? seq : undefined);
      },
    }),
  );
  await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  for (const s of subs) s.unsubscribe();
  await nc.close();
}
