/**
 * `dynsup apply` and `restart --rolling`: what a changed file means for the running cluster (planApply,
 * pure), and the rolling replacement of a group's replicas (rollReplicas: at most maxUnavailable of the
 * group down at a time, the next only once the replaced one is up again).
 *
 * A replica is replaced when what it runs would change (command, env, ports, hooks, restart and stop
 * policies, health check, a gang's launch); the others are kept (same process). A gang replica (a group
 * with nodesPerReplica > 1 or launch mpi) is one unit: replaced whole, its ranks on all its nodes. A group
 * whose GPUs per replica, nodes or nodesPerReplica change is placed afresh: its old replicas are stopped
 * before the new ones start (their GPUs and nodes are needed).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { specHash } from '../agent/protocol.js';
import { controlPlaneNodes, controlPlanePorts, place, portClashes } from '../config/placement.js';
import type { ClusterConfig, NodeConfig, ReplicaPlan, WorkerGroup } from '../config/types.js';
import { buildLaunchSpec } from './launch-spec.js';

export type GroupChange = 'added' | 'removed' | 'changed' | 'unchanged';

export interface GroupPlan {
  readonly group: string;
  readonly change: GroupChange;
  /** Fields that differ (command, env, ports, replicas...), for the plan's text. */
  readonly fields: readonly string[];
  readonly from: number;
  readonly to: number;
  /** Untouched: same process. */
  readonly keep: readonly string[];
  /** Replaced one (or maxUnavailable) at a time, each keeping its name, node and GPUs. */
  readonly replace: readonly string[];
  /** Started (new replicas: scaled up, a new group, a group placed afresh). */
  readonly start: readonly ReplicaPlan[];
  /** Stopped and removed (scaled down, the group gone, or placed afresh). */
  readonly stop: readonly string[];
  /** GPUs or nodes changed: every old replica stops before the new ones start. */
  readonly recreate: boolean;
  readonly maxUnavailable: number;
}

export interface ApplyPlan {
  readonly groups: readonly GroupPlan[];
  /** Every replica once applied (kept, replaced with their new ports, started). */
  readonly replicas: readonly ReplicaPlan[];
}

export type PlanResult = { readonly ok: true; readonly plan: ApplyPlan } | { readonly ok: false; readonly errors: readonly string[] };

const json = (v: unknown): string => JSON.stringify(v ?? null);

/** What of the file only `down` + `up` can change: the control plane and the nodes replicas run on. */
export function controlPlaneChanges(cur: ClusterConfig, next: ClusterConfig, usedNodes: ReadonlySet<string>): string[] {
  const out: string[] = [];
  if (cur.name !== next.name) out.push(`name (${cur.name} → ${next.name})`);
  if (cur.headAddress !== next.headAddress) out.push(`head.address (${cur.headAddress} → ${next.headAddress})`);
  if (cur.leaseMs !== next.leaseMs) out.push('lease');
  if (json(cur.nats) !== json(next.nats)) out.push('controlPlane.nats');
  if (json(cur.etcd) !== json(next.etcd)) out.push('controlPlane.etcd');
  if (cur.metrics.enabled !== next.metrics.enabled || cur.metrics.port !== next.metrics.port) out.push('metrics');
  if (json(cur.logs) !== json(next.logs)) out.push('logs');
  for (const n of cur.nodes) {
    if (!usedNodes.has(n.name)) continue;
    const m = next.nodes.find((x) => x.name === n.name);
    // A node's GPU count and setup may change; how it is reached may not while replicas run there.
    const how = (x: NodeConfig) => json({ transport: x.transport, address: x.address, ssh: x.ssh, runDir: x.runDir, node: x.node });
    if (!m) out.push(`nodes.${n.name} (removed, replicas run there)`);
    else if (how(n) !== how(m)) out.push(`nodes.${n.name} (how it is reached)`);
  }
  return out;
}

