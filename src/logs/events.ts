/**
 * dynsup's own events (started, exited, restarting, failed...): pino; one readable line each on the
 * supervisor's output, the way `docker compose` prints (time, `dynsup |`, the message; coloured by level on
 * a terminal), and JSON to <stateDir>/logs/dynsup.log.
 */
import { mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import { formatEvent } from './event-format.js';

export type EventLogger = Logger;

export interface EventLoggerOptions {
  readonly stateDir?: string | undefined;
  /** Where human-facing events go (default stderr). */
  readonly stream?: NodeJS.WritableStream & { isTTY?: boolean };
  readonly level?: string;
  /** Removes secrets from every message before it is written. */
  readonly redact?: (s: string) => string;
  /** Also gets every event's JSON line (redacted), in process (the web view's timeline). */
  readonly tap?: (line: string) => void;
}

export function createEventLogger(opts: EventLoggerOptions = {}): EventLogger {
  const out = opts.stream ?? process.stderr;
  const redact = opts.redact ?? ((s: string) => s);
  const streams: pino.StreamEntry[] = [];
  const console = terminalLines(out, Boolean(out.isTTY) && !process.env.NO_COLOR);
  streams.push({ stream: console, level: (opts.level ?? 'info') as pino.Level });
  if (opts.stateDir) {
    const dir = join(opts.stateDir, 'logs');
    mkdirSync(dir, { recursive: true });
    streams.push({ stream: eventFile(join(dir, 'dynsup.log')), level: 'debug' });
  }
  const tap = opts.tap;
  if (tap) streams.push({ stream: { write: (s: string) => tap(s) }, level: 'info' });
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
 * The event log file, written synchronously (an event is on disk before the next step), and never fatal:
 * a full or failing disk drops events instead of throwing into the supervisor (which must still stop
 * its workers when asked).
 */
function eventFile(path: string): { write(s: string): void } {
  const fd = openSync(path, 'a', 0o640);
  return {
    write(s: string) {
      try {
        writeSync(fd, s);
      } catch {
        /* disk full or failing: the terminal view and the workers go on */
      }
    },
  };
}

/**
 * The readable view of events (event-format.ts): one line per event. The supervisor's output is for
 * people (a terminal, or supervisor.out behind `up -d`, whose last lines `up` shows when it fails): JSON
 * only goes to the event log file.
 */
function terminalLines(out: NodeJS.WritableStream, colour: boolean): NodeJS.WritableStream {
  return new Writable({
    write(chunk: Buffer | string, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) out.write(`${formatEvent(line, { colour })}\n`);
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
