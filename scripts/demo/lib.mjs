// Shared helpers for the dynsup demo workers (prefill, decode, frontend).
//
// The demo is a small but real disaggregated graph: every worker talks to the control plane
// (NATS for requests, etcd for discovery) that dynsup starts, using ONLY the environment dynsup
// gives it. If that environment is wrong the workers fail loudly (non-zero exit, stderr line), so
// a mis-configured launch shows up as a crash loop instead of a silently idle process.
//
// Plain ESM, no build step; depends on nats, etcd3 and node built-ins only.

import { createHash } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import { connect, JSONCodec } from 'nats';
import { Etcd3 } from 'etcd3';

/** How long a worker may take to reach NATS and etcd at startup before it gives up (ms). */
export const CONNECT_DEADLINE_MS = 10_000;
/** TTL of the etcd lease behind each registration: a crashed worker vanishes from discovery after this. */
export const LEASE_TTL_S = 5;
/** Root of everything the demo writes to etcd and NATS. */
export const ROOT = 'dynsup-demo';

export const jc = JSONCodec();

// ---------------------------------------------------------------------------------------------
// Environment, logging, failing

let logName = `demo-${process.pid}`;

/** One line per event on stdout: `TIME NAME message {details}` (dynsup captures stdout into its logs). */
export function log(msg, details) {
  const extra = details === undefined ? '' : ` ${JSON.stringify(details)}`;
  process.stdout.write(`${new Date().toISOString()} ${logName} ${msg}${extra}\n`);
}

/** Clear message on stderr, then a non-zero exit so the supervisor sees (and restarts) the failure. */
export function die(msg, code = 1) {
  process.stderr.write(`${new Date().toISOString()} ${logName} FATAL: ${msg}\n`);
  process.exit(code);
}

/** NATS subject tokens must not contain '.', '*', '>' or whitespace; etcd keys should not contain '/'. */
export function token(s) {
  return String(s).replace(/[^A-Za-z0-9_-]/g, '_');
}

/**
 * Reads the environment dynsup gives a worker. NATS_SERVER and ETCD_ENDPOINTS are required (the
 * whole point of the demo is to exercise them); everything else has a default so the scripts can
 * also be started by hand.
 */
