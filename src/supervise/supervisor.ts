/**
 * The supervisor: control plane first, then nodes, then worker groups in dependency order; stop in reverse.
 * It owns Replica objects and Transports, but never starts a process itself.
 */
import { join } from 'node:path';
import type { ClusterConfig, NodeConfig, WorkerGroup } from '../config/types.js';
import { assertPortFree } from '../controlplane/ports.js';
import { etcdService, natsService, type ServiceSpec } from '../controlplane/services.js';
import type { EventLogger } from '../logs/events.js';
import { ReplicaLog, type LineListener } from '../logs/replica-log.js';
import { DynsupError, errorMessage } from '../util/errors.js';
import { specHash, type WorkerSpec } from '../agent/protocol.js';
import { CONTROL_PLANE_NODE, controlPlaneNode } from '../transport/factory.js';
import { sharedAbort, type NodeAgent } from '../transport/node-agent.js';
import type { Credentials } from '../controlplane/credentials.js';
import type { ReplicaLogStats } from '../logs/replica-log.js';
import type { ReplicaPlan } from '../config/types.js';
import { controlPlaneNodes, controlPlanePorts, place, portClashes } from '../config/placement.js';
import { buildLaunchSpec, expandPlaceholders, type WorkerAuth } from './launch-spec.js';
import { etcdWorkerAuth } from '../controlplane/etcd-auth.js';
import type { EtcdTlsMaterial } from '../controlplane/etcd-tls.js';
import { httpProbe } from './http-probe.js';
import { replicaGpuTelemetry } from './gpu-telemetry.js';
import { Replica, type HealthProbe, type ReplicaEvent, type ReplicaStatus, type Supervised } from './replica.js';
import { Gang } from './gang.js';
import { gangMembers, isGang, onDemandSpec, rankOfHost } from './gang-launch.js';
import type { LaunchRequest } from '../transport/node-agent.js';
import { describePlan, planApply, rollReplicas, type ApplyPlan, type RollingUnit } from './rollout.js';
import { exitText } from '../util/exit-text.js';

export type AgentFactory = (node: NodeConfig) => NodeAgent;

export interface SupervisorOptions {
  readonly cluster: ClusterConfig;
  readonly agents: AgentFactory;
  readonly logger: EventLogger;
  /** Worker lines (terminal, followers). */
  readonly onLine?: LineListener;
  /** Every state change (state file, etcd later). */
  readonly onChange?: (status: ReplicaStatus) => void;
  /** How long the control plane may take to become healthy. */
  readonly controlPlaneTimeoutMs?: number;
  /** Cluster credentials (NATS authorization; handed to workers only with nats.workerCredentials). */
  readonly credentials?: Credentials | undefined;
  /** controlPlane.etcd.tls: the CA etcd is checked against, and what workers get to reach it. */
  readonly etcdTls?: EtcdTlsMaterial | undefined;
  /** Runs once the control plane is healthy, before any node is contacted (leader election, control service). */
  readonly onControlPlaneReady?: () => Promise<void>;
  /** Runs once the workers are stopped, before NATS and etcd are (last state records, leader key release). */
  readonly onControlPlaneStopping?: () => Promise<void>;
}

export interface ClusterStatus {
  readonly cluster: string;
  readonly controlPlane: readonly ReplicaStatus[];
  readonly replicas: readonly ReplicaStatus[];
}

/** How long a replaced replica may take to be ready again before a rollout stops (engines load for minutes). */
const ROLLOUT_READY_TIMEOUT_MS = 20 * 60_000;
/** How long `down` waits for an unreachable node before leaving its workers to their lease. */
const DOWN_UNREACHABLE_MS = 5000;
/** The control plane restarts quickly, but a service that cannot start at all ends `failed`, with the reason. */
const CONTROL_PLANE_RESTART = {
  policy: 'always',
  initialDelayMs: 200,
  factor: 2,
  maxDelayMs: 2000,
  jitter: 0.1,
  maxRestarts: 10,
  windowMs: 60_000,
  resetAfterMs: 30_000,
} as const;