/** Fields of a group that differ, by their file names. */
export function groupFieldChanges(a: WorkerGroup, b: WorkerGroup): string[] {
  const fields: [string, (g: WorkerGroup) => unknown][] = [
    ['command', (g) => g.argv],
    ['env', (g) => Object.entries(g.env).sort()],
    ['cwd', (g) => g.cwd],
    ['port', (g) => g.port],
    ['ports', (g) => g.ports ?? {}],
    ['preStart', (g) => g.hooks?.preStart],
    ['postStop', (g) => g.hooks?.postStop],
    ['restart', (g) => g.restart],
    ['stop', (g) => g.stop],
    ['health', (g) => g.health],
    ['unsetEnv', (g) => g.unsetEnv],
    ['gpus', (g) => g.gpus],
    ['nodes', (g) => g.nodes],
    ['nodesPerReplica', (g) => g.nodesPerReplica],
    ['launch', (g) => g.launch],
    ['ranksPerNode', (g) => g.ranksPerNode],
    ['mpiArgs', (g) => g.mpiArgs],
    ['dependsOn', (g) => g.dependsOn],
    ['rollout', (g) => g.rollout],
    ['replicas', (g) => g.replicas],
  ];
  // ranksPerNode (derived from gpus by default) and mpiArgs mean something only to an mpi launch.
  const mpi = a.launch === 'mpi' || b.launch === 'mpi';
  return fields.filter(([n, f]) => (mpi || (n !== 'ranksPerNode' && n !== 'mpiArgs')) && json(f(a)) !== json(f(b))).map(([n]) => n);
}

/**
 * The plan for `next` given what runs (`cur`, and the replicas placed now: `running`). Fails, changing
 * nothing, when the control plane changed or the new replicas cannot be placed next to the kept ones.
 * `runningSpec` gives the hash of the spec a replica actually runs, where known: after a rollout that
 * stopped half-way, the replicas it did not reach still run the old spec, and a new apply replaces them.
 */
