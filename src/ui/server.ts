/**
 * The live web view, served by the supervisor on its HTTP server (the one of /metrics): a static page
 * (dist/ui/static, built from src/ui/client) and its API:
 *
 *   GET  /api/status              the snapshot below, as JSON
 *   GET  /api/stream              server-sent events: `snapshot`, then `delta` (changed replicas, new events)
 *   GET  /api/replica/NAME        one replica: status, restart history, command and environment (redacted)
 *   GET  /api/logs/NAME?n=200     server-sent events: the log's last n lines, then every new line
 *   POST /api/auth                200 when the control secret header is right (the page checks what you typed)
 *   POST /api/action              {op: restart|stop|start, target}: needs the control secret header
 *
 * Nothing here can slow a worker: every stream has a bounded backlog; a client that does not keep up is
 * skipped (status: it gets a fresh snapshot once it drains; logs: lines are dropped and a marker says how
 * many). Secrets never leave: log lines and environments go through the supervisor's redactor.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { ClusterConfig } from '../config/types.js';
import { isSecretName } from '../config/secrets.js';
import type { ControlAuthorization } from '../api/http-auth.js';
import type { ControlRequest } from '../api/socket.js';
import { tailLogs } from '../api/tail.js';
import type { ReplicaStatus } from '../supervise/replica.js';
import type { Supervisor } from '../supervise/supervisor.js';
import { errorMessage } from '../util/errors.js';
import { escapeTerminal } from '../util/terminal-escape.js';
import { dependencyColumns } from './graph.js';
import type { Timeline, TimelineEvent } from './timeline.js';
import type { Delta, GroupInfo, ReplicaDetail, Snapshot } from './wire.js';

/** Operations the page may ask for (never `down`, `scale` or `apply`); `rolling`: a group's rolling restart. */
export const UI_ACTIONS = ['restart', 'rolling', 'stop', 'start'] as const;
export type UiAction = (typeof UI_ACTIONS)[number];
/** What the page offers on a replica, and on a group. */
const REPLICA_ACTIONS: readonly UiAction[] = ['restart', 'stop', 'start'];
const GROUP_ACTIONS: readonly UiAction[] = ['rolling', 'restart', 'stop', 'start'];

function controlRequest(op: UiAction, target: string): ControlRequest {
  return op === 'rolling' ? { op: 'restart', target, rolling: true } : { op, target };
}

export interface WebUiOptions {
  readonly cluster: ClusterConfig;
  readonly sup: Supervisor;
  readonly timeline: Timeline;
  /** The supervisor's own control handler (the one the socket and NATS use). */
  readonly control: (req: ControlRequest) => Promise<unknown>;
  /** The one credentials check (src/api/http-auth.ts). */
  readonly authorize: (req: IncomingMessage) => ControlAuthorization;
  readonly redact: (s: string) => string;
  /** Where the built page is (default: dist/ui/static beside this module). */
  readonly assets?: string;
}

function groupInfo(cluster: ClusterConfig): GroupInfo[] {
  const columns = dependencyColumns(cluster.groups);
  return cluster.groups.map((g) => ({
    name: g.name,
    dependsOn: g.dependsOn,
    replicas: g.replicas,
    gpus: g.gpus,
    column: columns.findIndex((c) => c.includes(g.name)),
  }));
}

/** A status stream's backlog beyond which it is skipped until it drains (then gets a snapshot). */
const STATUS_BACKLOG = 1 << 20;
/** A log stream's backlog (in the socket) beyond which lines are dropped, and its queue's bound. */
const LOG_BACKLOG = 512 << 10;
const LOG_QUEUE = 256 << 10;
// Short: changes of one moment (a bring-up) go out together, yet a brief state (backoff) is still seen.
const STATUS_FLUSH_MS = 50;
const LOG_FLUSH_MS = 100;
const PING_MS = 15_000;
/** What changes without a state change (GPU telemetry samples) is looked for this often, while pages are open. */
const RESCAN_MS = 2000;
const MAX_TAIL = 2000;
const EVENTS_IN_SNAPSHOT = 200;

const STATIC: Readonly<Record<string, { file: string; type: string }>> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/ui/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

// Everything the page loads is served from here; nothing reaches out (no CDN, no fonts).
const CSP = "default-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

interface Asset {
  readonly body: Buffer;
  readonly gz: Buffer;
  readonly etag: string;
  readonly type: string;
}

interface StatusClient {
  readonly res: ServerResponse;
  /** Skipped a delta (too slow): gets a full snapshot once its backlog drains. */
  stale: boolean;
}

