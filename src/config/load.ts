/**
 * Cluster file → ClusterConfig. Collects every problem (syntax, shape, references, cycles, GPU capacity)
 * before giving up, so one `dynsup validate` run shows them all. Besides reading the file it only looks
 * (never creates): at the state dir (see paths.ts) and at the cwd of groups that run on a local node.
 */
import { homedir, userInfo } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { z } from 'zod';
import { DynsupError } from '../util/errors.js';
import { parseDuration } from './duration.js';
import { cwdProblem, stateDirProblem } from './paths.js';
import { controlPlaneNodes, controlPlanePorts, place, portClashes } from './placement.js';
import { clusterSchema, type RawCluster, type RawNode, type RawWorker } from './schema.js';
import { formatPath, loadSource, parseSource, type ConfigIssue, type ConfigPath, type ConfigSource } from './source.js';
import { DEFAULT_UNSET_ENV, type ClusterConfig, type NodeConfig, type WorkerGroup } from './types.js';
import { closest } from './suggest.js';
import { previewAllocation, type SlurmAllocation } from '../slurm/allocation.js';
import { minimumNodes, resolveRoles, type RoleSpec } from '../slurm/roles.js';
import { slurmTime } from '../slurm/sbatch.js';

export class ConfigError extends DynsupError {
  readonly issues: readonly ConfigIssue[];
  constructor(issues: readonly ConfigIssue[]) {
    super('E_CONFIG', issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export function formatIssue(i: ConfigIssue): string {
  const where = i.line > 0 ? `${i.file}:${i.line}:${i.column}` : i.file;
  return `${where}: ${i.path ? `${i.path}: ` : ''}${i.message}`;
}

export interface LoadOptions {
  /** Environment for `${VAR}` interpolation (default process.env). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** `--state-dir`, overriding the file's stateDir. */
  readonly stateDir?: string | undefined;
  /** Raw bytes instead of reading `file` (tests, stdin). */
  readonly content?: Buffer | undefined;
  /**
   * Slurm mode: the allocation's nodes replace the file's `nodes:` (transport srun, placed by
   * `slurm.roles`), and its head address stands in for a missing `head.address`. A function is asked
   * with the resolved state dir (the allocation a running `up --slurm` recorded there) and may decline.
   */
  readonly slurm?: SlurmAllocation | ((stateDir: string) => SlurmAllocation | undefined) | undefined;
  /**
   * A file with a `slurm:` section and no `nodes:` (and no allocation from `slurm`) is laid out on
   * placeholder nodes node1..nodeN (N = slurm.nodes, or the fewest the roles need; `allocation.preview`
   * is set) instead of refused. Default true; `up` without --slurm turns it off, as it would start them.
   */
  readonly slurmPreview?: boolean | undefined;
  /**
   * Check that the cwd of every group with a replica on a local node exists (default true). Commands that
   * act on a cluster already up (down, status, logs) turn it off: a cwd removed since must not stop them.
   */
  readonly checkLocalPaths?: boolean | undefined;
}

/** The placeholders commands, env values, cwd and health.url may use (expanded per replica at start). */
export const PLACEHOLDERS = ['port', 'index', 'replica', 'node', 'host', 'group', 'gpus', 'rank', 'nnodes', 'leader'] as const;
const PLACEHOLDER_RE = /(\$?)\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)?)\}/g;
const SHOWN_PLACEHOLDERS = [...PLACEHOLDERS.map((p) => `{${p}}`), '{ports.<name>}'].join(', ');
const MIN_LEASE_MS = 1000;

