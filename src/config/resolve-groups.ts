/**
 * Resolution step: the worker groups. Each group's fields over `defaults` (nested policies merge field by
 * field) over DEFAULTS; references (nodes, dependsOn, ports in placeholders) checked; groups in dependency
 * order. A field a group takes from `defaults` is reported there, once.
 */
import { DEFAULTS } from './defaults.js';
import { hint, type Resolution } from './resolve-context.js';
import type { RawWorker } from './schema.js';
import type { ConfigPath } from './source.js';
import { closest } from './suggest.js';
import { DEFAULT_UNSET_ENV, type WorkerGroup } from './types.js';

/** The placeholders commands, env values, cwd and health.url may use (expanded per replica at start). */
export const PLACEHOLDERS = ['port', 'index', 'replica', 'node', 'host', 'group', 'gpus', 'rank', 'nnodes', 'leader'] as const;
const PLACEHOLDER_RE = /(\$?)\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)?)\}/g;
const SHOWN_PLACEHOLDERS = [...PLACEHOLDERS.map((p) => `{${p}}`), '{ports.<name>}'].join(', ');

/**
 * The groups, in dependency order (dependencies first). `nodeNames`: the nodes a group may name;
 * `roleNodes` (Slurm mode): where each group's role puts it, instead of the names of the file.
 */
export function resolveGroups(r: Resolution, nodeNames: readonly string[], roleNodes: Map<string, readonly string[]> | undefined): WorkerGroup[] {
  const { raw } = r;
  const defaults: RawWorker = raw.defaults ?? {};
  const groupNames = Object.keys(raw.workers);
  if (groupNames.length === 0) r.add(['workers'], 'expected at least one worker group');
  for (const [i, dep] of (defaults.dependsOn ?? []).entries()) {
    if (!groupNames.includes(dep)) r.add(['defaults', 'dependsOn', i], `unknown worker group '${dep}'${hint(dep, groupNames)}`);
  }
  const groups = Object.entries(raw.workers).map(([name, worker]) => resolveGroup(r, name, worker, defaults, groupNames, nodeNames, roleNodes));
  return topoOrder(groups, (cycle) => r.add(['workers', cycle[0]!, 'dependsOn'], `dependency cycle: ${cycle.join(' → ')}`));
}

