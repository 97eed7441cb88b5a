/**
 * dynsup's events (pino JSON lines, as in <stateDir>/logs/dynsup.log) as people read them: one line each,
 * `time dynsup | warning: message`, like `docker compose`. Used for the supervisor's own output (terminal,
 * and supervisor.out behind `up -d`) and by `dynsup logs FILE dynsup`. Light: `logs` loads no pino for it.
 * Messages may quote workers and files, so control characters and escape sequences are escaped.
 */
import { escapeTerminal } from '../util/terminal-escape.js';

const LEVEL_COLOUR: Record<number, string> = { 40: '33', 50: '31', 60: '31' };

/** One event line (JSON, or any other text, shown as it is) as a readable line, without its newline. */
export function formatEvent(line: string, opts: { colour?: boolean; date?: boolean } = {}): string {
  let e: { level?: number; time?: number; msg?: string };
  try {
    e = JSON.parse(line) as typeof e;
    if (!e || typeof e !== 'object') e = { msg: line };
  } catch {
    e = { msg: line };
  }
  const at = new Date(e.time ?? Date.now());
  // Local time, as a terminal's clock shows it; with the date where events span days (the log file).
  const time = opts.date
    ? `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ${at.toTimeString().slice(0, 8)}`
    : at.toTimeString().slice(0, 8);
  const level = e.level ?? 30;
  const tag = level >= 50 ? 'error: ' : level >= 40 ? 'warning: ' : '';
  const text = `${time} dynsup | ${tag}${escapeTerminal(String(e.msg ?? ''))}`;
  const c = opts.colour ? LEVEL_COLOUR[level] : undefined;
  return c ? `\x1b[${c}m${text}\x1b[0m` : text;
}

const pad = (n: number) => String(n).padStart(2, '0');