/** Load and validate a cluster file; throws ConfigError listing every problem. */
export function loadCluster(file: string, options: LoadOptions = {}): ClusterConfig {
  const env = options.env ?? process.env;
  const abs = resolve(file);
  const { source, issues } = options.content ? parseSource(file, options.content, env) : loadSource(file, env);
  if (!source || issues.length) throw new ConfigError(issues);

  const parsed = clusterSchema.safeParse(source.data);
  if (!parsed.success) {
    const foreign = notAClusterFile(source);
    if (foreign) throw new ConfigError([foreign]);
  }
  // head.address and nodes are optional in the schema (Slurm mode supplies them); outside it they are required.
  const data = source.data as { slurm?: unknown } | null;
  const maybeSlurm =
    (options.slurm !== undefined && typeof options.slurm !== 'function') ||
    (data !== null && typeof data === 'object' && data.slurm !== undefined && (options.slurmPreview !== false || typeof options.slurm === 'function'));
  if (!parsed.success) {
    const required = maybeSlurm ? [] : requiredOutsideSlurm(source);
    throw new ConfigError(sortIssues([...parsed.error.issues.flatMap((i) => zodIssue(source, i)), ...required]));
  }
  const raw = parsed.data;

  const semantic: ConfigIssue[] = [];
  const cluster = resolveCluster(abs, raw, source, options, semantic);
  if (semantic.length || !cluster) throw new ConfigError(sortIssues(semantic));
  return cluster;
}

/** Missing `head.address` / `nodes`, for a file used without a Slurm allocation. */
function requiredOutsideSlurm(source: ConfigSource): ConfigIssue[] {
  const data = source.data;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return [];
  const d = data as { head?: unknown; nodes?: unknown; slurm?: unknown };
  const why = d.slurm === undefined ? '' : ' (this file has a slurm: section: run it with `dynsup sbatch FILE`, or `dynsup up FILE --slurm` inside an allocation)';
  const out: ConfigIssue[] = [];
  if (d.head === undefined) out.push(source.issue(['head'], `missing required field${why}`));
  else if (d.head !== null && typeof d.head === 'object' && !Array.isArray(d.head) && (d.head as { address?: unknown }).address === undefined) {
    out.push(source.issue(['head', 'address'], `missing required field${why}`));
  }
  if (d.nodes === undefined) out.push(source.issue(['nodes'], `missing required field${why}`));
  return out;
}

function sortIssues(issues: ConfigIssue[]): ConfigIssue[] {
  return issues.sort((a, b) => a.line - b.line || a.column - b.column);
}

function valueAt(data: unknown, path: ConfigPath): unknown {
  let v: unknown = data;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg as string];
  }
  return v;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  return `${typeof v} ${String(v)}`;
}

function zodIssue(source: ConfigSource, issue: z.core.$ZodIssue): ConfigIssue[] {
  const path = issue.path as (string | number)[];
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeys(path);
    return issue.keys.map((key) => {
      const hint = closest(key, known);
      const expected = hint ? ` (did you mean '${hint}'?)` : known.length ? ` (expected one of: ${known.join(', ')})` : '';
      // A long key is not a mistyped field name but some other file's content: not quoted.
      if (key.length > MAX_QUOTED_KEY) return { ...source.issue([...path, key], `unknown field (a key of ${key.length} characters, not shown)${expected}`, true), path: formatPath(path) };
      return source.issue([...path, key], `unknown field '${key}'${expected}`, true);
    });
  }
  if (issue.code === 'invalid_key') {
    const inner = (issue as { issues?: { message: string }[] }).issues?.[0]?.message ?? issue.message;
    return [source.issue(path, inner, true)];
  }
  const value = valueAt(source.data, path);
  if (value === undefined && issue.code === 'invalid_type') return [source.issue(path, 'missing required field')];
  let message = issue.message;
  if (message.startsWith('Invalid input')) message = message.replace(/^Invalid input: /, '');
  if (issue.code === 'invalid_type' || issue.code === 'invalid_union') {
    // A whole file that is one string is some other file (a key, a script): nothing of it is quoted.
    message += path.length === 0 && typeof value === 'string' ? `, got text (${value.length} characters, not shown): not a cluster file` : `, got ${describe(value)}`;
  }
  return [source.issue(path, message)];
}

const MAX_QUOTED_KEY = 40;

/**
 * A map none of whose top-level keys is a cluster field (`/etc/shadow` through a symlink, a script, an
 * INI file) is some other file: one issue, quoting nothing of it.
 */
function notAClusterFile(source: ConfigSource): ConfigIssue | undefined {
  const d = source.data;
  if (d === null || typeof d !== 'object' || Array.isArray(d)) return undefined;
  const keys = Object.keys(d);
  const known = knownKeys([]);
  if (!keys.length || keys.some((k) => known.includes(k) || closest(k, known) !== undefined)) return undefined;
  return source.issue(
    [],
    `expected object with cluster fields (name, head, nodes, workers, ...), got a map of ${keys.length} key${keys.length === 1 ? '' : 's'}, none of them one (not shown): not a cluster file`,
  );
}

