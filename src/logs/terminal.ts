/**
 * The foreground view: every worker line prefixed with its replica name (coloured on a TTY), like
 * `docker compose up`. A terminal or pipe that cannot keep up loses display lines (counted and announced),
 * never the workers' speed and never the log files. Escape sequences and control characters a worker prints
 * are shown escaped (its SGR colours are kept on a colour TTY, reset at the end of the line); the log files
 * keep the exact bytes.
 */
import type { LineOutput } from './batched-output.js';
import { escapeTerminal, hasSgr, SGR_RESET } from '../util/terminal-escape.js';

const COLOURS = [36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96];
const MAX_BACKLOG = 4 * 1024 * 1024;

export class TerminalMux {
  readonly #out: LineOutput;
  readonly #colour: boolean;
  readonly #width: number;
  readonly #colourOf = new Map<string, number>();
  readonly #redact: (s: string) => string;
  #dropped = 0;

  /** `out`: a BatchedOutput where lines come fast (a foreground supervisor, `dynsup logs`). */
  constructor(out: LineOutput, names: readonly string[], redact: (s: string) => string = (s) => s) {
    this.#out = out;
    this.#colour = Boolean(out.isTTY) && !process.env.NO_COLOR;
    this.#width = Math.min(24, Math.max(0, ...names.map((n) => n.length)));
    this.#redact = redact;
    names.forEach((n, i) => this.#colourOf.set(n, COLOURS[i % COLOURS.length]!));
  }

  line(replica: string, line: Buffer, truncatedBytes = 0): void {
    if (this.#out.writableLength > MAX_BACKLOG) {
      this.#dropped++;
      return;
    }
    let text = escapeTerminal(this.#redact(line.toString('utf8')), { keepSgr: this.#colour });
    if (this.#colour && hasSgr(text)) text += SGR_RESET;
    if (truncatedBytes) text += ` …[${truncatedBytes} more bytes in the log file]`;
    if (this.#dropped) {
      this.#out.write(`${this.#prefix('dynsup')}[${this.#dropped} lines not shown: terminal too slow; see the log files]\n`);
      this.#dropped = 0;
    }
    this.#out.write(`${this.#prefix(replica)}${text}\n`);
  }

  #prefix(name: string): string {
    const padded = `${name.padEnd(this.#width)} | `;
    if (!this.#colour) return padded;
    const c = this.#colourOf.get(name) ?? 37;
    return `\x1b[${c}m${padded}\x1b[0m`;
  }
}
