/** What workers, files and arguments may put on a terminal: escape sequences and control characters arrive escaped. */
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { TerminalMux } from '../../src/logs/terminal.js';
import { escapeLine, escapeTerminal } from '../../src/util/terminal-escape.js';

const ESC = '\u001b';
// Anything a terminal acts on: C0 but tab, DEL, C1, bidi controls, line/paragraph separators.
const ACTIVE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

describe('escapeTerminal', () => {
  it.each([
    ['plain text', 'hello world', {}, 'hello world'],
    ['window title and clear screen', `${ESC}]0;pwned\u0007${ESC}[2J`, {}, '\\e]0;pwned\\a\\e[2J'],
    ['tab is kept', 'a\tb', {}, 'a\tb'],
    ['carriage return (overwrites the line)', 'fake ok\rreal', {}, 'fake ok\\rreal'],
    ['newline in a line', 'a\nb', {}, 'a\\nb'],
    ['newline kept in a message', 'a\nb', { keepNewlines: true }, 'a\nb'],
    ['NUL, bell, backspace, form feed, vertical tab', '\u0000\u0007\b\f\v', {}, '\\0\\a\\b\\f\\v'],
    ['other C0', '\u0001\u001f', {}, '\\x01\\x1f'],
    ['DEL', 'a\u007fb', {}, 'a\\x7fb'],
    ['C1 CSI and OSC', '\u009b2J\u009d0;t\u009c', {}, '\\x9b2J\\x9d0;t\\x9c'],
    ['bidi override (reorders what is shown)', 'abc\u202edcba', {}, 'abc\\u202edcba'],
    ['bidi isolate', '\u2066x\u2069', {}, '\\u2066x\\u2069'],
    ['line separator', 'a\u2028b', {}, 'a\\u2028b'],
    ['non-ASCII text is not touched', 'héllo ✓ 日本 🚀', {}, 'héllo ✓ 日本 🚀'],
    ['SGR colour escaped by default', `${ESC}[31mred${ESC}[0m`, {}, '\\e[31mred\\e[0m'],
    ['SGR colour kept when asked', `${ESC}[31mred${ESC}[0m`, { keepSgr: true }, `${ESC}[31mred${ESC}[0m`],
    ['SGR 256 colours and bold kept', `${ESC}[1;38;5;196mx${ESC}[m`, { keepSgr: true }, `${ESC}[1;38;5;196mx${ESC}[m`],
    ['clear screen is not SGR', `${ESC}[2J`, { keepSgr: true }, '\\e[2J'],
    ['cursor movement is not SGR', `${ESC}[10;10H${ESC}[A`, { keepSgr: true }, '\\e[10;10H\\e[A'],
    ['private mode (hide cursor) is not SGR', `${ESC}[?25l`, { keepSgr: true }, '\\e[?25l'],
    ['unterminated SGR', `${ESC}[31`, { keepSgr: true }, '\\e[31'],
    ['title next to a colour', `${ESC}[32mok${ESC}]0;t\u0007`, { keepSgr: true }, `${ESC}[32mok\\e]0;t\\a`],
    ['lone ESC at the end', `x${ESC}`, { keepSgr: true }, 'x\\e'],
  ])('%s', (_what, input, opts, want) => {
    const out = escapeTerminal(input, opts);
    expect(out).toBe(want);
    if (!('keepSgr' in opts) && !('keepNewlines' in opts)) expect(ACTIVE.test(out)).toBe(false);
  });

  it('returns the same string when there is nothing to escape', () => {
    const s = 'x'.repeat(1000);
    expect(escapeTerminal(s)).toBe(s);
  });

  it('leaves nothing active in any single character', () => {
    for (let c = 0; c < 0x3000; c++) {
      const out = escapeTerminal(`a${String.fromCharCode(c)}b`);
      expect(ACTIVE.test(out), `U+${c.toString(16)}`).toBe(false);
    }
  });
});

describe('escapeLine (log lines as shown)', () => {
  it('gives printable ASCII back as the same buffer', () => {
    const b = Buffer.from('INFO ready on port 8000\twith tab');
    expect(escapeLine(b)).toBe(b);
  });

  it('escapes the title, clear-screen and C1 sequences', () => {
    expect(escapeLine(Buffer.from(`${ESC}]0;pwned\u0007${ESC}[2J`)).toString()).toBe('\\e]0;pwned\\a\\e[2J');
    expect(escapeLine(Buffer.from([0x61, 0xc2, 0x9b, 0x32, 0x4a])).toString()).toBe('a\\x9b2J');
  });

  it('shows invalid UTF-8 as U+FFFD (a raw 0x9b byte is CSI to an 8-bit terminal)', () => {
    expect(escapeLine(Buffer.from([0x61, 0x9b, 0x32, 0x4a])).toString()).toBe('a\ufffd2J');
  });

  it('keeps colours when asked and resets them at the end of the line', () => {
    expect(escapeLine(Buffer.from(`${ESC}[31mred`), { keepSgr: true }).toString()).toBe(`${ESC}[31mred${ESC}[0m`);
    expect(escapeLine(Buffer.from(`${ESC}[31mred`)).toString()).toBe('\\e[31mred');
  });
});

describe('TerminalMux', () => {
  const capture = (tty: boolean) => {
    const out = Object.assign(new PassThrough(), { isTTY: tty });
    let text = '';
    out.on('data', (d: Buffer) => (text += d.toString()));
    return { out, text: () => text };
  };

  it('escapes what a worker prints, on a pipe', () => {
    const { out, text } = capture(false);
    const mux = new TerminalMux(out, ['w-0', 'w-1']);
    mux.line('w-0', Buffer.from(`${ESC}]0;pwned\u0007${ESC}[2J${ESC}[31mred`));
    expect(text()).toBe('w-0 | \\e]0;pwned\\a\\e[2J\\e[31mred\n');
  });

  it('keeps worker colours on a TTY (reset at the end), nothing else', () => {
    const saved = process.env.NO_COLOR;
    delete process.env.NO_COLOR;
    try {
      const { out, text } = capture(true);
      const mux = new TerminalMux(out, ['w-0']);
      mux.line('w-0', Buffer.from(`${ESC}[2J${ESC}[31mred`));
      expect(text()).toContain(`\\e[2J${ESC}[31mred${ESC}[0m\n`);
      expect(text()).not.toContain(`${ESC}[2J`);
    } finally {
      if (saved !== undefined) process.env.NO_COLOR = saved;
    }
  });
});