/** Field names allowed at `path`, found by walking the schema (for did-you-mean). */
function knownKeys(path: readonly (string | number)[]): string[] {
  let s: z.ZodType | undefined = clusterSchema as unknown as z.ZodType;
  const unwrap = (t: z.ZodType | undefined): z.ZodType | undefined => {
    let cur = t;
    while (cur && (cur.def.type === 'optional' || cur.def.type === 'default' || cur.def.type === 'nullable')) {
      cur = (cur.def as unknown as { innerType: z.ZodType }).innerType;
    }
    return cur;
  };
  for (const seg of path) {
    s = unwrap(s);
    if (!s) return [];
    if (s.def.type === 'object') s = (s.def as unknown as { shape: Record<string, z.ZodType> }).shape[String(seg)];
    else if (s.def.type === 'record') s = (s.def as unknown as { valueType: z.ZodType }).valueType;
    else if (s.def.type === 'array') s = (s.def as unknown as { element: z.ZodType }).element;
    else return [];
  }
  s = unwrap(s);
  return s && s.def.type === 'object' ? Object.keys((s.def as unknown as { shape: Record<string, unknown> }).shape).filter((k) => k !== '$schema') : [];
}

const SECRET_NAME = /(TOKEN|SECRET|PASSW(OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH)/i;

export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name);
}

