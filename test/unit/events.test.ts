/** The supervisor's own events on a terminal: one line each, prefixed like the workers' lines, escaped. */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createEventLogger } from '../../src/logs/events.js';

function tty(): { stream: Writable & { isTTY: boolean }; text: () => string } {
  let out = '';
  const stream = Object.assign(
    new Writable({
      write(chunk: Buffer | string, _enc, done) {
        out += chunk.toString();
        done();
      },
    }),
    { isTTY: true },
  );
  return { stream, text: () => out };
}

describe('events on a terminal', () => {
  it('print one line per event: time, dynsup |, level, the message with control characters escaped', () => {
    const prev = process.env.NO_COLOR;
    process.env.NO_COLOR = '1';
    try {
      const t = tty();
      const log = createEventLogger({ stream: t.stream, redact: (s) => s.replaceAll('hf_secret', '***') });
      log.info({ replica: 'nats', pid: 42 }, 'nats started (pid 42)');
      log.warn({ replica: 'w-0' }, 'w-0 printed \u001b]0;pwned\u0007 with hf_secret');
      log.error('cannot reach node lab1');
      const lines = t.text().split('\n').filter(Boolean);
      expect(lines).toHaveLength(3);
      for (const l of lines) expect(l).toMatch(/^\d\d:\d\d:\d\d dynsup \| /);
      expect(lines[0]).toMatch(/dynsup \| nats started \(pid 42\)$/);
      expect(lines[1]).toMatch(/dynsup \| warning: w-0 printed \\e\]0;pwned\\a with \*\*\*$/);
      expect(lines[2]).toMatch(/dynsup \| error: cannot reach node lab1$/);
      expect(t.text()).not.toContain('\u001b');
    } finally {
      if (prev === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = prev;
    }
  });
});

describe('events elsewhere (a pipe, supervisor.out behind up -d)', () => {
  it('are the same readable lines, without colour; dynsup logs FILE dynsup shows the JSON log file so, with the date', async () => {
    const { formatEvent } = await import('../../src/logs/event-format.js');
    let out = '';
    const stream = new Writable({
      write(chunk: Buffer | string, _enc, done) {
        out += chunk.toString();
        done();
      },
    });
    const log = createEventLogger({ stream });
    log.warn({ replica: 'w-0' }, 'w-0 exited with code 3');
    log.flush();
    await new Promise((r) => setTimeout(r, 50));
    expect(out).toMatch(/^\d\d:\d\d:\d\d dynsup \| warning: w-0 exited with code 3\n$/);
    expect(out).not.toMatch(/[{}\u001b]/);
    const t = new Date(2026, 11, 1, 4, 5, 6).getTime();
    expect(formatEvent(JSON.stringify({ level: 50, time: t, msg: 'boom \u001b[2J' }), { date: true })).toBe('2026-12-01 04:05:06 dynsup | error: boom \\e[2J');
    expect(formatEvent('not json: a stack line')).toMatch(/dynsup \| not json: a stack line$/);
  });
});
