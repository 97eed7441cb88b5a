/**
 * POSIX shell quoting for command lines sent over SSH (the remote login shell parses them again).
 *
 * Single quotes are the only POSIX quoting with no special characters inside, so the one rule is:
 * wrap in '...' and write each embedded ' as '\'' (close, escaped quote, reopen). Newlines, `$( )`,
 * backticks, backslashes, globs and `~` are all literal between single quotes, in sh, dash, bash and zsh.
 */

/**
 * Words made only of these characters mean the same quoted or not; left bare so logs stay readable.
 * `=` is deliberately absent: a bare `A=b` in command position is an assignment, not a word.
 */
const SAFE_WORD = /^[A-Za-z0-9_@%+:,./-]+$/;

/**
 * Quote one argument so that a POSIX shell reads it back as exactly `s`, one word.
 * Throws on NUL: no shell argument can hold one, so it could never round-trip.
 */
export function shellQuote(s: string): string {
  if (s.includes('\0')) throw new TypeError('shellQuote: a shell word cannot contain a NUL character');
  if (SAFE_WORD.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Quote each argument and join with spaces: an argv as one command line for `sh -c`. */
export function shellJoin(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}