export class WebUi {
  readonly #o: WebUiOptions;
  readonly #assetsDir: string;
  readonly #assets = new Map<string, Promise<Asset | null>>();
  readonly #statusClients = new Set<StatusClient>();
  readonly #closers = new Set<() => void>();
  /** The groups as last sent: an apply that changes them sends every page a fresh snapshot. */
  #groupsJson: string;
  /** The last status sent of each replica (JSON), to find what changed. */
  #sent = new Map<string, string>();
  #pendingEvents: TimelineEvent[] = [];
  #dirty = false;
  #flushTimer: NodeJS.Timeout | undefined;
  readonly #ping: NodeJS.Timeout;
  readonly #rescan: NodeJS.Timeout;
  readonly #unsubscribe: () => void;

  constructor(o: WebUiOptions) {
    this.#o = o;
    // '../ui/': the same from dist/ui/ and from the CLI bundle's dist/cli-bundle/ (scripts/build/cli.mjs).
    this.#assetsDir = o.assets ?? fileURLToPath(new URL('../ui/static/', import.meta.url));
    this.#groupsJson = JSON.stringify(groupInfo(o.sup.cluster));
    this.#unsubscribe = o.timeline.onEvent((e) => {
      if (!this.#statusClients.size) return;
      this.#pendingEvents.push(e);
      this.#schedule();
    });
    this.#ping = setInterval(() => {
      for (const c of this.#statusClients) if (c.res.writableLength < STATUS_BACKLOG) c.res.write(': ping\n\n');
    }, PING_MS);
    this.#ping.unref();
    this.#rescan = setInterval(() => this.changed(), RESCAN_MS);
    this.#rescan.unref();
  }

  /** A replica's status changed (the supervisor's onChange): pushed to the pages, coalesced. */
  changed(): void {
    if (!this.#statusClients.size) return;
    this.#dirty = true;
    this.#schedule();
  }

  /** End every stream (the supervisor stops; the HTTP server can then close). */
  close(): void {
    clearInterval(this.#ping);
    clearInterval(this.#rescan);
    clearTimeout(this.#flushTimer);
    this.#unsubscribe();
    for (const c of [...this.#closers]) c();
  }

  snapshot(): Snapshot {
    const st = this.#o.sup.status();
    return {
      cluster: st.cluster,
      head: this.#o.cluster.headAddress,
      now: Date.now(),
      groups: groupInfo(this.#o.sup.cluster),
      controlPlane: st.controlPlane,
      replicas: st.replicas,
      events: this.#o.timeline.recent(EVENTS_IN_SNAPSHOT),
      actions: { replica: REPLICA_ACTIONS, group: GROUP_ACTIONS },
    };
  }

  /** Handles the UI's routes; false for anything else (the caller answers 404). */
  handle(req: IncomingMessage, res: ServerResponse): boolean {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    const asset = STATIC[path];
    if (asset && (req.method === 'GET' || req.method === 'HEAD')) {
      void this.#serveAsset(req, res, asset.file, asset.type);
      return true;
    }
    if (path === '/api/status' && req.method === 'GET') {
      json(res, 200, this.snapshot());
      return true;
    }
    if (path === '/api/stream' && req.method === 'GET') {
      this.#openStatusStream(req, res);
      return true;
    }
    const replica = /^\/api\/replica\/([^/]+)$/.exec(path);
    if (replica && req.method === 'GET') {
      this.#replicaDetail(res, decodeURIComponent(replica[1]!));
      return true;
    }
    const logs = /^\/api\/logs\/([^/]+)$/.exec(path);
    if (logs && req.method === 'GET') {
      void this.#openLogStream(req, res, decodeURIComponent(logs[1]!), Number(url.searchParams.get('n') ?? 200));
      return true;
    }
    if (path === '/api/auth' && req.method === 'POST') {
      const auth = this.#o.authorize(req);
      json(res, auth.ok ? 200 : auth.status, auth.ok ? { ok: true } : { ok: false, error: auth.reason });
      return true;
    }
    if (path === '/api/action' && req.method === 'POST') {
      void this.#action(req, res);
      return true;
    }
    if (path.startsWith('/api/')) {
      json(res, 404, { ok: false, error: `no such API: ${req.method} ${path}` });
      return true;
    }
    return false;
  }

  async #asset(file: string, type: string): Promise<Asset | null> {
    let p = this.#assets.get(file);
    if (!p) {
      p = readFile(`${this.#assetsDir}${file}`).then(
        (body) => ({ body, gz: gzipSync(body, { level: 9 }), etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 16)}"`, type }),
        () => null,
      );
      this.#assets.set(file, p);
    }
    return p;
  }

  async #serveAsset(req: IncomingMessage, res: ServerResponse, file: string, type: string): Promise<void> {
    const a = await this.#asset(file, type);
    if (!a) {
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`the web view is not built (${this.#assetsDir}${file} missing): npm run build\n`);
      return;
    }
    const headers: Record<string, string> = {
      'content-type': a.type,
      etag: a.etag,
      'cache-control': 'no-cache',
      'content-security-policy': CSP,
      'x-content-type-options': 'nosniff',
      vary: 'accept-encoding',
    };
    if (req.headers['if-none-match'] === a.etag) {
      res.writeHead(304, headers).end();
      return;
    }
    const gzip = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
    const body = gzip ? a.gz : a.body;
    res.writeHead(200, { ...headers, 'content-length': String(body.length), ...(gzip ? { 'content-encoding': 'gzip' } : {}) });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  #openSse(req: IncomingMessage, res: ServerResponse, onClose: () => void): () => void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.socket?.setNoDelay(true);
    res.write('retry: 2000\n\n');
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      this.#closers.delete(close);
      onClose();
      res.end();
    };
    this.#closers.add(close);
    req.on('close', close);
    res.on('error', close);
    return close;
  }

  #openStatusStream(req: IncomingMessage, res: ServerResponse): void {
    const client: StatusClient = { res, stale: false };
    this.#openSse(req, res, () => this.#statusClients.delete(client));
    if (!this.#statusClients.size) this.#sent = this.#statusMap(); // nobody kept it current
    this.#statusClients.add(client);
    sse(res, 'snapshot', this.snapshot());
  }

  #statusMap(): Map<string, string> {
    const st = this.#o.sup.status();
    return new Map([...st.controlPlane, ...st.replicas].map((r) => [r.name, JSON.stringify(r)]));
  }

  #schedule(): void {
    this.#flushTimer ??= setTimeout(() => this.#flush(), STATUS_FLUSH_MS);
  }

  #flush(): void {
    this.#flushTimer = undefined;
    const events = this.#pendingEvents;
    this.#pendingEvents = [];
    const changed: ReplicaStatus[] = [];
    let removed: string[] = [];
    if (this.#dirty) {
      this.#dirty = false;
      const st = this.#o.sup.status();
      const now = new Map<string, string>();
      for (const r of [...st.controlPlane, ...st.replicas]) {
        const j = JSON.stringify(r);
        now.set(r.name, j);
        if (this.#sent.get(r.name) !== j) changed.push(r);
      }
      removed = [...this.#sent.keys()].filter((n) => !now.has(n));
      this.#sent = now;
    }
    const any = changed.length > 0 || removed.length > 0 || events.length > 0;
    // The file was applied with other groups (or replica counts): every page redraws from a snapshot.
    const groupsJson = JSON.stringify(groupInfo(this.#o.sup.cluster));
    const regroup = groupsJson !== this.#groupsJson;
    this.#groupsJson = groupsJson;
    const delta: Delta = { now: Date.now(), changed, removed, events };
    let text: string | undefined;
    let stale = false;
    for (const c of this.#statusClients) {
      if (c.res.writableLength > STATUS_BACKLOG) {
        c.stale = stale = true;
        continue;
      }
      if (c.stale || regroup) {
        c.stale = false;
        sse(c.res, 'snapshot', this.snapshot());
        continue;
      }
      if (!any) continue;
      text ??= frame('delta', delta);
      c.res.write(text);
    }
    // A client skipped for being slow gets its snapshot once it has drained, changes or not.
    if (stale) this.#flushTimer ??= setTimeout(() => this.#flush(), STATUS_FLUSH_MS * 4);
  }

  #replicaDetail(res: ServerResponse, name: string): void {
    const { sup, redact, timeline } = this.#o;
    let r;
    try {
      r = sup.select(name);
    } catch (err) {
      json(res, 404, { ok: false, error: errorMessage(err) });
      return;
    }
    if (r.length !== 1 || r[0]!.name !== name) {
      json(res, 404, { ok: false, error: `no replica named '${name}'` });
      return;
    }
    const rep = r[0]!;
    const spec = rep.launchSpec();
    const detail: ReplicaDetail = {
      status: rep.status(),
      history: timeline.ofReplica(name),
      // Shown redacted: values of secret-looking variables (and the control credentials) read ***.
      argv: spec.argv.map((a) => redact(a)),
      // By name as well: values dynsup itself makes (etcd TLS client key, multi-line) are in no redactor.
      env: Object.fromEntries(Object.entries(spec.env).map(([k, v]) => [k, isSecretName(k) ? '***' : redact(v)])),
      cwd: spec.cwd ?? null,
      log: sup.replicaLog(name)?.file ?? null,
      now: Date.now(),
    };
    json(res, 200, detail);
  }

  async #openLogStream(req: IncomingMessage, res: ServerResponse, name: string, n: number): Promise<void> {
    const { sup, redact } = this.#o;
    const log = sup.replicaLog(name);
    if (!log) {
      json(res, 404, { ok: false, error: `no replica named '${name}'` });
      return;
    }
    const lines = Math.min(MAX_TAIL, Math.max(0, Number.isFinite(n) ? Math.floor(n) : 200));
    const queue: string[] = [];
    let queued = 0;
    let skipped = 0;
    /** Lines up to this number came with the history. */
    let after = Infinity;
    let timer: NodeJS.Timeout | undefined;
    const early: { text: string; seq: number }[] = [];
    const show = (line: Buffer, truncated: number): string =>
      escapeTerminal(redact(line.toString('utf8')), { keepSgr: true }) + (truncated ? ` …[${truncated} more bytes in the log file]` : '');
    const flush = (): void => {
      timer = undefined;
      if (res.writableLength > LOG_BACKLOG) {
        // The page does not read (a paused or hidden tab, a slow link): keep dropping, try again later.
        timer = setTimeout(flush, LOG_FLUSH_MS * 5);
        return;
      }
      if (skipped) {
        sse(res, 'skipped', { count: skipped });
        skipped = 0;
      }
      if (queue.length) sse(res, 'lines', { lines: queue.splice(0) });
      queued = 0;
    };
    // Subscribed before the history is read: lines printed meanwhile are kept, and those the history has dropped.
    const off = log.onLine((_r, line, truncated, seq) => {
      if (after === Infinity) {
        if (early.length < 10_000) early.push({ text: show(line, truncated), seq });
        return;
      }
      if (seq <= after) return;
      // Never waits: past the queue's bound the line is dropped and counted.
      if (queued > LOG_QUEUE || res.writableLength > LOG_BACKLOG) {
        skipped++;
        timer ??= setTimeout(flush, LOG_FLUSH_MS);
        return;
      }
      const text = show(line, truncated);
      queue.push(text);
      queued += text.length;
      timer ??= setTimeout(flush, LOG_FLUSH_MS);
    });
    this.#openSse(req, res, () => {
      off();
      clearTimeout(timer);
    });
    try {
      const [tail] = await tailLogs(sup, name, lines);
      after = tail?.seq ?? 0;
      sse(res, 'history', { replica: name, file: log.file, lines: (tail?.lines ?? []).map((l) => show(Buffer.from(l), 0)) });
      for (const e of early) if (e.seq > after) queue.push(e.text);
      early.length = 0;
      if (queue.length) flush();
    } catch (err) {
      after = 0;
      sse(res, 'history', { replica: name, file: log.file, lines: [], error: errorMessage(err) });
    }
  }

  async #action(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const auth = this.#o.authorize(req);
    if (!auth.ok) {
      req.resume();
      json(res, auth.status, { ok: false, error: auth.reason });
      return;
    }
    let body: { op?: unknown; target?: unknown };
    try {
      body = JSON.parse(await readBody(req, 4096)) as typeof body;
    } catch (err) {
      json(res, 400, { ok: false, error: `bad request: ${errorMessage(err)}` });
      return;
    }
    const op = body?.op;
    const target = body?.target;
    if (typeof op !== 'string' || !(UI_ACTIONS as readonly string[]).includes(op) || typeof target !== 'string' || !target) {
      json(res, 400, { ok: false, error: `bad request: expected {"op": ${UI_ACTIONS.join('|')}, "target": replica or group}` });
      return;
    }
    try {
      const result = await this.#o.control(controlRequest(op as UiAction, target));
      json(res, 200, { ok: true, result });
    } catch (err) {
      json(res, 400, { ok: false, error: errorMessage(err) });
    }
  }
}

function frame(event: string, data: unknown): string {
  // JSON has no raw newlines, so one `data:` line carries it.
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function sse(res: ServerResponse, event: string, data: unknown): void {
  res.write(frame(event, data));
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new Error(`body larger than ${max} bytes`));
        req.destroy();
      } else parts.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}
