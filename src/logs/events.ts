/** dynsup's own events (started, exited, restarting, failed...): pino, pretty on a TTY, JSON otherwise, and always JSON to <stateDir>/logs/dynsup.log. */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import { escapeTerminal } from '../util/terminal-escape.js';

export type EventLogger = Logger;

export interface EventLoggerOptions {
  readonly stateDir?: string | undefined;
  /** Where human-facing events go (default stderr). */
  readonly stream?: NodeJS.WritableStream & { isTTY?: boolean };
  readonly level?: string;
  /** Removes secrets from every message before it is written. */
  readonly redact?: (s: string) => string;
}

export function createEventLogger(opts: EventLoggerOptions = {}): EventLogger {
  const out = opts.stream ?? process.stderr;
  const redact = opts.redact ?? ((s: string) => s);
  const streams: pino.StreamEntry[] = [];
  const console =
    out.isTTY && !process.env.NO_COLOR
      ? pretty({ destination: terminalSafe(out), sync: true, colorize: true, ignore: 'pid,hostname', translateTime: 'HH:MM:ss' })
      : (out as NodeJS.WritableStream);
  streams.push({ stream: console, level: (opts.level ?? 'info') as pino.Level });
  if (opts.stateDir) {
    const dir = join(opts.stateDir, 'logs');
    mkdirSync(dir, { recursive: true });
    streams.push({ stream: pino.destination({ dest: join(dir, 'dynsup.log'), append: true, sync: true }), level: 'debug' });
  }
  return pino(
    {
      base: undefined,
      level: 'debug',
      hooks: {
        // Redaction of values (tokens), not just of known field paths: a token may show up inside a message.
        streamWrite: (s: string) => redact(s),
      },
    },
    pino.multistream(streams),
  );
}

/**
 * The pretty view's destination: messages may quote workers and files, so control characters and escape
 * sequences are escaped on the way to the terminal, keeping pino-pretty's colours and its newlines. (The JSON
 * views need nothing: JSON escapes control characters.)
 */
function terminalSafe(out: NodeJS.WritableStream): NodeJS.WritableStream {
  return new Writable({
    write(chunk: Buffer | string, _enc, done) {
      out.write(escapeTerminal(chunk.toString(), { keepNewlines: true, keepSgr: true }));
      done();
    },
  });
}

/** A redactor replacing each secret value with ***. */
export function makeRedactor(secrets: readonly string[]): (s: string) => string {
  const sorted = [...new Set(secrets)].filter((s) => s.length >= 4).sort((a, b) => b.length - a.length);
  if (!sorted.length) return (s) => s;
  const variants = sorted.flatMap((s) => [s, JSON.stringify(s).slice(1, -1)]);
  const re = new RegExp([...new Set(variants)].map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'g');
  return (s) => s.replace(re, '***');
}