export function planApply(
  cur: ClusterConfig,
  running: readonly ReplicaPlan[],
  next: ClusterConfig,
  runningSpec?: (name: string) => string | undefined,
): PlanResult {
  // A gang's replica holds all its nodes.
  const used = new Set(running.flatMap((r) => r.gangNodes ?? [r.node]));
  const cp = controlPlaneChanges(cur, next, used);
  if (cp.length)
    return { ok: false, errors: [`${cp.join(', ')} changed: the control plane and how nodes are reached change only with 'dynsup down' and 'dynsup up'`] };

  const nodeOf = (name: string) => next.nodes.find((n) => n.name === name);
  const byGroup = (g: string) => running.filter((r) => r.group === g).sort((a, b) => a.index - b.index);
  const drafts: {
    group: string;
    change: GroupChange;
    fields: string[];
    keep: ReplicaPlan[];
    replace: ReplicaPlan[];
    stop: string[];
    recreate: boolean;
    toPlace: number;
    firstIndex: number;
    from: number;
    to: number;
    maxUnavailable: number;
  }[] = [];

  for (const g of cur.groups) {
    if (!next.groups.some((x) => x.name === g.name)) {
      const rs = byGroup(g.name);
      drafts.push({
        group: g.name,
        change: 'removed',
        fields: [],
        keep: [],
        replace: [],
        stop: rs.map((r) => r.name),
        recreate: false,
        toPlace: 0,
        firstIndex: 0,
        from: rs.length,
        to: 0,
        maxUnavailable: 1,
      });
    }
  }
  for (const g of next.groups) {
    const old = cur.groups.find((x) => x.name === g.name);
    const rs = byGroup(g.name);
    const maxUnavailable = g.rollout?.maxUnavailable ?? 1;
    if (!old) {
      drafts.push({
        group: g.name,
        change: 'added',
        fields: [],
        keep: [],
        replace: [],
        stop: [],
        recreate: false,
        toPlace: g.replicas,
        firstIndex: 0,
        from: 0,
        to: g.replicas,
        maxUnavailable,
      });
      continue;
    }
    const fields = groupFieldChanges(old, g);
    // Placement changes (GPUs, nodes, the nodes a gang spans): placed afresh.
    const recreate = fields.includes('gpus') || fields.includes('nodes') || fields.includes('nodesPerReplica');
    // How a gang's ranks are launched is not in the one spec compared below: a change replaces every replica.
    const relaunch = ['launch', 'ranksPerNode', 'mpiArgs'].some((f) => fields.includes(f));
    if (recreate) {
      drafts.push({
        group: g.name,
        change: 'changed',
        fields,
        keep: [],
        replace: [],
        stop: rs.map((r) => r.name),
        recreate,
        toPlace: g.replicas,
        firstIndex: 0,
        from: rs.length,
        to: g.replicas,
        maxUnavailable,
      });
      continue;
    }
    const stays = rs.slice(0, g.replicas);
    const gone = rs.slice(g.replicas);
    // Replaced when what it runs changes: the launch spec (ports recomputed from the new bases) or its health check.
    const keep: ReplicaPlan[] = [];
    const replace: ReplicaPlan[] = [];
    for (const r of stays) {
      const moved = withPorts(r, g);
      const node = nodeOf(r.node) ?? cur.nodes.find((n) => n.name === r.node);
      const now = runningSpec?.(r.name) ?? specHash(buildLaunchSpec(cur, old, r, node));
      const same = !relaunch && now === specHash(buildLaunchSpec(next, g, moved, node)) && json(old.health) === json(g.health);
      (same ? keep : replace).push(moved);
    }
    const change: GroupChange = fields.length ? 'changed' : 'unchanged';
    const last = rs.length ? rs[rs.length - 1]!.index + 1 : 0;
    drafts.push({
      group: g.name,
      change,
      fields,
      keep,
      replace,
      stop: gone.map((r) => r.name),
      recreate: false,
      toPlace: Math.max(0, g.replicas - rs.length),
      firstIndex: last,
      from: rs.length,
      to: g.replicas,
      maxUnavailable,
    });
  }

  // Placement: kept and replaced replicas hold their GPUs; new ones go next to them, group by group in
  // start order, by the one placement of validate, up and scale.
  const staying = drafts.flatMap((d) => [...d.keep, ...d.replace]);
  const placed: ReplicaPlan[] = [];
  const errors: string[] = [];
  for (const g of next.groups) {
    const d = drafts.find((x) => x.group === g.name)!;
    if (!d.toPlace) continue;
    const p = place(next.nodes, [{ ...g, replicas: d.toPlace, firstIndex: d.firstIndex }], { existing: [...staying, ...placed] });
    if (!p.ok) errors.push(...p.errors.map((e) => `${g.name}: ${e.message}`));
    else placed.push(...p.replicas);
  }
  if (errors.length) return { ok: false, errors };
  const reserved = new Map(controlPlanePorts(next).map(([path, port]) => [port, path.join('.')] as [number, string]));
  const kept = drafts.flatMap((d) => d.keep);
  const clashes = portClashes([...kept, ...drafts.flatMap((d) => d.replace), ...placed], controlPlaneNodes(next.nodes, !!next.allocation), reserved);
  if (clashes.length) return { ok: false, errors: clashes.map((c) => c.message) };

  const groups: GroupPlan[] = drafts.map((d) => ({
    group: d.group,
    change: d.change,
    fields: d.fields,
    from: d.from,
    to: d.to,
    keep: d.keep.map((r) => r.name),
    replace: d.replace.map((r) => r.name),
    start: placed.filter((r) => r.group === d.group),
    stop: d.stop,
    recreate: d.recreate,
    maxUnavailable: d.maxUnavailable,
  }));
  return { ok: true, plan: { groups, replicas: [...staying, ...placed] } };
}

function withPorts(r: ReplicaPlan, g: WorkerGroup): ReplicaPlan {
  const { ports: _old, ...rest } = r;
  return {
    ...rest,
    port: g.port === undefined ? undefined : g.port + r.index,
    ...(g.ports && Object.keys(g.ports).length ? { ports: Object.fromEntries(Object.entries(g.ports).map(([k, base]) => [k, base + r.index])) } : {}),
  };
}

