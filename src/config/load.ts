/**
 * Cluster file → ClusterConfig. Collects every problem (syntax, shape, references, cycles, GPU capacity)
 * before giving up, so one `dynsup validate` run shows them all. Besides reading the file it only looks
 * (never creates): at the state dir (see paths.ts) and at the cwd of groups that run on a local node.
 */
import { resolve } from 'node:path';
import type { z } from 'zod';
import { slurmTime } from '../slurm/sbatch.js';
import { DynsupError } from '../util/errors.js';
import { DEFAULTS } from './defaults.js';
import { stateDirProblem } from './paths.js';
import { resolution, shownPath, valueAt, type LoadOptions, type Resolution } from './resolve-context.js';
import { resolveHeadServices } from './resolve-control-plane.js';
import { resolveGroups } from './resolve-groups.js';
import { requiredOutsideSlurm, resolveNodes, slurmRoleSpecs } from './resolve-nodes.js';
import { checkLocalCwds, placeReplicas } from './resolve-placement.js';
import { checkControlPlanePorts, checkReplicaPorts } from './resolve-ports.js';
import { clusterSchema, type RawCluster } from './schema.js';
import { collectSecrets } from './secrets.js';
import { formatPath, loadSource, parseSource, type ConfigIssue, type ConfigSource } from './source.js';
import { closest } from './suggest.js';
import type { ClusterConfig } from './types.js';

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

export type { LoadOptions };

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

function sortIssues(issues: ConfigIssue[]): ConfigIssue[] {
  return issues.sort((a, b) => a.line - b.line || a.column - b.column);
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
      if (key.length > MAX_QUOTED_KEY)
        return { ...source.issue([...path, key], `unknown field (a key of ${key.length} characters, not shown)${expected}`, true), path: formatPath(path) };
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
    message +=
      path.length === 0 && typeof value === 'string' ? `, got text (${value.length} characters, not shown): not a cluster file` : `, got ${describe(value)}`;
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

/**
 * The parsed file → ClusterConfig, step by step (each in a resolve-*.ts of its own), every problem
 * reported into `issues`; null when there is any.
 */
function resolveCluster(file: string, raw: RawCluster, source: ConfigSource, options: LoadOptions, issues: ConfigIssue[]): ClusterConfig | null {
  const r = resolution(file, raw, source, options, issues);
  const stateDir = resolveStateDir(r);
  if (raw.lease !== undefined && r.durationMs(raw.lease, 0) < MIN_LEASE_MS) {
    r.add(['lease'], `must be at least 1s (node agents stop their workers when the supervisor is silent this long; it pings every quarter lease)`);
  }
  const resolved = resolveNodes(r, stateDir);
  const groups = resolveGroups(
    r,
    resolved.nodes.map((n) => n.name),
    resolved.roleNodes,
  );
  const services = resolveHeadServices(r);
  const controlPlanePorts = checkControlPlanePorts(r, services);
  if (issues.length) return null;

  const placed = placeReplicas(r, resolved, groups);
  if (!placed) return null;
  checkReplicaPorts(r, placed.replicas, placed.nodes, !!placed.allocation, controlPlanePorts);
  if (options.checkLocalPaths !== false) checkLocalCwds(r, placed);
  if (issues.length) return null;

  const { allocation } = placed;
  return {
    file,
    name: raw.name,
    headAddress: resolved.headAddress,
    stateDir,
    leaseMs: r.durationMs(raw.lease, DEFAULTS.lease),
    ...services,
    nodes: placed.nodes,
    groups: placed.groups,
    replicas: placed.replicas,
    secrets: collectSecrets(source, groups),
    slurm: resolveSlurmSection(r),
    allocation: allocation && { jobId: allocation.jobId, nodes: allocation.nodes, preview: Boolean(allocation.preview) },
  };
}

/** `--state-dir`, else the file's stateDir, else .dynsup/<name> beside the file; it must be usable. */
function resolveStateDir(r: Resolution): string {
  const { raw, options } = r;
  const stateDir = options.stateDir ? resolve(options.stateDir) : r.absPath(raw.stateDir ?? `.dynsup/${raw.name}`);
  const problem = stateDirProblem(stateDir);
  if (problem) {
    const what = `state dir ${shownPath(stateDir)} ${problem}`;
    if (options.stateDir) r.issues.push({ file: r.file, line: 0, column: 0, path: '', message: `--state-dir: ${what}` });
    else if (raw.stateDir !== undefined) r.add(['stateDir'], what);
    else r.add(['name'], `${what} (the default, .dynsup/<name> beside the file): set stateDir`);
  }
  return stateDir;
}

/** The `slurm:` section as sbatch uses it (the allocation itself is resolve-nodes.ts's). */
function resolveSlurmSection(r: Resolution): ClusterConfig['slurm'] {
  const slurm = r.raw.slurm;
  return (
    slurm && {
      nodes: slurm.nodes,
      gpusPerNode: slurm.gpusPerNode,
      time: slurm.time === undefined ? undefined : (slurmTime(slurm.time) ?? undefined),
      partition: slurm.partition,
      account: slurm.account,
      jobName: slurm.jobName,
      output: slurm.output === undefined ? undefined : r.absPath(slurm.output),
      signalLeadSeconds: slurm.signalLead === undefined ? undefined : r.durationMs(slurm.signalLead, 0) / 1000,
      exclusive: slurm.exclusive ?? DEFAULTS.slurm.exclusive,
      extraArgs: slurm.extraArgs ?? [],
      roles: slurmRoleSpecs(r.raw),
    }
  );
}