function resolveGroup(
  r: Resolution,
  name: string,
  worker: RawWorker,
  defaults: RawWorker,
  groupNames: readonly string[],
  nodeNames: readonly string[],
  roleNodes: Map<string, readonly string[]> | undefined,
): WorkerGroup {
  const { add, addOnce } = r;
  const at = (...p: (string | number)[]): ConfigPath => ['workers', name, ...p];
  // Where a field of this group comes from: the group, or defaults (reported there).
  const from = (field: keyof RawWorker): ConfigPath => (worker[field] !== undefined ? at(field) : ['defaults', field]);
  const command = worker.command ?? defaults.command;
  if (command === undefined) add(at(), "missing required field 'command' (set it here or in defaults)");
  if (Array.isArray(command) && command[0]!.trim() === '') addOnce([...from('command'), 0], 'expected a program name, got an empty string');

  const groupNodes = groupNodesOf(r, name, worker, defaults, nodeNames, roleNodes);
  const dependsOn = worker.dependsOn ?? defaults.dependsOn ?? [];
  if (worker.dependsOn !== undefined) {
    for (const [i, dep] of dependsOn.entries()) {
      if (dep === name) add(at('dependsOn', i), 'a group cannot depend on itself');
      else if (!groupNames.includes(dep)) add(at('dependsOn', i), `unknown worker group '${dep}'${hint(dep, groupNames)}`);
    }
  } else {
    // defaults.dependsOn applies to every group without its own: one naming a group makes it depend on itself.
    for (const [i, dep] of dependsOn.entries()) {
      if (dep === name) {
        add(
          ['defaults', 'dependsOn', i],
          `group '${dep}' would depend on itself (defaults apply to every group without its own dependsOn: give '${dep}' one, e.g. dependsOn: [])`,
        );
      }
    }
  }

  const restart = { ...defaults.restart, ...worker.restart };
  for (const [i, pattern] of (restart.onLog ?? []).entries()) {
    try {
      new RegExp(pattern);
    } catch (err) {
      const where: ConfigPath = worker.restart?.onLog !== undefined ? at('restart', 'onLog', i) : ['defaults', 'restart', 'onLog', i];
      add(where, `expected a regular expression (JavaScript syntax): ${(err as Error).message.replace(/^Invalid regular expression: /, '')}`);
    }
  }
  const stop = { ...defaults.stop, ...worker.stop };
  const health = worker.health ?? defaults.health;
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...defaults.env, ...worker.env })) env[k] = String(v);
  const cwd = worker.cwd ?? defaults.cwd;
  const port = worker.port ?? defaults.port;
  const ports = { ...defaults.ports, ...worker.ports };
  const replicas = worker.replicas ?? defaults.replicas ?? DEFAULTS.worker.replicas;
  const portAt = (pn: string): ConfigPath => (worker.ports?.[pn] !== undefined ? at('ports', pn) : ['defaults', 'ports', pn]);
  if (port !== undefined && port + replicas - 1 > 65535) {
    add(
      worker.port === undefined && worker.replicas !== undefined ? at('replicas') : from('port'),
      `replica ${name}-${replicas - 1} would get port ${port + replicas - 1}, above 65535`,
    );
  }
  for (const [pn, base] of Object.entries(ports)) {
    if (base + replicas - 1 > 65535) add(portAt(pn), `replica ${name}-${replicas - 1} would get port ${base + replicas - 1} (ports.${pn}), above 65535`);
  }
  const upperNames = new Map<string, string>();
  for (const pn of Object.keys(ports)) {
    const other = upperNames.get(pn.toUpperCase());
    if (other) add(portAt(pn), `ports '${pn}' and '${other}' would both be DYNSUP_PORT_${pn.toUpperCase()}`, true);
    upperNames.set(pn.toUpperCase(), pn);
  }

  // Placeholders: only the known ones; {port} only with a port. `${X}` (from `$${X}`) is the shell's.
  const placeholders = (value: string, path: ConfigPath): void => {
    for (const m of value.matchAll(PLACEHOLDER_RE)) {
      const [, dollar, key] = m as unknown as [string, string, string];
      if (dollar) continue;
      if (key.startsWith('ports.')) {
        const pn = key.slice(6);
        if (!Object.hasOwn(ports, pn)) {
          const c = closest(pn, Object.keys(ports));
          const known = c
            ? ` (did you mean '{ports.${c}}'?)`
            : Object.keys(ports).length
              ? ` (its ports: ${Object.keys(ports).join(', ')})`
              : ' (set ports: { ' + pn + ': BASE })';
          add(path, `placeholder '{${key}}' but group '${name}' has no port named '${pn}'${known}`);
        }
      } else if (!(PLACEHOLDERS as readonly string[]).includes(key)) {
        const c = closest(key, PLACEHOLDERS);
        addOnce(path, `unknown placeholder '{${key}}'${c ? ` (did you mean '{${c}}'?)` : ''}: known are ${SHOWN_PLACEHOLDERS}`);
      } else if (key === 'port' && port === undefined) add(path, `placeholder '{port}' but group '${name}' has no port`);
    }
  };
  if (typeof command === 'string') placeholders(command, from('command'));
  else if (command) for (const [i, a] of command.entries()) placeholders(a, [...from('command'), i]);
  for (const [k, v] of Object.entries({ ...defaults.env, ...worker.env })) {
    if (typeof v === 'string') placeholders(v, [...(worker.env?.[k] !== undefined ? at('env') : ['defaults', 'env']), k]);
  }
  if (cwd !== undefined) placeholders(cwd, from('cwd'));
  if (health) placeholders(health.url, [...from('health'), 'url']);
  const preStart = worker.preStart ?? defaults.preStart;
  const postStop = worker.postStop ?? defaults.postStop;
  if (preStart !== undefined) placeholders(preStart, from('preStart'));
  if (postStop !== undefined) placeholders(postStop, from('postStop'));

  const RESTART = DEFAULTS.worker.restart;
  const initialDelayMs = r.durationMs(restart.initialDelay, RESTART.initialDelay);
  const maxDelayMs = r.durationMs(restart.maxDelay, RESTART.maxDelay);
  if (maxDelayMs < initialDelayMs) {
    // Point at whichever of the two this group wrote itself; the other may come from defaults.
    if (worker.restart?.maxDelay !== undefined) add(at('restart', 'maxDelay'), 'must not be shorter than restart.initialDelay');
    else if (worker.restart?.initialDelay !== undefined) {
      const max = defaults.restart?.maxDelay !== undefined ? `${defaults.restart.maxDelay}, from defaults` : `${RESTART.maxDelay}, the default`;
      add(at('restart', 'initialDelay'), `must not be longer than restart.maxDelay (${max})`);
    } else add(['defaults', 'restart', 'maxDelay'], 'must not be shorter than restart.initialDelay');
  }
  const nodesPerReplica = worker.nodesPerReplica ?? defaults.nodesPerReplica ?? DEFAULTS.worker.nodesPerReplica;
  const gpus = worker.gpus ?? defaults.gpus ?? DEFAULTS.worker.gpus;
  if (nodesPerReplica > 1 && (worker.nodes ?? defaults.nodes) !== undefined && groupNodes.length < nodesPerReplica && !roleNodes) {
    add(
      worker.nodes !== undefined ? at('nodes') : ['defaults', 'nodes'],
      `names ${groupNodes.length} node(s) but each replica of '${name}' spans ${nodesPerReplica} (nodesPerReplica)`,
    );
  }
  const HEALTH = DEFAULTS.worker.health;
  return {
    name,
    nodesPerReplica,
    launch: worker.launch ?? defaults.launch ?? (nodesPerReplica > 1 ? 'ranks' : 'single'),
    ranksPerNode: worker.ranksPerNode ?? defaults.ranksPerNode ?? Math.max(1, gpus),
    mpiArgs: worker.mpiArgs ?? defaults.mpiArgs ?? [],
    argv: command === undefined ? [] : typeof command === 'string' ? ['sh', '-c', command] : command,
    replicas,
    gpus,
    nodes: groupNodes,
    env,
    cwd: cwd === undefined ? undefined : r.absPath(cwd),
    port,
    ...(Object.keys(ports).length ? { ports } : {}),
    ...(preStart !== undefined || postStop !== undefined ? { hooks: { preStart, postStop } } : {}),
    rollout: { maxUnavailable: worker.rollout?.maxUnavailable ?? defaults.rollout?.maxUnavailable ?? DEFAULTS.worker.rollout.maxUnavailable },
    restart: {
      policy: restart.policy ?? RESTART.policy,
      initialDelayMs,
      factor: restart.factor ?? RESTART.factor,
      maxDelayMs,
      jitter: restart.jitter ?? RESTART.jitter,
      maxRestarts: restart.maxRestarts ?? RESTART.maxRestarts,
      windowMs: r.durationMs(restart.window, RESTART.window),
      resetAfterMs: r.durationMs(restart.resetAfter, RESTART.resetAfter),
      gpuReleaseTimeoutMs: r.durationMs(restart.gpuReleaseTimeout, RESTART.gpuReleaseTimeout),
      ...(restart.onLog?.length ? { onLog: restart.onLog } : {}),
    },
    stop: { signal: normalizeSignal(stop.signal ?? DEFAULTS.worker.stop.signal), graceMs: r.durationMs(stop.grace, DEFAULTS.worker.stop.grace) },
    dependsOn,
    health: health && {
      url: health.url,
      intervalMs: r.durationMs(health.interval, HEALTH.interval),
      timeoutMs: r.durationMs(health.timeout, HEALTH.timeout),
      startPeriodMs: r.durationMs(health.startPeriod, HEALTH.startPeriod),
      failureThreshold: health.failureThreshold ?? HEALTH.failureThreshold,
    },
    unsetEnv: worker.unsetEnv ?? defaults.unsetEnv ?? DEFAULT_UNSET_ENV,
  };
}