/** The plan as text, one line per group. */
export function describePlan(plan: ApplyPlan): string[] {
  return plan.groups.map((g) => {
    const parts: string[] = [];
    const names = (xs: readonly string[]) => xs.join(', ');
    if (g.change === 'added') parts.push(`new group: start ${names(g.start.map((r) => r.name))}`);
    else if (g.change === 'removed') parts.push(`removed from the file: stop ${names(g.stop)}`);
    else {
      const fields = g.fields.filter((f) => f !== 'replicas');
      if (g.from !== g.to) parts.push(`${g.from} → ${g.to} replicas`);
      if (fields.length) parts.push(`changed (${fields.join(', ')})`);
      else if (g.replace.length) parts.push('some replicas still run an earlier spec');
      else if (g.from === g.to) parts.push('unchanged');
      if (g.recreate) parts.push(`placed afresh (GPUs or nodes changed): stop ${names(g.stop)}, then start ${names(g.start.map((r) => r.name))}`);
      else {
        if (g.replace.length) parts.push(`replace ${names(g.replace)} rolling, ${g.maxUnavailable} at a time`);
        if (g.start.length) parts.push(`start ${names(g.start.map((r) => r.name))}`);
        if (g.stop.length) parts.push(`stop ${names(g.stop)}`);
        if (g.keep.length) parts.push(`keep ${names(g.keep)}`);
      }
    }
    return `${g.group}: ${parts.join('; ')}`;
  });
}

/** What a rolling replacement needs of a replica (or of a gang replica: the same interface). */
export interface RollingUnit {
  readonly name: string;
  /** Ready (health check), or running without one. */
  readonly up: boolean;
  readonly failed: boolean;
  /** Stop the old process and start the new one; resolves once the new one was asked to start. */
  replace(): Promise<void>;
}

/**
 * Replace `units` (of a group whose other members are `others`), keeping at most `maxUnavailable` of the
 * whole group down at a time: a unit that is down anyway is replaced at once; an up one only while fewer
 * than maxUnavailable are down. The next waits until a replaced one is up again. Throws (leaving the rest
 * as they are) when a replaced unit fails or is not up within `readyTimeoutMs`.
 */
export async function rollReplicas(
  units: readonly RollingUnit[],
  others: readonly RollingUnit[],
  maxUnavailable: number,
  opts: { readyTimeoutMs: number; signal?: AbortSignal | undefined; pollMs?: number; onReplaced?: (name: string) => void },
): Promise<void> {
  const pending = [...units];
  const inFlight = new Map<RollingUnit, number>();
  const all = [...units, ...others];
  const poll = opts.pollMs ?? 50;
  const limit = Math.max(1, maxUnavailable);
  while (pending.length || inFlight.size) {
    opts.signal?.throwIfAborted();
    for (const [u, since] of inFlight) {
      if (u.failed)
        throw new Error(`${u.name} failed after its replacement; rollout stopped (not replaced: ${pending.map((p) => p.name).join(', ') || 'none'})`);
      if (u.up) {
        inFlight.delete(u);
        opts.onReplaced?.(u.name);
      } else if (Date.now() - since > opts.readyTimeoutMs) {
        throw new Error(
          `${u.name} not ready ${Math.round(opts.readyTimeoutMs / 1000)}s after its replacement; rollout stopped (not replaced: ${pending.map((p) => p.name).join(', ') || 'none'})`,
        );
      }
    }
    let down = all.filter((u) => !u.up).length;
    // Down already: replacing it costs nothing.
    const next: RollingUnit[] = pending.filter((u) => !u.up);
    for (const u of pending) {
      if (u.up && down < limit) {
        next.push(u);
        down++;
      }
    }
    for (const u of next) {
      pending.splice(pending.indexOf(u), 1);
      inFlight.set(u, Date.now());
    }
    await Promise.all(next.map((u) => u.replace()));
    if (pending.length || inFlight.size) await sleep(poll, undefined, { signal: opts.signal });
  }
}