export function readEnv(role, defaultPort) {
  const index = Number.parseInt(process.env.DYNSUP_REPLICA_INDEX ?? '0', 10) || 0;
  const worker = process.env.DYNSUP_WORKER || `${role}-${process.pid}`;
  logName = worker;

  const list = (v) =>
    (v ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const nats = list(process.env.NATS_SERVER);
  const etcd = list(process.env.ETCD_ENDPOINTS);
  if (nats.length === 0) die('NATS_SERVER is not set (expected nats://HOST:PORT); dynsup should provide it');
  if (etcd.length === 0) die('ETCD_ENDPOINTS is not set (expected http://HOST:PORT[,...]); dynsup should provide it');
  for (const e of etcd) {
    if (!/^https?:\/\/[^/]+/.test(e)) die(`ETCD_ENDPOINTS entry ${JSON.stringify(e)} is not an http(s)://HOST:PORT URL`);
  }

  let port = defaultPort + index; // default keeps replicas started by hand on distinct ports
  if (process.env.DYNSUP_PORT) {
    port = Number(process.env.DYNSUP_PORT);
    if (!Number.isInteger(port) || port < 0 || port > 65535) die(`DYNSUP_PORT=${process.env.DYNSUP_PORT} is not a port number`);
  }

  const cluster = process.env.DYNSUP_CLUSTER || 'default';
  // CUDA_VISIBLE_DEVICES may be unset or empty (no GPU); entries may be indices or GPU UUIDs.
  const gpus = list(process.env.CUDA_VISIBLE_DEVICES);
  return {
    role,
    worker,
    cluster,
    group: process.env.DYNSUP_GROUP || role,
    index,
    node: process.env.DYNSUP_NODE || os.hostname(),
    port,
    gpus,
    nats,
    etcd,
    // Where this worker, and its peers, live in etcd and on NATS.
    prefix: (r) => `${ROOT}/${token(cluster)}/${r}/`,
    subject: (r, w) => [ROOT, token(cluster), r, ...(w ? [token(w)] : [])].join('.'),
    warnings: process.env.DYNSUP_CLUSTER ? [] : ['DYNSUP_CLUSTER not set, using "default"'],
  };
}

/** The startup line: what this worker is and where it will connect. */
export function logStartup(env, extra = {}) {
  log(`starting ${env.role}`, {
    cluster: env.cluster,
    worker: env.worker,
    group: env.group,
    index: env.index,
    node: env.node,
    port: env.port,
    gpus: env.gpus,
    nats: env.nats,
    etcd: env.etcd,
    pid: process.pid,
    ...extra,
  });
  for (const w of env.warnings) log(`warning: ${w}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Control plane connections

/**
 * Connects to NATS, retrying until CONNECT_DEADLINE_MS: the control plane may come up a moment
 * after the worker. After the first connection the client reconnects on its own for ~30s; if it
 * then gives up, the worker exits 1 (see watchNats) so that the supervisor restarts it.
 */
export async function connectNats(env) {
  const deadline = Date.now() + CONNECT_DEADLINE_MS;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      return await connect({
        servers: env.nats,
        name: env.worker,
        timeout: Math.max(500, Math.min(2000, deadline - Date.now())),
        maxReconnectAttempts: 30,
        reconnectTimeWait: 1000,
      });
    } catch (err) {
      lastErr = err;
      await sleep(500);
    }
  }
  die(`cannot reach NATS at ${env.nats.join(',')} within ${CONNECT_DEADLINE_MS / 1000}s: ${lastErr?.message ?? 'timeout'}`);
}

/**
 * Logs NATS connection changes and keeps ctx.natsUp current (health is 503 while disconnected);
 * exits 1 when the connection is closed for good (not by us).
 */
export function watchNats(ctx, isStopping) {
  const nc = ctx.nc;
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') ctx.natsUp = false;
      if (s.type === 'reconnect') ctx.natsUp = true;
      if (['disconnect', 'reconnect', 'error'].includes(s.type)) log(`nats ${s.type}`, { data: String(s.data) });
    }
  })().catch(() => {});
  nc.closed().then((err) => {
    if (!isStopping()) die(`NATS connection closed${err ? `: ${err.message}` : ''} (server gone for too long)`);
  });
}

/**
 * Creates the etcd client and checks that etcd actually answers, retrying until
 * CONNECT_DEADLINE_MS. (The etcd3 client is lazy: without this check a wrong ETCD_ENDPOINTS would
 * only show up at the first registration.)
 */
export async function connectEtcd(env) {
  const client = new Etcd3({
    hosts: env.etcd,
    dialTimeout: 3000,
    // Unary calls get a deadline so an unreachable endpoint fails instead of hanging; streams (lease
    // keepalives) must not have one.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 3000 }),
  });
  const deadline = Date.now() + CONNECT_DEADLINE_MS;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      await client.get(`${ROOT}/.ping`).options({ deadline: Math.min(deadline, Date.now() + 3000) });
      return client;
    } catch (err) {
      // After a few failures etcd3's circuit breaker answers "circuit breaker is open": keep the
      // real cause (connection refused, deadline exceeded...) for the error message.
      if (!lastErr || !/circuit breaker/i.test(err.message)) lastErr = err;
      await sleep(500);
    }
  }
  client.close();
  die(`cannot reach etcd at ${env.etcd.join(',')} within ${CONNECT_DEADLINE_MS / 1000}s: ${lastErr?.message ?? 'timeout'}`);
}

// ---------------------------------------------------------------------------------------------
// Registration and discovery

/**
 * Keeps `key` = JSON(value) in etcd under a lease of LEASE_TTL_S seconds, kept alive by the etcd3
 * client. The lease is what makes discovery honest: a crashed worker's key expires on its own, a
 * cleanly stopped one is removed at once by close(). If the lease is lost (etcd down longer than
 * the TTL, or etcd restarted without its data), it is re-granted and the key written again.
 */
export class Registration {
  constructor(client, key, value) {
    this.client = client;
    this.key = key;
    this.value = JSON.stringify(value);
    this.lease = null;
    this.registered = false;
    this.closed = false;
  }

  /** First registration; rejects if etcd refuses (the caller treats that as fatal). */
  async start() {
    await this.#grant();
    log('registered in etcd', { key: this.key, ttl: LEASE_TTL_S });
  }

  async #grant() {
    const lease = this.client.lease(LEASE_TTL_S);
    // Attach the listener before anything can fail: etcd3 reports a failed grant as 'lost' too.
    lease.on('lost', (err) => this.#onLost(lease, err));
    this.lease = lease;
    try {
      await lease.put(this.key).value(this.value);
    } catch (err) {
      lease.release();
      throw err;
    }
    this.registered = true;
  }

  #onLost(lease, err) {
    // Only the current, established lease matters; failures during #grant are handled by its caller.
    if (this.closed || lease !== this.lease || !this.registered) return;
    this.registered = false;
    log('etcd lease lost, re-registering', { key: this.key, error: err?.message });
    const retry = async () => {
      if (this.closed) return;
      try {
        await this.#grant();
        log('re-registered in etcd', { key: this.key });
      } catch (e) {
        log('re-registration failed, retrying in 1s', { error: e?.message });
        setTimeout(retry, 1000);
      }
    };
    retry();
  }

  /** Deregisters: revoking the lease deletes the key at once (no waiting for the TTL). */
  async close() {
    this.closed = true;
    this.registered = false;
    try {
      await this.lease?.revoke();
    } catch {
      // etcd unreachable: the key will still expire with the lease.
    }
  }
}

/**
 * Lists the registered workers of a role: [{key, worker, subject, ...}] sorted by key. Throws a
 * codedError 'etcd_unavailable' if etcd cannot be read.
 */
export async function discover(client, prefix) {
  let all;
  try {
    all = await client.getAll().prefix(prefix).strings();
  } catch (err) {
    throw codedError(`cannot list ${prefix} in etcd: ${err.message}`, 'etcd_unavailable');
  }
  return Object.keys(all)
    .sort()
    .flatMap((key) => {
      try {
        return [{ key, ...JSON.parse(all[key]) }];
      } catch {
        return []; // not ours / corrupt: ignore rather than fail the request
      }
    });
}

/**
 * Orders candidates round-robin (a rotating start index per caller) so that load spreads and a
 * retry naturally goes to a different worker.
 */
export function rotation() {
  let next = 0;
  return (items) => {
    if (items.length === 0) return [];
    const start = next++ % items.length;
    return [...items.slice(start), ...items.slice(0, start)];
  };
}

// ---------------------------------------------------------------------------------------------
// Deterministic "model" pieces

/** Whitespace tokenizer: good enough for a demo, and what usage.prompt_tokens counts. */
export function tokenize(text) {
  return String(text).split(/\s+/).filter(Boolean);
}

export function sha256(data) {
  return createHash('sha256').update(data).digest();
}

// ---------------------------------------------------------------------------------------------
// HTTP

/** Sends a JSON response. */
export function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

/** Reads a JSON request body (max 1 MiB). Rejects with err.status = 400/413 on bad input. */
export function readJson(req, limit = 1 << 20) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null'));
      } catch {
        reject(Object.assign(new Error('request body is not valid JSON'), { status: 400 }));
      }
    });
    req.on('error', reject);
  });
}

/**
 * Starts the HTTP server on env.port (all interfaces: health checks may come from the head node).
 * `handler(req, res, url)` may return a promise; thrown errors become a 500. Exits 1 if the port
 * is taken, since a worker that cannot serve its health endpoint is useless to the supervisor.
 */
export function serveHttp(env, handler) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    Promise.resolve()
      .then(() => handler(req, res, url))
      .catch((err) => {
        if (!res.headersSent) sendJson(res, err.status ?? 500, { error: { message: err.message, type: 'server_error' } });
        else res.destroy();
      });
  });
  server.keepAliveTimeout = 2000;
  server.on('error', (err) => die(`HTTP server on port ${env.port}: ${err.message}`));
  server.listen(env.port, () => log('http listening', { port: server.address().port }));
  return server;
}

// ---------------------------------------------------------------------------------------------
// NATS request/reply

/**
 * Serves a NATS subject: each message's JSON body goes to `handler`, whose result (or
 * {error:{message,code}} if it throws) is the JSON reply. Messages are handled concurrently (a
 * decode waits on a prefill) and tracked in `inflight` so shutdown can wait for them.
 */
export function serveSubject(ctx, subject, queue, handler) {
  const sub = ctx.nc.subscribe(subject, queue ? { queue } : {});
  ctx.subs.push(sub);
  (async () => {
    for await (const m of sub) {
      const p = (async () => {
        let reply;
        try {
          reply = await handler(jc.decode(m.data), m.subject);
        } catch (err) {
          reply = { error: { message: err?.message ?? String(err), code: err?.code ?? 'internal' } };
          log('request failed', { subject: m.subject, error: reply.error });
        }
        try {
          m.respond(jc.encode(reply));
        } catch (err) {
          log('could not send reply', { subject: m.subject, error: err?.message }); // connection closing
        }
      })();
      ctx.inflight.add(p);
      p.finally(() => ctx.inflight.delete(p));
    }
  })().catch((err) => log('subscription ended with error', { subject, error: err?.message }));
  log('subscribed', { subject, queue: queue ?? null });
  return sub;
}

/** An Error carrying a machine-readable code (sent back in {error:{message, code}}). */
export function codedError(message, code) {
  return Object.assign(new Error(message), { code });
}

/**
 * NATS request with a JSON body; throws on transport failure (timeout, no responders) and turns
 * an {error} reply into a thrown codedError, so callers only see successful results.
 */
export async function requestJson(nc, subject, body, timeout) {
  let m;
  try {
    m = await nc.request(subject, jc.encode(body), { timeout });
  } catch (err) {
    // nats.js reports these with terse codes ("503", "TIMEOUT"): say what they mean.
    if (err?.code === '503') throw codedError(`no responders on ${subject} (worker gone?)`, 'no_responders');
    if (err?.code === 'TIMEOUT') throw codedError(`no reply on ${subject} within ${timeout}ms`, 'timeout');
    throw err;
  }
  const reply = jc.decode(m.data);
  if (reply && reply.error) throw Object.assign(codedError(reply.error.message, reply.error.code), { remote: true });
  return reply;
}

// ---------------------------------------------------------------------------------------------
// Worker lifecycle

/**
 * The life of every demo worker, in order:
 *   1. read the environment, log it, start HTTP (GET /health answers 503 until ready);
 *   2. connect NATS and etcd (exit 1 if either is unreachable within 10s);
 *   3. `setup(ctx)`: subscribe to its subjects (flushed, so the server knows them);
 *   4. register in etcd (only now can peers discover it, so they never find a worker that cannot
 *      serve yet); health turns 200 once `healthy(ctx)` agrees.
 * On SIGTERM: deregister first (no new work is routed here), stop taking messages, finish what is
 * in flight, drain NATS, exit 0.
 *
 * opts: { role, defaultPort, subject(env) -> this worker's own NATS subject (optional), setup(ctx),
 *         route(req, res, url, ctx) for non-health HTTP paths, healthy(ctx) -> {ok, ...details},
 *         beforeDrain(ctx) for role-specific shutdown }
 */
export async function runWorker(opts) {
  const env = readEnv(opts.role, opts.defaultPort);
  const started = Date.now();
  const ctx = {
    env,
    subject: opts.subject ? opts.subject(env) : null, // this worker's own NATS subject, registered in etcd
    nc: null,
    natsUp: false,
    etcd: null,
    reg: null,
    ready: false,
    subs: [],
    inflight: new Set(),
    server: null,
  };
  logStartup(env);

  // Installed first, so a SIGTERM at any point (even while connecting) stops cleanly.
  const isStopping = onShutdown(async () => {
    ctx.ready = false;
    await ctx.reg?.close();
    if (ctx.reg) log('deregistered from etcd', { key: ctx.reg.key });
    await Promise.allSettled(ctx.subs.map((s) => s.drain()));
    if (opts.beforeDrain) await opts.beforeDrain(ctx);
    await Promise.allSettled([...ctx.inflight]);
    if (ctx.nc && !ctx.nc.isClosed()) await ctx.nc.drain();
    if (ctx.server.listening) ctx.server.close();
    ctx.server.closeAllConnections();
    ctx.etcd?.close();
  });

  ctx.server = serveHttp(env, async (req, res, url) => {
    if (url.pathname === '/health' && (req.method === 'GET' || req.method === 'HEAD')) {
      const base = {
        worker: env.worker,
        role: env.role,
        cluster: env.cluster,
        node: env.node,
        pid: process.pid,
        gpus: env.gpus,
        uptime_s: Math.round((Date.now() - started) / 1000),
      };
      let problem = null;
      if (isStopping()) problem = 'stopping';
      else if (!ctx.ready) problem = 'connecting to NATS and etcd';
      else if (!ctx.natsUp) problem = 'NATS disconnected';
      else if (!ctx.reg.registered) problem = 'not registered in etcd (lease lost)';
      let extra = {};
      if (!problem && opts.healthy) {
        try {
          const { ok, reason, ...details } = await opts.healthy(ctx);
          extra = details;
          if (!ok) problem = reason ?? 'not healthy';
        } catch (err) {
          problem = `health check failed: ${err.message}`; // e.g. etcd unreachable
        }
      }
      return sendJson(res, problem ? 503 : 200, problem ? { status: 'unavailable', reason: problem, ...base, ...extra } : { status: 'ok', ...base, ...extra });
    }
    if (opts.route) return opts.route(req, res, url, ctx);
    sendJson(res, 404, { error: { message: `no route ${req.method} ${url.pathname}`, type: 'not_found' } });
  });

  const [nc, etcd] = await Promise.all([connectNats(env), connectEtcd(env)]);
  if (isStopping()) return; // SIGTERM arrived while connecting; the shutdown handler exits
  ctx.nc = nc;
  ctx.natsUp = true;
  ctx.etcd = etcd;
  log('connected', { nats: nc.getServer(), etcd: env.etcd });
  watchNats(ctx, isStopping);

  if (opts.setup) await opts.setup(ctx);
  await nc.flush(); // the server has our subscriptions before anyone can discover us

  const key = env.prefix(env.role) + token(env.worker);
  ctx.reg = new Registration(etcd, key, {
    worker: env.worker,
    role: env.role,
    node: env.node,
    subject: ctx.subject,
    pid: process.pid,
    gpus: env.gpus,
    port: env.port,
    group: env.group,
  });
  try {
    await ctx.reg.start();
  } catch (err) {
    die(`cannot register ${key} in etcd: ${err.message}`);
  }
  ctx.ready = true;
  log('ready');
  return ctx;
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/**
 * Installs SIGTERM/SIGINT handlers that run `stop()` (deregister, drain) and exit 0. A hard timer
 * guarantees the process is gone within ~2s even if etcd or NATS hang, well inside dynsup's grace.
 */
export function onShutdown(stop) {
  let stopping = false;
  const handler = (sig) => {
    if (stopping) return;
    stopping = true;
    log(`received ${sig}, shutting down`);
    setTimeout(() => {
      log('shutdown took too long, exiting anyway');
      process.exit(0);
    }, 1800).unref();
    Promise.resolve()
      .then(stop)
      .catch((err) => log('error during shutdown', { error: err?.message }))
      .finally(() => {
        log('stopped');
        process.exit(0);
      });
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
  return () => stopping;
}