function resolveCluster(
  file: string,
  raw: RawCluster,
  source: ConfigSource,
  options: LoadOptions,
  issues: ConfigIssue[],
): ClusterConfig | null {
  const baseDir = dirname(file);
  const abs = (p: string) => (isAbsolute(p) ? p : p.startsWith('~/') ? resolve(homedir(), p.slice(2)) : resolve(baseDir, p));
  const ms = (v: number | string | undefined, dflt: number) => (v === undefined ? dflt : parseDuration(v));
  const add = (path: ConfigPath, message: string, keyOf = false) => issues.push(source.issue(path, message, keyOf));
  const stateDir = options.stateDir ? resolve(options.stateDir) : abs(raw.stateDir ?? `.dynsup/${raw.name}`);
  const stateProblem = stateDirProblem(stateDir);
  if (stateProblem) {
    const what = `state dir ${shownPath(stateDir)} ${stateProblem}`;
    if (options.stateDir) issues.push({ file, line: 0, column: 0, path: '', message: `--state-dir: ${what}` });
    else if (raw.stateDir !== undefined) add(['stateDir'], what);
    else add(['name'], `${what} (the default, .dynsup/<name> beside the file): set stateDir`);
  }
  if (raw.lease !== undefined && ms(raw.lease, 0) < MIN_LEASE_MS) {
    add(['lease'], `must be at least 1s (node agents stop their workers when the supervisor is silent this long; it pings every quarter lease)`);
  }

  // Slurm mode: the allocation (given, recorded by a running `up --slurm`, or a preview) replaces `nodes:`.
  let alloc = typeof options.slurm === 'function' ? options.slurm(stateDir) : options.slurm;
  // A preview without slurm.nodes is sized to fit: the fewest nodes the roles need, more if the GPUs do not fit.
  let autoSized = false;
  if (!alloc && raw.slurm && raw.nodes === undefined && options.slurmPreview !== false) {
    alloc = previewAllocation(raw.slurm.nodes ?? minimumNodes((raw.slurm.roles ?? {}) as Record<string, RoleSpec>));
    autoSized = raw.slurm.nodes === undefined;
  }
  if (!alloc) for (const i of requiredOutsideSlurm(source)) issues.push(i);
  const headAddress = raw.head?.address ?? alloc?.headAddress ?? '';
  if (alloc && !headAddress) add(['head'], "missing required field 'address': the head's address could not be worked out; set head.address");

  // Nodes.
  let nodes: NodeConfig[] = [];
  if (alloc) {
    const gpus = raw.slurm?.gpusPerNode ?? alloc.gpusPerNode ?? 0;
    for (const [i, name] of alloc.nodes.entries()) {
      nodes.push({ name, transport: 'srun', gpus, address: i === 0 ? headAddress : (alloc.addresses?.[name] ?? name), setup: [] });
    }
  } else {
    for (const [name, n] of Object.entries(raw.nodes ?? {})) nodes.push(resolveNode(name, n, headAddress, abs, add));
    if (nodes.length === 0 && raw.nodes !== undefined) add(['nodes'], 'expected at least one node');
  }
  const nodeNames = nodes.map((n) => n.name);
  const roleNodes = alloc ? slurmRoles(raw, alloc, add) : undefined;

  // Worker groups: defaults, then the group's own fields (nested policies merge field by field).
  const d: RawWorker = raw.defaults ?? {};
  const groupNames = Object.keys(raw.workers);
  if (groupNames.length === 0) add(['workers'], 'expected at least one worker group');
  for (const [i, dep] of (d.dependsOn ?? []).entries()) {
    if (!groupNames.includes(dep)) add(['defaults', 'dependsOn', i], `unknown worker group '${dep}'${hint(dep, groupNames)}`);
  }
  // A field a group takes from defaults is reported there once, not once per group.
  const reported = new Set<string>();
  const addOnce = (path: ConfigPath, message: string) => {
    const k = `${formatPath(path)}\0${message}`;
    if (!reported.has(k)) add(path, message);
    reported.add(k);
  };
  const groups: WorkerGroup[] = [];
  for (const [name, w] of Object.entries(raw.workers)) {
    const at = (...p: (string | number)[]): ConfigPath => ['workers', name, ...p];
    const command = w.command ?? d.command;
    if (command === undefined) add(at(), "missing required field 'command' (set it here or in defaults)");
    // Paths of the fields this group takes from defaults, for reporting there.
    const from = (field: keyof RawWorker): ConfigPath => (w[field] !== undefined ? at(field) : ['defaults', field]);
    if (Array.isArray(command) && command[0]!.trim() === '') addOnce([...from('command'), 0], 'expected a program name, got an empty string');
    let groupNodes: readonly string[] = w.nodes ?? d.nodes ?? [];
    if (roleNodes) {
      // The file's node names mean nothing in an allocation: a group goes where its role says (default: anywhere).
      const role = roleNodes.get(name);
      if (role) groupNodes = role;
      else if (w.nodes !== undefined || d.nodes !== undefined) {
        add(
          w.nodes !== undefined ? at('nodes') : ['defaults', 'nodes'],
          `names nodes of the file, which a Slurm allocation replaces: give group '${name}' a role in slurm.roles (head, rest, {first: K}, ...)`,
          true,
        );
      } else groupNodes = [];
    } else {
      for (const [i, n] of (w.nodes ?? []).entries()) {
        if (!nodeNames.includes(n)) add(at('nodes', i), `unknown node '${n}'${hint(n, nodeNames)}`);
      }
      if (w.nodes === undefined) {
        for (const [i, n] of (d.nodes ?? []).entries()) if (!nodeNames.includes(n)) add(['defaults', 'nodes', i], `unknown node '${n}'${hint(n, nodeNames)}`);
      }
    }
    const deps = w.dependsOn ?? d.dependsOn ?? [];
    if (w.dependsOn !== undefined) {
      for (const [i, dep] of deps.entries()) {
        if (dep === name) add(at('dependsOn', i), 'a group cannot depend on itself');
        else if (!groupNames.includes(dep)) add(at('dependsOn', i), `unknown worker group '${dep}'${hint(dep, groupNames)}`);
      }
    } else {
      // defaults.dependsOn applies to every group without its own: one naming a group makes it depend on itself.
      for (const [i, dep] of deps.entries()) {
        if (dep === name) add(['defaults', 'dependsOn', i], `group '${dep}' would depend on itself (defaults apply to every group without its own dependsOn: give '${dep}' one, e.g. dependsOn: [])`);
      }
    }
    const restart = { ...d.restart, ...w.restart };
    for (const [i, pattern] of (restart.onLog ?? []).entries()) {
      try {
        new RegExp(pattern);
      } catch (err) {
        const where: ConfigPath = w.restart?.onLog !== undefined ? at('restart', 'onLog', i) : ['defaults', 'restart', 'onLog', i];
        add(where, `expected a regular expression (JavaScript syntax): ${(err as Error).message.replace(/^Invalid regular expression: /, '')}`);
      }
    }
    const stop = { ...d.stop, ...w.stop };
    const health = w.health ?? d.health;
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries({ ...d.env, ...w.env })) env[k] = String(v);
    const cwd = w.cwd ?? d.cwd;
    const port = w.port ?? d.port;
    const ports = { ...d.ports, ...w.ports };
    const replicas = w.replicas ?? d.replicas ?? 1;
    if (port !== undefined && port + replicas - 1 > 65535) {
      add(w.port === undefined && w.replicas !== undefined ? at('replicas') : from('port'), `replica ${name}-${replicas - 1} would get port ${port + replicas - 1}, above 65535`);
    }
    for (const [pn, base] of Object.entries(ports)) {
      if (base + replicas - 1 > 65535) {
        add(w.ports?.[pn] !== undefined ? at('ports', pn) : ['defaults', 'ports', pn], `replica ${name}-${replicas - 1} would get port ${base + replicas - 1} (ports.${pn}), above 65535`);
      }
    }
    const upperNames = new Map<string, string>();
    for (const pn of Object.keys(ports)) {
      const other = upperNames.get(pn.toUpperCase());
      if (other) add(w.ports?.[pn] !== undefined ? at('ports', pn) : ['defaults', 'ports', pn], `ports '${pn}' and '${other}' would both be DYNSUP_PORT_${pn.toUpperCase()}`, true);
      upperNames.set(pn.toUpperCase(), pn);
    }
    // Placeholders: only the known ones; {port} only with a port. `${X}` (from `$${X}`) is the shell's.
    const placeholders = (value: string, path: ConfigPath) => {
      for (const m of value.matchAll(PLACEHOLDER_RE)) {
        const [, dollar, key] = m as unknown as [string, string, string];
        if (dollar) continue;
        if (key.startsWith('ports.')) {
          const pn = key.slice(6);
          if (!Object.hasOwn(ports, pn)) {
            const c = closest(pn, Object.keys(ports));
            add(path, `placeholder '{${key}}' but group '${name}' has no port named '${pn}'${c ? ` (did you mean '{ports.${c}}'?)` : Object.keys(ports).length ? ` (its ports: ${Object.keys(ports).join(', ')})` : ' (set ports: { ' + pn + ': BASE })'}`);
          }
        } else if (!(PLACEHOLDERS as readonly string[]).includes(key)) {
          const c = closest(key, PLACEHOLDERS);
          addOnce(path, `unknown placeholder '{${key}}'${c ? ` (did you mean '{${c}}'?)` : ''}: known are ${SHOWN_PLACEHOLDERS}`);
        } else if (key === 'port' && port === undefined) add(path, `placeholder '{port}' but group '${name}' has no port`);
      }
    };
    if (typeof command === 'string') placeholders(command, from('command'));
    else if (command) for (const [i, a] of command.entries()) placeholders(a, [...from('command'), i]);
    for (const [k, v] of Object.entries({ ...d.env, ...w.env })) {
      if (typeof v === 'string') placeholders(v, [...(w.env?.[k] !== undefined ? at('env') : ['defaults', 'env']), k]);
    }
    if (cwd !== undefined) placeholders(cwd, from('cwd'));
    if (health) placeholders(health.url, [...from('health'), 'url']);
    const preStart = w.preStart ?? d.preStart;
    const postStop = w.postStop ?? d.postStop;
    if (preStart !== undefined) placeholders(preStart, from('preStart'));
    if (postStop !== undefined) placeholders(postStop, from('postStop'));
    const initialDelayMs = ms(restart.initialDelay, 1000);
    const maxDelayMs = ms(restart.maxDelay, 30_000);
    if (maxDelayMs < initialDelayMs) {
      // Point at whichever of the two this group wrote itself; the other may come from defaults.
      if (w.restart?.maxDelay !== undefined) add(at('restart', 'maxDelay'), 'must not be shorter than restart.initialDelay');
      else if (w.restart?.initialDelay !== undefined) add(at('restart', 'initialDelay'), `must not be longer than restart.maxDelay (${d.restart?.maxDelay ?? '30s'}${d.restart?.maxDelay !== undefined ? ', from defaults' : ', the default'})`);
      else add(['defaults', 'restart', 'maxDelay'], 'must not be shorter than restart.initialDelay');
    }
    const nodesPerReplica = w.nodesPerReplica ?? d.nodesPerReplica ?? 1;
    const launchMode = w.launch ?? d.launch;
    const gpus = w.gpus ?? d.gpus ?? 0;
    if (nodesPerReplica > 1 && (w.nodes ?? d.nodes) !== undefined && groupNodes.length < nodesPerReplica && !roleNodes) {
      add(w.nodes !== undefined ? at('nodes') : ['defaults', 'nodes'], `names ${groupNodes.length} node(s) but each replica of '${name}' spans ${nodesPerReplica} (nodesPerReplica)`);
    }
    groups.push({
      name,
      nodesPerReplica,
      launch: launchMode ?? (nodesPerReplica > 1 ? 'ranks' : 'single'),
      ranksPerNode: w.ranksPerNode ?? d.ranksPerNode ?? Math.max(1, gpus),
      mpiArgs: w.mpiArgs ?? d.mpiArgs ?? [],
      argv: command === undefined ? [] : typeof command === 'string' ? ['sh', '-c', command] : command,
      replicas,
      gpus,
      nodes: groupNodes,
      env,
      cwd: cwd === undefined ? undefined : abs(cwd),
      port,
      ...(Object.keys(ports).length ? { ports } : {}),
      ...(preStart !== undefined || postStop !== undefined ? { hooks: { preStart, postStop } } : {}),
      rollout: { maxUnavailable: w.rollout?.maxUnavailable ?? d.rollout?.maxUnavailable ?? 1 },
      restart: {
        policy: restart.policy ?? 'always',
        initialDelayMs,
        factor: restart.factor ?? 2,
        maxDelayMs,
        jitter: restart.jitter ?? 0.1,
        maxRestarts: restart.maxRestarts ?? 5,
        windowMs: ms(restart.window, 60_000),
        resetAfterMs: ms(restart.resetAfter, 30_000),
        gpuReleaseTimeoutMs: ms(restart.gpuReleaseTimeout, 60_000),
        ...(restart.onLog?.length ? { onLog: restart.onLog } : {}),
      },
      stop: { signal: normalizeSignal(stop.signal ?? 'SIGTERM'), graceMs: ms(stop.grace, 10_000) },
      dependsOn: deps,
      health: health && {
        url: health.url,
        intervalMs: ms(health.interval, 1000),
        timeoutMs: ms(health.timeout, 2000),
        startPeriodMs: ms(health.startPeriod, 0),
        failureThreshold: health.failureThreshold ?? 3,
      },
      unsetEnv: w.unsetEnv ?? d.unsetEnv ?? DEFAULT_UNSET_ENV,
    });
  }

  let ordered = topoOrder(groups, (cycle) => add(['workers', cycle[0]!, 'dependsOn'], `dependency cycle: ${cycle.join(' → ')}`));

  // Ports: every replica port and the control plane's must be distinct per node.
  const cp = raw.controlPlane ?? {};
  const nats = {
    enabled: cp.nats?.enabled ?? true,
    binary: cp.nats?.binary ?? 'nats-server',
    args: cp.nats?.args ?? [],
    port: cp.nats?.port ?? 4222,
    monitorPort: cp.nats?.monitorPort ?? 8222,
    jetstream: cp.nats?.jetstream ?? true,
    workerCredentials: cp.nats?.workerCredentials ?? false,
  };
  const etcd = {
    enabled: cp.etcd?.enabled ?? true,
    binary: cp.etcd?.binary ?? 'etcd',
    args: cp.etcd?.args ?? [],
    port: cp.etcd?.port ?? 2379,
    peerPort: cp.etcd?.peerPort ?? 2380,
    auth: cp.etcd?.auth ?? false,
  };
  const metrics = { enabled: raw.metrics?.enabled ?? true, port: raw.metrics?.port ?? 9464, gpuIntervalMs: ms(raw.metrics?.gpuInterval, 5000) };
  const ui = { enabled: raw.ui?.enabled ?? true };
  const cpPorts: [ConfigPath, number][] = controlPlanePorts({ metrics, ui, nats, etcd });
  const seen = new Map<number, string>();
  const seenPath = new Map<number, ConfigPath>();
  const written = (path: ConfigPath) => valueAt(source.data, path) !== undefined;
  for (const [path, p] of cpPorts) {
    const otherPath = seenPath.get(p);
    if (otherPath) {
      // Report at the field the user wrote; the other side may only be a default.
      const [at, other] = written(path) || !written(otherPath) ? [path, otherPath] : [otherPath, path];
      add(at, `port ${p} is also used by ${formatPath(other)}${written(other) ? '' : ' (default)'}`);
    } else {
      seen.set(p, formatPath(path));
      seenPath.set(p, path);
    }
  }

  if (issues.length) return null;

  let placed = place(nodes, ordered);
  if (!placed.ok && alloc && autoSized) {
    // Grow the placeholder allocation until everything fits (bounded: a hopeless file fails as it is).
    const roles = (raw.slurm?.roles ?? {}) as Record<string, RoleSpec>;
    for (let n = nodes.length + 1; n <= nodes.length + 1024 && !placed.ok; n++) {
      const a = previewAllocation(n);
      const r = resolveRoles(a.nodes, roles);
      if (!r.ok) continue;
      const ns = a.nodes.map((name, i) => ({ ...nodes[0]!, name, address: i === 0 ? headAddress : name }));
      const gs = ordered.map((g) => (r.nodes.has(g.name) ? { ...g, nodes: r.nodes.get(g.name)! } : g));
      const p = place(ns, gs);
      if (p.ok) [alloc, nodes, ordered, placed] = [a, ns, gs, p];
    }
  }
  if (!placed.ok) {
    const gpus = nodes[0]?.gpus ?? 0;
    const where = alloc
      ? ` (Slurm allocation: ${alloc.preview ? `${nodes.length} placeholder nodes` : nodes.map((n) => n.name).join(', ')}, ${gpus} GPUs each${gpus ? '' : ': set slurm.gpusPerNode'})`
      : '';
    for (const e of placed.errors) {
      const w = raw.workers[e.group];
      const field = w?.nodesPerReplica !== undefined && e.message.startsWith('not enough whole nodes') ? 'nodesPerReplica' : w?.gpus !== undefined ? 'gpus' : 'replicas';
      add(['workers', e.group, field], `${e.message}${where}`);
    }
    return null;
  }
  // The same check as `scale` (placement.ts): replica ports distinct per node and from the control plane's.
  for (const c of portClashes(placed.replicas, controlPlaneNodes(nodes, !!alloc), seen)) {
    const own: ConfigPath = ['workers', c.replica.group, ...c.field];
    add(valueAt(source.data, own) !== undefined ? own : ['defaults', ...c.field], c.message);
  }
  // A local group's cwd must exist on this machine; a remote node's cannot be checked from here. A cwd with
  // a placeholder ({replica}...) is one directory per replica: not checked either.
  if (options.checkLocalPaths !== false) {
    const local = new Set(nodes.filter((n) => n.transport === 'local').map((n) => n.name));
    for (const g of ordered) {
      if (g.cwd === undefined || g.cwd.includes('{')) continue;
      const on = placed.replicas.find((r) => r.group === g.name && local.has(r.node));
      const problem = on && cwdProblem(g.cwd);
      if (on && problem) {
        if (raw.workers[g.name]!.cwd !== undefined) add(['workers', g.name, 'cwd'], `directory ${shownPath(g.cwd)} ${problem} (group '${g.name}' runs on local node ${on.node})`);
        else addOnce(['defaults', 'cwd'], `directory ${shownPath(g.cwd)} ${problem} (groups on local nodes use it)`);
      }
    }
  }
  if (issues.length) return null;

  const secrets = new Set<string>();
  for (const [name, value] of source.substituted) if (isSecretName(name) && value.length >= 4) secrets.add(value);
  for (const g of groups) for (const [k, v] of Object.entries(g.env)) if (isSecretName(k) && v.length >= 4) secrets.add(v);

  const sl = raw.slurm;
  return {
    file,
    name: raw.name,
    headAddress,
    stateDir,
    leaseMs: ms(raw.lease, 30_000),
    nats,
    etcd,
    metrics,
    ui,
    logs: { maxBytes: raw.logs?.maxSize === undefined ? 100 * 2 ** 20 : parseSize(raw.logs.maxSize), keep: raw.logs?.keep ?? 5 },
    nodes,
    groups: ordered,
    replicas: placed.replicas,
    secrets: [...secrets],
    slurm: sl && {
      nodes: sl.nodes,
      gpusPerNode: sl.gpusPerNode,
      time: sl.time === undefined ? undefined : (slurmTime(sl.time) ?? undefined),
      partition: sl.partition,
      account: sl.account,
      jobName: sl.jobName,
      output: sl.output === undefined ? undefined : abs(sl.output),
      signalLeadSeconds: sl.signalLead === undefined ? undefined : ms(sl.signalLead, 0) / 1000,
      exclusive: sl.exclusive ?? true,
      extraArgs: sl.extraArgs ?? [],
      roles: (sl.roles ?? {}) as Record<string, RoleSpec>,
    },
    allocation: alloc && { jobId: alloc.jobId, nodes: alloc.nodes, preview: Boolean(alloc.preview) },
  };
}

