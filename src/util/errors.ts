/**
 * The one error root: every condition dynsup knows about is a DynsupError (or a subclass: ConfigError,
 * SshError, HostlistError, InterpolationError) with a stable code and, where another error caused it,
 * `cause`. The CLI prints their message and exits with their exitCode; only anything else is an
 * internal error.
 */

/** Stable codes; scripts and the transport match on them, so never rename one. */
export type ErrorCode =
  | 'E_CONFIG' // the cluster file is invalid (ConfigError: every problem at FILE:LINE:COLUMN)
  | 'E_USAGE' // bad command-line input, or a request that cannot be done as asked
  | 'E_AUTH' // a control request without valid proof of the cluster's credentials (refused), or credentials the supervisor refuses
  | 'E_INTERPOLATION' // a `${VAR}` in the cluster file that cannot be expanded (InterpolationError)
  | 'E_HOSTLIST' // a malformed Slurm hostlist expression (HostlistError)
  | 'E_PORT_IN_USE'
  | 'E_CONTROL_PLANE'
  | 'E_LAUNCH'
  | 'E_NODE'
  | 'E_NOT_RUNNING'
  | 'E_ALREADY_RUNNING'
  | 'E_TIMEOUT'
  | 'E_INTERNAL'
  // SSH (SshError, transport/ssh/connection.ts):
  | 'E_SSH_HOSTKEY_UNKNOWN' // strict and the host (or this key) is not in known_hosts, or known_hosts unreadable
  | 'E_SSH_HOSTKEY_MISMATCH' // known_hosts has other keys for this host: possible MITM or reinstall
  | 'E_SSH_HOSTKEY_REVOKED' // the key is listed under @revoked
  | 'E_SSH_AUTH' // the server accepted none of our keys
  | 'E_SSH_UNREACHABLE' // no TCP connection: refused, no route, DNS
  | 'E_SSH_TIMEOUT' // no handshake within readyTimeout, TCP connect timeout, or keepalives unanswered
  | 'E_SSH_IDENTITY' // identity file missing, unreadable, not a key, or passphrase-protected
  | 'E_SSH_CLOSED' // the connection closed (before login, or later while in use)
  | 'E_SSH_CHANNEL' // the connection is fine but the server refused a new channel/command (MaxSessions)
  | 'E_SSH_REMOTE'; // a helper's remote command failed (writeFile), with its stderr

/** Exit codes of the CLI: 2 for anything the user must fix in their input, 1 for runtime failures. */
export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

/** Codes that mean "fix your input" (exit 2). */
const USAGE_CODES: ReadonlySet<string> = new Set<ErrorCode>(['E_CONFIG', 'E_USAGE', 'E_AUTH', 'E_INTERPOLATION', 'E_HOSTLIST']);

export class DynsupError<C extends ErrorCode = ErrorCode> extends Error {
  readonly code: C;
  readonly exitCode: number;
  constructor(code: C, message: string, options?: { cause?: unknown; exitCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DynsupError';
    this.code = code;
    this.exitCode = options?.exitCode ?? (USAGE_CODES.has(code) ? EXIT_USAGE : EXIT_RUNTIME);
  }
}

/**
 * An operating-system error (ENOENT, EACCES, EADDRINUSE...: Node's errors with a `syscall`): a condition of
 * the machine, not a bug in dynsup.
 */
export function isSystemError(err: unknown): err is NodeJS.ErrnoException & { code: string; syscall: string } {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && typeof (err as NodeJS.ErrnoException).syscall === 'string';
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
