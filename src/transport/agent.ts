/**
 * The node side of every transport: share/node-agent.sh runs one worker under a lease. This module renders
 * the per-replica spec file it sources and parses the control lines it prints. Pure, except agentScript()
 * and writeHeartbeat().
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { ExitInfo, LaunchSpec } from './types.js';
import { shellJoin, shellQuote } from './ssh/shell-quote.js';

export const AGENT_PATH = fileURLToPath(new URL('../../share/node-agent.sh', import.meta.url));

let cached: string | undefined;
export function agentScript(): string {
  cached ??= readFileSync(AGENT_PATH, 'utf8');
  return cached;
}

export interface AgentOptions {
  readonly mode: 'pipe' | 'spool';
  readonly leaseSeconds: number;
  /** pipe mode: the agent stops its worker as soon as this pid (the supervisor) is gone. */
  readonly watchPid?: number | undefined;
  /** spool mode: the file output is appended to (default RUNDIR/NAME.out). */
  readonly spoolFile?: string | undefined;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The spec file: single-quoted assignments only, so a hostile value is data, never code. */
export function renderSpec(spec: LaunchSpec, opts: AgentOptions): string {
  const lines = [
    '# written by dynsup; sourced by node-agent.sh',
    `A_MODE=${opts.mode}`,
    `A_LEASE=${Math.max(1, Math.ceil(opts.leaseSeconds))}`,
    `A_GRACE=${Math.max(0, Math.ceil(spec.graceSeconds))}`,
    `A_SIG=${spec.stopSignal.replace(/^SIG/, '')}`,
    `A_WATCH_PID=${opts.watchPid ?? ''}`,
    `A_UNSET=${shellQuote(spec.unsetEnv.join(' '))}`,
    `A_CWD=${shellQuote(spec.cwd ?? '')}`,
    `A_OUT=${shellQuote(opts.spoolFile ?? '')}`,
    'a_env() {',
    '  :',
    ...Object.entries(spec.env).map(([k, v]) => {
      if (!ENV_NAME.test(k)) throw new TypeError(`invalid environment variable name ${JSON.stringify(k)}`);
      return `  export ${k}=${shellQuote(v)}`;
    }),
    '}',
    `set -- ${shellJoin(spec.argv)}`,
    '',
  ];
  return lines.join('\n');
}

export type AgentEvent =
  | { readonly kind: 'pid'; readonly pid: number }
  | { readonly kind: 'exit'; readonly rc: number }
  /** The spool's size once the worker is gone (the ssh attach script's last word but one). */
  | { readonly kind: 'size'; readonly bytes: number }
  | { readonly kind: 'error'; readonly message: string };

/**
 * Content for the heartbeat file: different on every call, across supervisors too (the agents' lease
 * runs while the content keeps changing; see share/node-agent.sh).
 */
export function heartbeatToken(): string {
  return `${Date.now()}.${randomBytes(6).toString('hex')}`;
}

/** Renew the lease of every agent using `runDir` (where the head and the agents share a filesystem). */
export async function writeHeartbeat(runDir: string): Promise<void> {
  await writeFile(join(runDir, 'heartbeat'), heartbeatToken(), { mode: 0o600 });
}

export function parseAgentLine(line: string): AgentEvent | null {
  const m = /^dynsup-agent (pid|exit|size|error):? ?(.*)$/.exec(line.trim());
  if (!m) return null;
  if (m[1] === 'pid') return { kind: 'pid', pid: Number(m[2]) };
  if (m[1] === 'exit') return { kind: 'exit', rc: Number(m[2]) };
  if (m[1] === 'size') return { kind: 'size', bytes: Number(m[2]) };
  return { kind: 'error', message: m[2] ?? '' };
}

/** Signal names by number, from the OS's own table (the one metrics and exit reports share). */
// The first name wins: aliases (SIGIOT for SIGABRT, SIGPOLL for SIGIO) come after the usual names.
const SIGNAL_BY_NUMBER: Record<number, NodeJS.Signals> = Object.fromEntries(
  Object.entries(constants.signals)
    .reverse()
    .map(([name, n]) => [n, name as NodeJS.Signals]),
);

/** The shell reports death by signal N as status 128+N. */
export function exitFromStatus(rc: number): ExitInfo {
  if (rc > 128 && rc - 128 in SIGNAL_BY_NUMBER) return { code: null, signal: SIGNAL_BY_NUMBER[rc - 128]! };
  return { code: rc, signal: null };
}
