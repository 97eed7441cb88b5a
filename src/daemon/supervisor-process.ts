/**
 * The supervisor process (`dynsup up` in the foreground, or the child of `up -d`): the lock, the event log,
 * the Supervisor, and around it what makes it operable: the state file, etcd state and leader key, the NATS
 * control service, /metrics, the local control socket, signals. The CLI only parses arguments and prints.
 */
import { open } from 'node:fs/promises';
import type { Server } from 'node:http';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { ClusterConfig } from '../config/types.js';
import { NonceLog } from '../api/control-auth.js';
import { loadOrCreateCredentials } from '../controlplane/credentials.js';
import { EtcdState } from '../api/etcd-state.js';
import { renderMetrics, serveMetrics } from '../api/metrics.js';
import { authorizeControl, CONTROL_SECRET_HEADER } from '../api/http-auth.js';
import { NatsControl } from '../api/nats-control.js';
import { acquireLock, releaseLock, runtimePaths, writeState, type LockInfo } from '../api/runtime-files.js';
import { serveControl, type ControlRequest } from '../api/socket.js';
import { tailLogs } from '../api/tail.js';
import { createEventLogger, makeRedactor, type EventLogger } from '../logs/events.js';
import { BatchedOutput } from '../logs/batched-output.js';
import { TerminalMux } from '../logs/terminal.js';
import type { AddressCandidate } from '../slurm/allocation.js';
import { forgetAllocation, saveAllocation } from '../slurm/saved.js';
import { natsUrl } from '../controlplane/urls.js';
import { ensureEtcdAuth, etcdAccess } from '../controlplane/etcd-auth.js';
import { ensureEtcdTls } from '../controlplane/etcd-tls.js';
import { Supervisor } from '../supervise/supervisor.js';
import { allNodes, createNodeAgent } from '../transport/factory.js';
import { WebUi } from '../ui/server.js';
import { Timeline } from '../ui/timeline.js';
import { DynsupError, EXIT_RUNTIME, errorMessage } from '../util/errors.js';

/**
 * Stop whatever agents of this cluster still run (a supervisor that died, within the lease): each stops its
 * workers and removes its runtime files. No agent is started for this. Returns the nodes not reached.
 */
export async function cleanupLeftovers(cluster: ClusterConfig, logger?: EventLogger): Promise<string[]> {
  const unreachable: string[] = [];
  await Promise.all(
    allNodes(cluster).map(async (n) => {
      const a = createNodeAgent(cluster, n);
      try {
        const signal = AbortSignal.timeout(15_000);
        // A live agent stops its workers and removes its run dir; without one, the dir is all that is left.
        if (await a.connectExisting(signal)) await a.shutdown(1000, 5000);
        else await a.removeRunDir(signal);
      } catch (err) {
        unreachable.push(n.name);
        logger?.warn(`cleanup on ${n.name}: ${errorMessage(err)}`);
      } finally {
        await a.close().catch(() => undefined);
      }
    }),
  );
  return unreachable;
}

