/**
 * Parsed command-line flags and the checks of their values. Every option value is checked here, before a
 * command does anything (loads a file, spawns a process, connects): a bad value is a usage error (exit 2)
 * naming the option and what it expects. Imports nothing heavy: `dynsup --help` and `validate` load this.
 */
import { existsSync } from 'node:fs';
import { DynsupError } from '../util/errors.js';

export type Flags = Record<string, string | boolean | undefined>;

/** Options of every command that talks to a supervisor, possibly from another machine. */
export const CLIENT_OPTIONS = {
  head: { type: 'string' },
  creds: { type: 'string' },
} as const;

/** What a value check returns: null when the value is fine, otherwise what the option expects. */
type ValueCheck = (value: string) => string | null;

const nonEmpty: ValueCheck = (v) => (v.trim() ? null : 'a non-empty value');

const positiveSeconds: ValueCheck = (v) => {
  const n = Number(v);
  return /^\s*\d+(\.\d+)?\s*$/.test(v) && Number.isFinite(n) && n > 0 ? null : 'a positive number of seconds (e.g. 300)';
};

const wholeNumber: ValueCheck = (v) => (/^\d+$/.test(v) && Number.isSafeInteger(Number(v)) ? null : 'a whole number (0 or more)');

const hostAddress: ValueCheck = (v) => (/^[^\s/]+$/.test(v) ? null : "the head's address (a host name or IP, no spaces or '/')");

const credentialsFile: ValueCheck = (v) =>
  !v.trim()
    ? 'a credentials file'
    : existsSync(v)
      ? null
      : `a credentials file (no control credentials at ${v}: no such file; copy <stateDir>/run/credentials.json from the head)`;

/** Checks by option name: one option name means one thing in every command. */
const VALUE_CHECKS: Record<string, ValueCheck> = {
  'state-dir': nonEmpty,
  timeout: positiveSeconds,
  lines: wholeNumber,
  head: hostAddress,
  creds: credentialsFile,
};

/** Throws E_USAGE for the first flag whose value is not what its option expects. */
export function checkFlags(flags: Flags): void {
  for (const [name, value] of Object.entries(flags)) {
    if (typeof value !== 'string') continue;
    const check = VALUE_CHECKS[name];
    const expected = check?.(value);
    if (expected) throw new DynsupError('E_USAGE', `--${name} expects ${expected}, got ${JSON.stringify(value)}`);
  }
}

/** `GROUP=N` arguments of `dynsup scale`, checked. */
export function scaleSpecs(specs: readonly string[]): { group: string; count: number }[] {
  return specs.map((spec) => {
    const m = /^([A-Za-z0-9][A-Za-z0-9_.-]*)=(\d+)$/.exec(spec);
    if (!m || !Number.isSafeInteger(Number(m[2]))) throw new DynsupError('E_USAGE', `expected GROUP=N (N a whole number), got '${spec}'`);
    return { group: m[1]!, count: Number(m[2]) };
  });
}
