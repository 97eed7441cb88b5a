/**
 * Text from workers, files and the command line, made safe for a terminal: escape sequences and control
 * characters are shown as visible escapes (`ESC ] 0 ; x BEL` prints as `\e]0;x\a`), so nothing a worker
 * prints can retitle the window, clear the screen, move the cursor, rewrite the line (`\r`) or reorder text
 * (bidi overrides). Kept as they are: tab, and on request newlines (multi-line messages) and SGR colour codes
 * (`ESC [ digits ; m`: colours and bold only change how text looks, and callers keep them only on a TTY).
 *
 * Only what is shown is escaped: log files keep every byte a worker wrote.
 */

export interface EscapeOptions {
  /** Keep `\n` (multi-line error messages). Default false: a newline inside a line is shown as `\n`. */
  readonly keepNewlines?: boolean;
  /** Keep SGR colour codes (`ESC [ … m`). Default false. */
  readonly keepSgr?: boolean;
}

// C0 controls but tab, DEL, C1 controls, bidi embeddings/overrides/isolates, line/paragraph separators.
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
// eslint-disable-next-line no-control-regex
const SGR = /\u001b\[[0-9;:]{0,32}m/y;
const NAMED: Readonly<Record<string, string>> = {
  '\u0000': '\\0',
  '\u0007': '\\a',
  '\b': '\\b',
  '\f': '\\f',
  '\n': '\\n',
  '\r': '\\r',
  '\v': '\\v',
  '\u001b': '\\e',
};

/** The same set as UNSAFE, by code unit. */
function unsafe(c: number): boolean {
  return (c < 0x20 && c !== 0x09) || (c >= 0x7f && c <= 0x9f) || c === 0x2028 || c === 0x2029 || (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

function shown(ch: string): string {
  const named = NAMED[ch];
  if (named) return named;
  const code = ch.charCodeAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** `s` with every unsafe character escaped (see the module comment). */
export function escapeTerminal(s: string, opts: EscapeOptions = {}): string {
  if (!UNSAFE.test(s)) return s;
  let out = '';
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    if (!unsafe(s.charCodeAt(i))) continue;
    const ch = s[i]!;
    if (ch === '\n' && opts.keepNewlines) continue;
    if (ch === '\u001b' && opts.keepSgr) {
      SGR.lastIndex = i;
      const m = SGR.exec(s);
      if (m) {
        i += m[0].length - 1;
        continue;
      }
    }
    out += s.slice(from, i) + shown(ch);
    from = i + 1;
  }
  return out + s.slice(from);
}

/** Whether `s` (already escaped with keepSgr) leaves a colour set: the caller then ends the line with a reset. */
export function hasSgr(s: string): boolean {
  return s.includes('\u001b[');
}

export const SGR_RESET = '\u001b[0m';

/**
 * One log line (no newline) as shown: the same bytes when it is plain printable ASCII (the common case, no
 * copy), else decoded as UTF-8 (invalid bytes shown as U+FFFD), escaped, and with colours reset at its end.
 */
export function escapeLine(line: Buffer, opts: { keepSgr?: boolean } = {}): Buffer {
  for (let i = 0; i < line.length; i++) {
    const b = line[i]!;
    if ((b < 0x20 && b !== 0x09) || b >= 0x7f) return escapeSlow(line, opts.keepSgr ?? false);
  }
  return line;
}

function escapeSlow(line: Buffer, keepSgr: boolean): Buffer {
  const text = escapeTerminal(line.toString('utf8'), { keepSgr });
  return Buffer.from(keepSgr && hasSgr(text) ? text + SGR_RESET : text, 'utf8');
}
