/**
 * What every resolution step (resolve-*.ts) shares: the file being resolved and a way to report a problem
 * at a field of it. Steps report and carry on, so one `dynsup validate` shows every problem.
 */
import { homedir, userInfo } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseDuration } from './duration.js';
import type { SlurmAllocation } from '../slurm/allocation.js';
import type { RawCluster } from './schema.js';
import { formatPath, type ConfigIssue, type ConfigPath, type ConfigSource } from './source.js';
import { closest } from './suggest.js';

/** How loadCluster (load.ts) reads a file: here, beside the steps that act on it. */
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

export interface Resolution {
  /** The cluster file (absolute). */
  readonly file: string;
  readonly raw: RawCluster;
  readonly source: ConfigSource;
  readonly options: LoadOptions;
  /** Every problem reported so far. */
  readonly issues: ConfigIssue[];
  /** Report a problem at `path` (`keyOf`: at its key rather than its value). */
  add(path: ConfigPath, message: string, keyOf?: boolean): void;
  /** The same, once per path and message: a field groups take from defaults is reported there once. */
  addOnce(path: ConfigPath, message: string): void;
  /** A path of the file: relative to the file's directory, `~/` the home directory. */
  absPath(p: string): string;
  /** A duration field in ms, or `fallback` (a default as written in the file) when it is not set. */
  durationMs(v: number | string | undefined, fallback: number | string): number;
  /** Whether the file itself sets `path` (rather than it coming from a default). */
  written(path: ConfigPath): boolean;
}

export function resolution(file: string, raw: RawCluster, source: ConfigSource, options: LoadOptions, issues: ConfigIssue[]): Resolution {
  const baseDir = dirname(file);
  const reported = new Set<string>();
  const add = (path: ConfigPath, message: string, keyOf = false): void => void issues.push(source.issue(path, message, keyOf));
  return {
    file,
    raw,
    source,
    options,
    issues,
    add,
    addOnce: (path, message) => {
      const key = `${formatPath(path)}\0${message}`;
      if (!reported.has(key)) add(path, message);
      reported.add(key);
    },
    absPath: (p) => (isAbsolute(p) ? p : p.startsWith('~/') ? resolve(homedir(), p.slice(2)) : resolve(baseDir, p)),
    durationMs: (v, fallback) => parseDuration(v ?? fallback),
    written: (path) => valueAt(source.data, path) !== undefined,
  };
}

/** The value at `path` of a parsed document, or undefined. */
export function valueAt(data: unknown, path: ConfigPath): unknown {
  let v: unknown = data;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg as string];
  }
  return v;
}

/** A path as shown in a message: quoted when it holds control characters (they must not reach a terminal). */
export function shownPath(p: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are what this looks for
  return /[\u0000-\u001f\u007f-\u009f]/.test(p) ? JSON.stringify(p) : p;
}

/** ` (did you mean 'x'?)`, or the known names, for a name that is none of them. */
export function hint(name: string, known: readonly string[]): string {
  const c = closest(name, known);
  return c ? ` (did you mean '${c}'?)` : known.length ? ` (known: ${known.join(', ')})` : '';
}

export function currentUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? 'root';
  }
}