export async function runSupervisor(cluster: ClusterConfig, opts: { terminal: boolean; head?: AddressCandidate | undefined }): Promise<number> {
  const paths = runtimePaths(cluster.stateDir);
  const { stale } = await acquireLock(paths, cluster.file);
  const creds = await loadOrCreateCredentials(cluster.stateDir, { etcdAuth: cluster.etcd.enabled && cluster.etcd.auth });
  // Before the control plane starts: etcd's certificate must be there, and workers get the CA with their spec.
  const etcdTls = cluster.etcd.enabled && cluster.etcd.tls ? await ensureEtcdTls(cluster) : undefined;
  const redact = makeRedactor([...cluster.secrets, creds.natsPassword, creds.controlKey, creds.etcdRootPassword ?? '', creds.etcdWorkerPassword ?? '']);
  // Every way a signed control request arrives checks its nonce against this one log (no replay across them).
  const controlNonces = new NonceLog();
  // The web view's events timeline: what earlier supervisors of this state dir logged, then every event.
  const timeline = new Timeline();
  if (cluster.ui.enabled) timeline.write(await readTail(join(cluster.stateDir, 'logs', 'dynsup.log'), 256 << 10));
  const logger = createEventLogger({ stateDir: cluster.stateDir, redact, ...(cluster.ui.enabled ? { tap: (s: string) => timeline.write(s) } : {}) });
  // A previous supervisor that died left its agents running (for the lease): the bring-up adopts their workers.
  if (stale) logger.warn(`a previous supervisor (pid ${stale.pid}) died without stopping; adopting whatever its node agents still run`);
  // status/logs/down find the allocation's nodes here (the file has none of its own in Slurm mode).
  if (cluster.allocation) {
    await saveAllocation(cluster);
    const a = cluster.allocation;
    logger.info(
      `Slurm job ${a.jobId}: ${a.nodes.length} node(s) ${a.nodes.join(', ')}; head ${a.nodes[0]} at ${cluster.headAddress}` +
        (opts.head ? ` (${opts.head.source})` : ' (head.address)'),
    );
  } else await forgetAllocation(cluster.stateDir);
  const lock: LockInfo = { pid: process.pid, host: hostname(), startedAt: Date.now(), file: cluster.file };
  const mux = opts.terminal
    ? new TerminalMux(
        new BatchedOutput(process.stdout),
        cluster.replicas.map((r) => r.name),
        redact,
      )
    : undefined;

  let dirty = false;
  let writing = false;
  const flushState = async () => {
    if (writing) return;
    writing = true;
    while (dirty) {
      dirty = false;
      await writeState(paths, { ...sup.status(), supervisor: lock, updatedAt: Date.now() }).catch(() => undefined);
    }
    writing = false;
  };
  // Cluster-wide state and control (etcd, NATS) come up with the control plane; until then, and when
  // the file turns either service off, the local socket and state file still work.
  let etcdState: EtcdState | undefined;
  let natsControl: NatsControl | undefined;
  let metricsServer: Server | undefined;
  let ui: WebUi | undefined;
  const sup = new Supervisor({
    cluster,
    logger,
    credentials: creds,
    etcdTls,
    agents: (node) => createNodeAgent(cluster, node, (level, msg) => logger[level](msg)),
    onControlPlaneStopping: () => closeClients(),
    onLine: (r, line, t, seq) => {
      mux?.line(r, line, t);
      natsControl?.publishLine(r, line, seq);
    },
    onChange: (s) => {
      dirty = true;
      void flushState();
      etcdState?.record(s);
      ui?.changed();
    },
    onControlPlaneReady: async () => {
      if (cluster.etcd.enabled) {
        // Before anything uses etcd: its users and roles (controlPlane.etcd.auth), or auth off.
        const ca = etcdTls ? Buffer.from(etcdTls.ca) : null;
        const done = await ensureEtcdAuth(cluster, creds, ca);
        if (done) logger.info(done);
        etcdState = new EtcdState(etcdAccess(cluster, creds, ca), cluster.name, (m) => logger.warn(m));
        await etcdState.acquireLeader();
        for (const s of [...sup.status().controlPlane, ...sup.status().replicas]) etcdState.record(s);
      }
      if (cluster.nats.enabled) {
        natsControl = await NatsControl.start(natsUrl(cluster), cluster.name, creds, (req) => handle(sup, req, shutdown), {
          seen: controlNonces,
          onRefused: (why) => logger.warn(`refused a control request over NATS: ${why}`),
        });
      }
      if (cluster.ui.enabled) {
        ui = new WebUi({
          cluster,
          sup,
          timeline,
          redact,
          control: (req) => handle(sup, req, shutdown),
          authorize: (req) => authorizeControl(req.headers[CONTROL_SECRET_HEADER], creds),
        });
      }
      if (cluster.metrics.enabled || ui) {
        const render = cluster.metrics.enabled ? () => renderMetrics(sup.status(), sup.logStats()) : null;
        const web = ui;
        metricsServer = await serveMetrics(cluster.headAddress, cluster.metrics.port, render, web && ((req, res) => web.handle(req, res)));
      }
    },
  });

  let shuttingDown: Promise<void> | undefined;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  const upWait = new AbortController();
  const shutdown = (why: string): Promise<void> => {
    upWait.abort();
    shuttingDown ??= (async () => {
      logger.info(`stopping cluster ${cluster.name} (${why})`);
      await sup.down();
      dirty = true;
      await flushState();
      // Bounded: NATS and etcd are stopped by now, or gone with the head's address; a client waiting for
      // them must not keep the supervisor alive after `down`.
      await closeClients();
      // Open pages hold streams: end them, or the server would wait for them.
      ui?.close();
      metricsServer?.close();
      metricsServer?.closeAllConnections();
      logger.info('all stopped');
      resolveDone();
    })();
    return shuttingDown;
  };

  // While NATS and etcd still run (the workers are stopped by then): the last states reach etcd and the
  // leader key is released, so the next `up` finds no stale claim. Bounded: they may be gone already (the
  // head's address lost), and a client waiting for them must not keep the supervisor alive after `down`.
  let clientsClosed: Promise<void> | undefined;
  const closeClients = (): Promise<void> =>
    (clientsClosed ??= Promise.all([bounded(natsControl?.close(), 2000), bounded(etcdState?.close({ release: true }), 2000)]).then(() => undefined));

  const server = await serveControl(paths.socket, async (req: ControlRequest) => handle(sup, req, shutdown));
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      if (process.stdout.isTTY) process.stderr.write(`\n${sig}: stopping gracefully (press Ctrl-C again to kill everything now)\n`);
      void shutdown(sig);
    } else {
      logger.warn('second signal: killing everything now');
      sup.killAll();
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);

  // Stay alive until `down`, even when every worker has stopped or failed (they can be restarted).
  const keepAlive = setInterval(() => undefined, 1 << 30);
  let code = 0;
  try {
    logger.info(`bringing up cluster ${cluster.name} from ${cluster.file} (state dir ${cluster.stateDir})`);
    await sup.up();
    // "is up" once the last replica is (ready, for groups with a health check), not when the last group was
    // started; a replica that fails first keeps it from being said (its failure is).
    void Promise.all(sup.replicas.map((r) => r.waitFor((x) => x.up || x.state === 'failed', upWait.signal))).then(
      () => {
        const n = sup.replicas.length;
        if (!shuttingDown && sup.replicas.every((r) => r.up))
          logger.info(`cluster ${cluster.name} is up: ${n} replica${n === 1 ? '' : 's'} (dynsup status ${cluster.file})`);
      },
      () => undefined,
    );
  } catch (err) {
    logger.error(errorMessage(err));
    code = err instanceof DynsupError ? err.exitCode : EXIT_RUNTIME;
    await shutdown('bring-up failed');
  }
  await done;
  clearInterval(keepAlive);
  server.close();
  await releaseLock(paths);
  logger.flush();
  return code;
}