export class Supervisor {
  /** Options; `cluster` is replaced by `apply` (the file as now applied). */
  #o: SupervisorOptions;
  readonly #agents = new Map<string, NodeAgent>();
  readonly #services: { spec: ServiceSpec; replica: Replica }[] = [];
  readonly #replicas = new Map<string, Supervised>();
  readonly #logs: ReplicaLog[] = [];
  #stopping = false;
  readonly #stop = sharedAbort();

  constructor(options: SupervisorOptions) {
    this.#o = options;
  }

  /** The cluster as supervised now: the file of `up`, as changed since by `apply`. */
  get cluster(): ClusterConfig {
    return this.#o.cluster;
  }

  get replicas(): readonly Supervised[] {
    return [...this.#replicas.values()];
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  status(): ClusterStatus {
    return {
      cluster: this.cluster.name,
      controlPlane: this.#services.map((s) => s.replica.status()),
      replicas: this.replicas.map((r) => {
        const s = r.status();
        const gpu = replicaGpuTelemetry(s.name, s.gpus, this.#agents.get(s.node)?.gpus);
        return gpu ? { ...s, gpu } : s;
      }),
    };
  }

  /** Find replicas by replica name or group name. */
  select(target: string): Supervised[] {
    const one = this.#replicas.get(target) ?? this.#services.find((s) => s.spec.name === target)?.replica;
    if (one) return [one];
    const group = this.replicas.filter((r) => r.status().group === target);
    if (group.length) return group;
    throw new DynsupError('E_USAGE', `no replica or worker group named '${target}' (groups: ${this.cluster.groups.map((g) => g.name).join(', ')})`);
  }

  /** The agent of a node (tests, status). */
  agent(node: string): NodeAgent | undefined {
    return this.#agents.get(node);
  }

  /**
   * Bring the cluster up. Resolves once every group has been started (dependencies up first). Workers an
   * earlier supervisor left running under their agents (same spec) are adopted, not restarted.
   * Throws (after stopping what it started) if the control plane or a node cannot be brought up.
   */
  async up(): Promise<void> {
    const { cluster, logger } = this.#o;
    try {
      await this.#startControlPlane();
      await this.#o.onControlPlaneReady?.();
      const used = [...new Set(cluster.replicas.flatMap((r) => r.gangNodes ?? [r.node]))];
      const nodes = cluster.nodes.filter((n) => used.includes(n.name));
      // Every node is reached in parallel, and all of them must answer before any worker starts.
      const results = await Promise.allSettled(nodes.map((n) => this.#connect(n)));
      const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${nodes[i]!.name}: ${errorMessage(r.reason)}`] : []));
      if (failed.length) throw new DynsupError('E_NODE', `cannot reach ${failed.length} node(s):\n  ${failed.join('\n  ')}`);

      for (const plan of cluster.replicas) this.#createReplica(plan);
      // What an earlier supervisor ran that this file no longer has goes (a gang runs as its members).
      const wanted = new Set(this.replicas.flatMap((r) => r.logNames));
      for (const a of this.#agents.values()) {
        for (const w of a.adoptable) {
          if (a.node === CONTROL_PLANE_NODE || wanted.has(w.name)) continue;
          logger.info({ replica: w.name }, `${w.name} on ${a.node} is not in ${cluster.file} any more: stopping it`);
          a.forgetUnwanted(w.name);
        }
      }
      for (const group of cluster.groups) {
        await this.#waitForDependencies(group);
        if (this.#stopping) return;
        for (const r of this.select(group.name)) r.start();
        logger.info({ group: group.name }, `started group ${group.name} (${group.replicas} replica${group.replicas === 1 ? '' : 's'})`);
      }
    } catch (err) {
      await this.down().catch(() => undefined);
      throw err;
    }
  }

  async #connect(n: NodeConfig): Promise<NodeAgent> {
    const existing = this.#agents.get(n.name);
    if (existing) return existing;
    const a = this.#o.agents(n);
    this.#agents.set(n.name, a);
    a.onLaunch((req) => this.#launchRequest(req));
    await a.connect(this.#stop.signal);
    if (a.adoptable.some((w) => w.state === 'running')) {
      this.#o.logger.info(
        { node: n.name },
        `node ${n.name}: agent pid ${a.agentPid} still runs ${a.adoptable
          .filter((w) => w.state === 'running')
          .map((w) => w.name)
          .join(', ')}: adopting`,
      );
    }
    return a;
  }

  /**
   * Stop workers in reverse dependency order, then the control plane; shut the agents down. A node that
   * cannot be reached gets a bounded wait: its agent stops its workers by itself within the lease.
   */
  down(): Promise<{ unreachable: string[] }> {
    // Once: a failed bring-up stops what it started, and the shutdown that follows must not do it again.
    this.#down ??= this.#doDown();
    return this.#down;
  }

  #down: Promise<{ unreachable: string[] }> | undefined;

  async #doDown(): Promise<{ unreachable: string[] }> {
    this.#stopping = true;
    for (const a of this.#agents.values()) a.quiesce();
    for (const r of [...this.replicas, ...this.#services.map((s) => s.replica)]) r.quiesce();
    this.#stop.abort(new DynsupError('E_NOT_RUNNING', 'supervisor is stopping'));
    for (const group of [...this.cluster.groups].reverse()) {
      const rs = this.replicas.filter((r) => r.status().group === group.name);
      await Promise.all(rs.map((r) => r.stop('cluster stopping')));
    }
    await this.#o.onControlPlaneStopping?.().catch(() => undefined);
    await Promise.all(
      [...this.#services].reverse().map(async (s) => {
        await s.replica.stop('cluster stopping');
        await s.spec.close();
      }),
    );
    const unreachable: string[] = [];
    await Promise.all(
      [...this.#agents.values()].map(async (a) => {
        const ok = await a.shutdown(1000, DOWN_UNREACHABLE_MS).catch(() => false);
        if (!ok) unreachable.push(a.node);
        await a.close().catch(() => undefined);
      }),
    );
    if (unreachable.length) {
      this.#o.logger.warn(
        `could not reach node(s) ${unreachable.join(', ')}: their workers stop by themselves within the lease (${this.cluster.leaseMs / 1000}s)`,
      );
    }
    await Promise.all(this.#logs.map((l) => l.close()));
    return { unreachable };
  }

  /** SIGKILL every worker now, on every node (a second Ctrl-C): the agents kill each replica's group or cgroup. */
  killAll(): void {
    for (const r of this.replicas) r.kill();
  }

  /** Leave without stopping anything (tests: a supervisor that dies); the agents keep workers for the lease. */
  async abandon(): Promise<void> {
    this.#stopping = true;
    this.#stop.abort();
    await Promise.all([...this.#agents.values()].map((a) => a.close().catch(() => undefined)));
  }

  async #startControlPlane(): Promise<void> {
    const { cluster, logger } = this.#o;
    const creds = this.#o.credentials ?? { natsUser: 'dynsup', natsPassword: 'unset', controlKey: '' };
    const specs = [cluster.nats.enabled ? natsService(cluster, creds) : null, cluster.etcd.enabled ? etcdService(cluster, this.#o.etcdTls?.ca) : null].filter(
      (s): s is ServiceSpec => s !== null,
    );
    if (!specs.length) return;
    const agent = await this.#connect(controlPlaneNode(cluster));
    const workerSpec = (spec: ServiceSpec): WorkerSpec => ({
      argv: spec.argv,
      env: {},
      unsetEnv: [],
      stopSignal: 'SIGTERM',
      graceMs: 10_000,
      restart: CONTROL_PLANE_RESTART,
    });
    // Check every port first (except a service still running from an earlier supervisor, adopted below):
    // one clear error naming the port beats a service dying in a restart loop.
    const running = (spec: ServiceSpec): boolean =>
      agent.adoptable.some((w) => w.name === spec.name && w.state === 'running' && w.specHash === specHash(workerSpec(spec)));
    for (const s of specs) if (!running(s)) for (const p of s.ports) await assertPortFree(p.host, p.port, p.what);
    for (const spec of specs) {
      if (!running(spec)) await spec.prepare();
      const log = new ReplicaLog(spec.name, join(cluster.stateDir, 'logs', `${spec.name}.log`));
      this.#logs.push(log);
      const replica = new Replica({
        name: spec.name,
        group: 'controlPlane',
        node: 'head',
        gpus: [],
        agent,
        spec: () => workerSpec(spec),
        health: { probe: (sig) => spec.probe(sig), intervalMs: 1000, timeoutMs: 3000, startPeriodMs: 0, failureThreshold: 5 },
        log,
        unreachableMs: () => DOWN_UNREACHABLE_MS,
        onChange: this.#o.onChange,
        onEvent: (name, ev) => this.#logEvent(name, ev),
      });
      this.#services.push({ spec, replica });
      replica.start();
    }
    const timeout = this.#o.controlPlaneTimeoutMs ?? 30_000;
    const expire = new AbortController();
    const timer = setTimeout(() => expire.abort(), timeout);
    this.#stop.signal.addEventListener('abort', () => expire.abort(), { once: true });
    const deadline = expire.signal;
    try {
      await Promise.all(this.#services.map((s) => s.replica.waitFor((r) => r.state === 'ready' || r.state === 'failed', deadline)));
      if (this.#services.some((s) => s.replica.state === 'failed')) throw new Error('failed');
    } catch {
      clearTimeout(timer);
      const bad = this.#services
        .filter((s) => s.replica.state !== 'ready')
        .map(
          (s) =>
            `${s.spec.name} (${s.replica.state}${s.replica.status().message ? `: ${s.replica.status().message}` : ''}; see ${join(cluster.stateDir, 'logs', `${s.spec.name}.log`)})`,
        );
      throw new DynsupError('E_CONTROL_PLANE', `control plane not healthy after ${timeout / 1000}s: ${bad.join(', ')}`);
    }
    clearTimeout(timer);
    logger.info(`control plane ready: nats://${cluster.headAddress}:${cluster.nats.port}, http://${cluster.headAddress}:${cluster.etcd.port}`);
  }

  #createReplica(plan: ReplicaPlan): Supervised {
    const { cluster } = this.#o;
    const group = cluster.groups.find((g) => g.name === plan.group)!;
    const { spec, health } = this.#launch(plan);
    // A stop asked for while the node is unreachable: past the lease and the grace its agent has stopped it.
    const unreachableMs = (): number => (this.#stopping ? DOWN_UNREACHABLE_MS : this.#o.cluster.leaseMs + group.stop.graceMs + 5000);
    this.#setFatal(plan.name, group);
    let replica: Supervised;
    if (isGang(group)) {
      const gang = new Gang({
        name: plan.name,
        group: group.name,
        gpus: plan.gpuIds,
        restart: group.restart,
        members: gangMembers(cluster, group, plan, this.#workerAuth()).map((m) => ({
          rank: m.rank,
          spec: m.spec,
          options: {
            name: m.name,
            group: group.name,
            node: m.node,
            gpus: plan.gpuIds,
            agent: this.#agents.get(m.node)!,
            log: this.#newLog(m.name),
            // The engine's HTTP endpoint is the leader's.
            health: m.rank === 0 ? health : undefined,
            unreachableMs,
          },
        })),
        onChange: this.#o.onChange,
        onEvent: (name, ev) => this.#logEvent(name, ev),
        adoptSpec: (rank, command) => this.#onDemandSpec(plan.name, rank, command),
      });
      for (const m of gang.members) this.#watchFatalLines(plan.name, m);
      replica = gang;
    } else {
      const r = new Replica({
        name: plan.name,
        group: group.name,
        node: plan.node,
        gpus: plan.gpuIds,
        agent: this.#agents.get(plan.node)!,
        spec,
        health,
        log: this.#newLog(plan.name),
        unreachableMs,
        onChange: this.#o.onChange,
        onEvent: (name, ev) => this.#logEvent(name, ev),
      });
      this.#watchFatalLines(plan.name, r);
      replica = r;
    }
    this.#replicas.set(plan.name, replica);
    this.#plans.set(plan.name, plan);
    return replica;
  }

  #newLog(name: string): ReplicaLog {
    const { cluster } = this.#o;
    const log = new ReplicaLog(name, join(cluster.stateDir, 'logs', `${name}.log`), {
      maxBytes: cluster.logs.maxBytes,
      keep: cluster.logs.keep,
      onError: (replica, message) => this.#o.logger.warn({ replica }, `${replica}: ${message}`),
    });
    if (this.#o.onLine) log.onLine(this.#o.onLine);
    this.#logs.push(log);
    return log;
  }

  /** restart.onLog of the replica `owner` (as now applied): a matching line replaces the process (a gang member's: the whole gang). */
  #watchFatalLines(owner: string, replica: Replica): void {
    this.replicaLog(replica.name)!.onLine((_r, line) => {
      const fatal = this.#fatal.get(owner);
      if (!fatal?.length || (replica.state !== 'running' && replica.state !== 'ready')) return;
      const text = line.toString('utf8');
      const hit = fatal.find((f) => f.re.test(text));
      if (hit) replica.fatalLog(hit.source, text);
    });
  }

  /** What workers are given to reach NATS (nats.workerCredentials) and etcd (etcd.auth). */
  #workerAuth(): WorkerAuth {
    const creds = this.#o.credentials;
    const nats = this.#o.cluster.nats.workerCredentials && creds ? { user: creds.natsUser, password: creds.natsPassword } : undefined;
    return { nats, etcd: etcdWorkerAuth(this.#o.cluster, creds) ?? undefined, etcdTls: this.#o.cluster.etcd.tls ? this.#o.etcdTls : undefined };
  }

  /** An mpirun leader asks for its daemon on another node of its gang (relayed by the leader's agent). */
  async #launchRequest(req: LaunchRequest): Promise<string | undefined> {
    const gang = this.#replicas.get(req.replica);
    const plan = this.#plans.get(req.replica);
    if (!(gang instanceof Gang) || !plan) return `no gang replica named '${req.replica}'`;
    if (plan.node !== req.from) return `${req.replica}'s leader runs on ${plan.node}, not ${req.from}`;
    const rank = rankOfHost(this.cluster, plan, req.host);
    if (rank < 1) return `host '${req.host}' is not one of ${req.replica}'s other nodes (${(plan.gangNodes ?? []).slice(1).join(', ')})`;
    try {
      await gang.launch(rank, this.#onDemandSpec(req.replica, rank, req.command));
      return undefined;
    } catch (err) {
      return errorMessage(err);
    }
  }

  /** The spec of gang `replica`'s member of `rank` running mpirun's `command`: one function for launching and for adopting it (same spec, same hash). */
  #onDemandSpec(replica: string, rank: number, command: string): WorkerSpec {
    const plan = this.#plans.get(replica)!;
    const group = this.cluster.groups.find((g) => g.name === plan.group)!;
    return onDemandSpec(this.cluster, group, plan, rank, command, this.#workerAuth());
  }

  readonly #plans = new Map<string, ReplicaPlan>();
  readonly #fatal = new Map<string, { source: string; re: RegExp }[]>();

  #setFatal(name: string, group: WorkerGroup): void {
    this.#fatal.set(
      name,
      (group.restart.onLog ?? []).map((p) => ({ source: p, re: new RegExp(p) })),
    );
  }

  /** What a replica runs and how its health is checked, by the cluster as applied now. */
  #launch(plan: ReplicaPlan): { spec: () => WorkerSpec; health: HealthProbe | undefined } {
    const cluster = this.#o.cluster;
    const group = cluster.groups.find((g) => g.name === plan.group)!;
    const node = cluster.nodes.find((n) => n.name === plan.node)!;
    const auth = this.#workerAuth();
    const h = group.health;
    return {
      spec: () => buildLaunchSpec(cluster, group, plan, node, auth),
      health: h && { ...h, probe: httpProbe(expandPlaceholders(h.url, plan, node.address)) },
    };
  }

  #busy: string | undefined;

  /** One apply or rolling restart at a time. */
  async #exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.#busy) throw new DynsupError('E_USAGE', `${this.#busy} is in progress; try again when it is done`);
    if (this.#stopping) throw new DynsupError('E_NOT_RUNNING', 'the cluster is stopping');
    this.#busy = what;
    try {
      return await fn();
    } finally {
      this.#busy = undefined;
    }
  }

  /**
   * `dynsup apply`: plan `next` against what runs (rollout.ts) and, unless `dryRun`, carry it out: removed
   * replicas stopped, changed groups replaced rolling, new replicas started; kept replicas untouched. A plan
   * that cannot be done (placement, ports, control plane changes) changes nothing (E_USAGE, exit 2).
   */
  async apply(next: ClusterConfig, dryRun: boolean): Promise<{ plan: ApplyPlan; lines: string[]; applied: boolean }> {
    return this.#exclusive('an apply', async () => {
      const cur = this.#o.cluster;
      // What only the supervisor knows stays its own: where its state is, the redaction list.
      const target: ClusterConfig = {
        ...next,
        file: cur.file,
        stateDir: cur.stateDir,
        secrets: [...new Set([...cur.secrets, ...next.secrets])],
        allocation: cur.allocation,
      };
      const runningSpec = (name: string): string | undefined => {
        const r = this.#replicas.get(name);
        return r instanceof Replica ? specHash(r.launchSpec()) : undefined;
      };
      const planned = planApply(cur, [...this.#plans.values()], target, runningSpec);
      if (!planned.ok) throw new DynsupError('E_USAGE', `cannot apply ${next.file}: ${planned.errors.join('; ')}`);
      const { plan } = planned;
      const lines = describePlan(plan);
      if (dryRun) return { plan, lines, applied: false };
      const log = this.#o.logger;
      log.info(`applying ${next.file}: ${lines.join(' | ')}`);
      this.#o = { ...this.#o, cluster: { ...target, replicas: plan.replicas } };
      // Removed first (their GPUs and ports may go to new replicas), then group by group in start order.
      const stop = plan.groups.flatMap((g) => g.stop);
      await Promise.all(stop.map((n) => this.#replicas.get(n)?.remove()));
      for (const n of stop) {
        this.#replicas.delete(n);
        this.#plans.delete(n);
        this.#fatal.delete(n);
      }
      for (const group of target.groups) {
        const g = plan.groups.find((x) => x.group === group.name)!;
        for (const name of [...g.keep, ...g.replace])
          this.#plans.set(
            name,
            plan.replicas.find((r) => r.name === name)!,
          );
        if (g.start.length) {
          if (g.change === 'added' || g.recreate) await this.#waitForDependencies(group);
          for (const p of g.start) for (const n of p.gangNodes ?? [p.node]) await this.#connect(target.nodes.find((x) => x.name === n)!);
          for (const p of g.start) this.#createReplica(p).start();
          log.info({ group: group.name }, `${group.name}: started ${g.start.map((p) => p.name).join(', ')}`);
        }
        if (g.replace.length) {
          const units = g.replace.map((name) => this.#unit(this.#replicas.get(name)!, () => this.#replace(name, group)));
          const others = this.select(group.name)
            .filter((r) => !g.replace.includes(r.name))
            .map((r) => this.#unit(r, async () => undefined));
          await rollReplicas(units, others, g.maxUnavailable, {
            readyTimeoutMs: ROLLOUT_READY_TIMEOUT_MS,
            signal: this.#stop.signal,
            onReplaced: (name) => log.info({ replica: name, group: group.name }, `${name} replaced and ${this.#replicas.get(name)?.state}`),
          }).catch((err: unknown) => {
            throw new DynsupError('E_LAUNCH', `apply of ${next.file}: group ${group.name}: ${errorMessage(err)}`);
          });
        }
      }
      log.info(`applied ${next.file}`);
      return { plan, lines, applied: true };
    });
  }

  async #replace(name: string, group: WorkerGroup): Promise<void> {
    const r = this.#replicas.get(name)!;
    if (!(r instanceof Replica)) {
      // A gang is replaced whole: stopped (on every node), then a gang of the new spec started in its
      // place, its members under the same names (as a replica's process is replaced under its name).
      // Not removed first: the agents' `forget` of a member ran on while the new member's `run` arrived,
      // and dropped the new process.
      await r.stop('replaced (dynsup apply)');
      this.#createReplica(this.#plans.get(name)!).start();
      return;
    }
    const { spec, health } = this.#launch(this.#plans.get(name)!);
    this.#setFatal(name, group);
    await r.replace(spec, health, 'replaced (dynsup apply)');
  }

  /** A replica for rollReplicas, by name: a gang is replaced by a new object under the same name. */
  #unit(r: Supervised, replace: () => Promise<void>): RollingUnit {
    const current = (): Supervised => this.#replicas.get(r.name) ?? r;
    return {
      name: r.name,
      get up() {
        return current().up;
      },
      get failed() {
        return current().state === 'failed';
      },
      replace,
    };
  }

  /** `dynsup restart FILE GROUP --rolling`: every replica of the group replaced as by `apply`, same spec. */
  async rollingRestart(groupName: string): Promise<string[]> {
    return this.#exclusive('a rolling restart', async () => {
      const group = this.#o.cluster.groups.find((g) => g.name === groupName);
      if (!group)
        throw new DynsupError(
          'E_USAGE',
          `--rolling restarts a worker group; no group named '${groupName}' (groups: ${this.#o.cluster.groups.map((g) => g.name).join(', ')})`,
        );
      const rs = this.select(groupName);
      this.#o.logger.info(
        { group: groupName },
        `rolling restart of ${groupName}: ${rs.map((r) => r.name).join(', ')}, ${group.rollout?.maxUnavailable ?? 1} at a time`,
      );
      await rollReplicas(
        rs.map((r) => this.#unit(r, () => r.restart())),
        [],
        group.rollout?.maxUnavailable ?? 1,
        { readyTimeoutMs: ROLLOUT_READY_TIMEOUT_MS, signal: this.#stop.signal },
      ).catch((err: unknown) => {
        throw new DynsupError('E_LAUNCH', `rolling restart of ${groupName}: ${errorMessage(err)}`);
      });
      return rs.map((r) => r.name);
    });
  }

  /** The log of a replica (or control plane service) by name: the latest one if it was scaled away and back. */
  replicaLog(name: string): ReplicaLog | undefined {
    for (let i = this.#logs.length - 1; i >= 0; i--) if (this.#logs[i]!.replica === name) return this.#logs[i];
    return undefined;
  }

  /** Log counters per replica (lines, bytes, write errors), for /metrics. */
  logStats(): Map<string, ReplicaLogStats> {
    return new Map(this.#logs.map((l) => [l.replica, l.stats]));
  }

  /**
   * Change a group's replica count. New replicas are placed by the same rules (first candidate node with
   * enough free GPUs, lowest free indices); if they do not all fit, nothing changes (E_USAGE, exit 2).
   * Removing stops the highest-numbered replicas.
   */
  async scale(groupName: string, count: number): Promise<{ added: string[]; removed: string[] }> {
    const { cluster } = this.#o;
    const group = cluster.groups.find((g) => g.name === groupName);
    if (!group) throw new DynsupError('E_USAGE', `no worker group named '${groupName}' (groups: ${cluster.groups.map((g) => g.name).join(', ')})`);
    if (!Number.isInteger(count) || count < 0 || count > 1024) throw new DynsupError('E_USAGE', `replica count must be a whole number 0-1024, got ${count}`);
    const current = [...this.#plans.values()].filter((p) => p.group === groupName).sort((a, b) => a.index - b.index);
    if (count < current.length) {
      const gone = current.slice(count);
      await Promise.all(gone.map((p) => this.#replicas.get(p.name)!.remove()));
      for (const p of gone) {
        this.#replicas.delete(p.name);
        this.#plans.delete(p.name);
      }
      return { added: [], removed: gone.map((p) => p.name) };
    }
    // The one placement (config/placement.ts), next to the running replicas, and validate's port check.
    const existing = [...this.#plans.values()];
    const nextIndex = current.length ? current[current.length - 1]!.index + 1 : 0;
    const placed = place(cluster.nodes, [{ ...group, replicas: count - current.length, firstIndex: nextIndex }], { existing });
    if (!placed.ok) throw new DynsupError('E_USAGE', `cannot scale ${groupName} to ${count}: ${placed.errors.map((e) => e.message).join('; ')}`);
    const plans = placed.replicas;
    const clashes = portClashes(
      [...existing, ...plans],
      controlPlaneNodes(cluster.nodes, !!cluster.allocation),
      new Map(controlPlanePorts(cluster).map(([path, port]) => [port, path.join('.')])),
    );
    if (clashes.length) throw new DynsupError('E_USAGE', `cannot scale ${groupName} to ${count}: ${clashes.map((c) => c.message).join('; ')}`);
    for (const p of plans) for (const n of p.gangNodes ?? [p.node]) await this.#connect(cluster.nodes.find((x) => x.name === n)!);
    for (const p of plans) this.#createReplica(p).start();
    return { added: plans.map((p) => p.name), removed: [] };
  }

  async #waitForDependencies(group: WorkerGroup): Promise<void> {
    if (!group.dependsOn.length) return;
    const deps = group.dependsOn.flatMap((d) => this.select(d));
    const pending = deps.filter((r) => !r.up);
    if (!pending.length) return;
    this.#o.logger.info({ group: group.name }, `${group.name} waits for ${[...new Set(pending.map((r) => r.status().group))].join(', ')}`);
    await Promise.all(deps.map((r) => r.waitFor((x) => x.up, this.#stop.signal))).catch(() => undefined);
  }

  #logEvent(name: string, ev: ReplicaEvent): void {
    const log = this.#o.logger;
    // `kind` lets readers of the event log (the web view's timeline) tell events apart without parsing messages.
    const k = { replica: name, kind: ev.kind };
    switch (ev.kind) {
      case 'started':
        return log.info({ ...k, pid: ev.pid, at: ev.at }, `${name} started (pid ${ev.pid})`);
      case 'adopted':
        return log.info({ ...k, pid: ev.pid }, `${name} adopted (pid ${ev.pid}, ${ev.restarts} restarts so far): still running from before`);
      case 'exited': {
        const how = exitText(ev.exit);
        // A warning only for an exit nobody asked for that is no clean one: a stop, a requested restart, a
        // cluster going down or a worker ending with code 0 is news, not trouble.
        const asked = 'asked' in ev ? ev.asked : undefined;
        const expected = this.#stopping || asked !== undefined || (ev.exit.code === 0 && !ev.exit.signal);
        return log[expected ? 'info' : 'warn'](
          { ...k, code: ev.exit.code, signal: ev.exit.signal, uptimeMs: ev.uptimeMs, at: ev.at },
          `${name} ${how}${asked ? ` (${asked})` : ''}`,
        );
      }
      case 'launch-failed':
        return log.error(k, `${name} could not be started: ${ev.error}`);
      case 'restarting':
        return log.warn(
          { ...k, delayMs: ev.delayMs, restarts: ev.restarts },
          `${name} restarting in ${(ev.delayMs / 1000).toFixed(1)}s (restart ${ev.restarts})`,
        );
      case 'failed':
        return log.error(k, `${name} failed: ${ev.reason}`);
      case 'ready':
        return log.info(k, `${name} ready`);
      case 'unhealthy':
        return log.warn({ ...k, failures: ev.failures }, `${name} unhealthy after ${ev.failures} failed checks, restarting it`);
      case 'gpu-wait':
        return log.info(
          { ...k, gpu: ev.gpu, pid: ev.pid },
          `${name} waits for GPU ${ev.gpu} to be released by pid ${ev.pid} (its last run's) before it starts again`,
        );
      case 'gpu-blocked':
        return log.error(
          { ...k, gpu: ev.gpu, pid: ev.pid },
          `${name} blocked: GPU ${ev.gpu} still held by pid ${ev.pid} after ${Math.round(ev.waitedMs / 1000)}s (restart.gpuReleaseTimeout); it starts once the GPU is free`,
        );
      case 'gpu-released':
        return log.info({ ...k, waitedMs: ev.waitedMs }, `${name}: its GPUs are free after ${(ev.waitedMs / 1000).toFixed(1)}s: starting`);
      case 'gpu-unchecked':
        return log.info({ ...k }, `GPU release before restarts not checked on ${name}'s node: ${ev.reason}`);
      case 'rank-exited': {
        const how = ev.exit.signal ? `was ${exitText(ev.exit)}` : exitText(ev.exit);
        return log[this.#stopping ? 'info' : 'warn'](
          { ...k, member: ev.member, node: ev.node },
          `${name}: ${ev.member} on ${ev.node} ${how}: stopping the whole gang`,
        );
      }
      case 'fatal-log':
        return log.warn({ ...k, pattern: ev.pattern }, `${name} printed a fatal line (restart.onLog /${ev.pattern}/), restarting it: ${ev.line.slice(0, 300)}`);
      case 'stop-escalated':
        return log.warn(k, `${name} still running ${ev.graceMs / 1000}s after the stop signal: SIGKILL`);
      case 'stopped':
        return log.info(k, `${name} stopped: ${ev.reason}`);
      case 'hook-failed':
        return log.warn({ ...k, hook: ev.hook }, `${name}: ${ev.hook} hook ${ev.error}`);
      case 'leftovers':
        return log.warn(k, `${name}: ${ev.count} leftover process(es) killed`);
    }
  }
}