/** The nodes a group may use: its role's in Slurm mode, else the ones it (or defaults) names, checked. */
function groupNodesOf(
  r: Resolution,
  name: string,
  worker: RawWorker,
  defaults: RawWorker,
  nodeNames: readonly string[],
  roleNodes: Map<string, readonly string[]> | undefined,
): readonly string[] {
  const at = (...p: (string | number)[]): ConfigPath => ['workers', name, ...p];
  if (roleNodes) {
    // The file's node names mean nothing in an allocation: a group goes where its role says (default: anywhere).
    const role = roleNodes.get(name);
    if (role) return role;
    if (worker.nodes !== undefined || defaults.nodes !== undefined) {
      r.add(
        worker.nodes !== undefined ? at('nodes') : ['defaults', 'nodes'],
        `names nodes of the file, which a Slurm allocation replaces: give group '${name}' a role in slurm.roles (head, rest, {first: K}, ...)`,
        true,
      );
    }
    return [];
  }
  for (const [i, n] of (worker.nodes ?? []).entries()) {
    if (!nodeNames.includes(n)) r.add(at('nodes', i), `unknown node '${n}'${hint(n, nodeNames)}`);
  }
  if (worker.nodes === undefined) {
    for (const [i, n] of (defaults.nodes ?? []).entries())
      if (!nodeNames.includes(n)) r.add(['defaults', 'nodes', i], `unknown node '${n}'${hint(n, nodeNames)}`);
  }
  return worker.nodes ?? defaults.nodes ?? [];
}

/** Groups with dependencies first (stable: file order otherwise). Reports each cycle once. */
function topoOrder(groups: WorkerGroup[], onCycle: (cycle: string[]) => void): WorkerGroup[] {
  const byName = new Map(groups.map((g) => [g.name, g]));
  const state = new Map<string, 'visiting' | 'done'>();
  const out: WorkerGroup[] = [];
  const visit = (g: WorkerGroup, stack: string[]) => {
    const s = state.get(g.name);
    if (s === 'done') return;
    if (s === 'visiting') {
      onCycle([...stack.slice(stack.indexOf(g.name)), g.name]);
      return;
    }
    state.set(g.name, 'visiting');
    for (const dep of g.dependsOn) {
      const d = byName.get(dep);
      if (d && d !== g) visit(d, [...stack, g.name]);
    }
    state.set(g.name, 'done');
    out.push(g);
  };
  for (const g of groups) visit(g, []);
  return out;
}

function normalizeSignal(s: string): NodeJS.Signals {
  return (s.startsWith('SIG') ? s : `SIG${s}`) as NodeJS.Signals;
}