async function handle(sup: Supervisor, req: ControlRequest, shutdown: (why: string) => Promise<void>): Promise<unknown> {
  switch (req.op) {
    case 'status':
      return sup.status();
    case 'restart': {
      if (req.rolling) return sup.rollingRestart(req.target);
      const rs = sup.select(req.target);
      await Promise.all(rs.map((r) => r.restart()));
      return rs.map((r) => r.name);
    }
    case 'stop': {
      const rs = sup.select(req.target);
      await Promise.all(rs.map((r) => r.stop('stopped by request')));
      return rs.map((r) => r.name);
    }
    case 'start': {
      const rs = sup.select(req.target);
      for (const r of rs) r.start();
      return rs.map((r) => r.name);
    }
    case 'scale':
      return sup.scale(req.group, req.count);
    case 'apply': {
      const r = await sup.apply(req.cluster, req.dryRun);
      return { lines: r.lines, applied: r.applied, groups: r.plan.groups };
    }
    case 'tail':
      return tailLogs(sup, req.target, req.lines);
    case 'down':
      // Answer first: the control connection (NATS) goes away with the cluster.
      setImmediate(() => void shutdown('dynsup down'));
      return 'stopping';
  }
}

async function bounded(p: Promise<unknown> | undefined, ms: number): Promise<void> {
  if (!p) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

/** The last `max` bytes of a file, from its first whole line; '' when there is none. */
async function readTail(file: string, max: number): Promise<string> {
  const fh = await open(file, 'r').catch(() => null);
  if (!fh) return '';
  try {
    const { size } = await fh.stat();
    const len = Math.min(size, max);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    const text = buf.toString('utf8');
    return len < size ? text.slice(text.indexOf('\n') + 1) : text;
  } finally {
    await fh.close();
  }
}