/** `slurm.roles` on the allocation: each group with a role → its nodes. Problems are reported at the role. */
function slurmRoles(
  raw: RawCluster,
  alloc: SlurmAllocation,
  add: (path: ConfigPath, message: string, keyOf?: boolean) => void,
): Map<string, readonly string[]> {
  const roles = (raw.slurm?.roles ?? {}) as Record<string, RoleSpec>;
  const groupNames = Object.keys(raw.workers);
  for (const g of Object.keys(roles)) {
    if (!groupNames.includes(g)) add(['slurm', 'roles', g], `unknown worker group '${g}'${hint(g, groupNames)}`, true);
  }
  const res = resolveRoles(alloc.nodes, roles);
  if (res.ok) return new Map(res.nodes);
  for (const e of res.errors) add(e.index === undefined ? ['slurm', 'roles', e.group] : ['slurm', 'roles', e.group, e.index], e.message);
  return new Map();
}


function resolveNode(
  name: string,
  n: RawNode,
  headAddress: string,
  abs: (p: string) => string,
  add: (path: ConfigPath, message: string, keyOf?: boolean) => void,
): NodeConfig {
  const transport = n.transport ?? 'local';
  const at = (...p: string[]): ConfigPath => ['nodes', name, ...p];
  const sshOnly = ['host', 'port', 'user', 'identityFile', 'knownHosts', 'hostKeyCheck', 'maxSessions'] as const;
  if (transport === 'ssh' && !n.host) add(at(), "missing required field 'host' (transport: ssh)");
  if (transport !== 'ssh') for (const k of sshOnly) if (n[k] !== undefined) add(at(k), `only valid with transport: ssh (this node is ${transport})`, true);
  return {
    name,
    transport,
    gpus: n.gpus ?? 0,
    address: n.address ?? (transport === 'local' ? headAddress : n.host ?? name),
    setup: n.setup ?? [],
    runDir: n.runDir,
    node: n.node,
    ssh:
      transport === 'ssh'
        ? {
            host: n.host ?? '',
            port: n.port ?? 22,
            user: n.user ?? safeUser(),
            identityFile: n.identityFile === undefined ? undefined : abs(n.identityFile),
            knownHosts: abs(n.knownHosts ?? '~/.ssh/known_hosts'),
            hostKeyCheck: n.hostKeyCheck ?? 'strict',
            maxSessions: n.maxSessions ?? 10,
          }
        : undefined,
  };
}

/** A path as shown in a message: quoted when it holds control characters (they must not reach a terminal). */
function shownPath(p: string): string {
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f-\u009f]/.test(p) ? JSON.stringify(p) : p;
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? 'root';
  }
}

function hint(name: string, known: readonly string[]): string {
  const c = closest(name, known);
  return c ? ` (did you mean '${c}'?)` : known.length ? ` (known: ${known.join(', ')})` : '';
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

const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40 };

/** `100MB`, `1GiB`, `4096` → bytes. */
export function parseSize(v: number | string): number {
  if (typeof v === 'number') return v;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v)!;
  return Math.round(Number(m[1]) * (SIZE_UNITS[(m[2] || 'b').toLowerCase()] ?? 1));
}
