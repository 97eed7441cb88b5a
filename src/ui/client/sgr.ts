/**
 * ANSI colours in log lines, for the page: a line (already made safe by the server: every escape sequence
 * other than SGR `ESC [ … m` arrives as visible text) split into runs of text with the style in force.
 * Pure, no DOM: unit-tested (test/unit/ui-sgr.test.ts) and bundled into the page.
 */

export interface Style {
  /** 0-15: the basic and bright palette (a CSS class); a `#rrggbb` string for 256-colour and true colour. */
  readonly fg?: number | string;
  readonly bg?: number | string;
  readonly bold?: true;
  readonly dim?: true;
  readonly italic?: true;
  readonly underline?: true;
  readonly inverse?: true;
}

export interface Run {
  readonly text: string;
  readonly style: Style;
}

// eslint-disable-next-line no-control-regex
const SGR = /\u001b\[([0-9;:]*)m/g;

/** xterm's 256-colour palette entry as #rrggbb (16-231 the cube, 232-255 greys); 0-15 stay palette indices. */
export function xterm256(n: number): number | string {
  if (n < 16) return n;
  const hex = (v: number) => v.toString(16).padStart(2, '0');
  if (n >= 232) {
    const g = 8 + (n - 232) * 10;
    return `#${hex(g)}${hex(g)}${hex(g)}`;
  }
  const i = n - 16;
  const level = (v: number) => (v ? 55 + v * 40 : 0);
  return `#${hex(level(Math.floor(i / 36)))}${hex(level(Math.floor(i / 6) % 6))}${hex(level(i % 6))}`;
}

/** Apply one SGR parameter list to a style. Unknown codes are ignored (as terminals do). */
export function applySgr(style: Style, params: string): Style {
  const codes = params === '' ? [0] : params.split(/[;:]/).map((p) => (p === '' ? 0 : Number(p)));
  let s: { -readonly [K in keyof Style]: Style[K] } = { ...style };
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i]!;
    if (c === 0) s = {};
    else if (c === 1) s.bold = true;
    else if (c === 2) s.dim = true;
    else if (c === 3) s.italic = true;
    else if (c === 4) s.underline = true;
    else if (c === 7) s.inverse = true;
    else if (c === 22) {
      delete s.bold;
      delete s.dim;
    } else if (c === 23) delete s.italic;
    else if (c === 24) delete s.underline;
    else if (c === 27) delete s.inverse;
    else if (c >= 30 && c <= 37) s.fg = c - 30;
    else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
    else if (c === 39) delete s.fg;
    else if (c >= 40 && c <= 47) s.bg = c - 40;
    else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
    else if (c === 49) delete s.bg;
    else if (c === 38 || c === 48) {
      const key = c === 38 ? 'fg' : 'bg';
      if (codes[i + 1] === 5 && codes[i + 2] !== undefined) {
        s[key] = xterm256(Math.min(255, Math.max(0, codes[i + 2]!)));
        i += 2;
      } else if (codes[i + 1] === 2 && codes[i + 4] !== undefined) {
        const hex = (v: number) => Math.min(255, Math.max(0, v)).toString(16).padStart(2, '0');
        s[key] = `#${hex(codes[i + 2]!)}${hex(codes[i + 3]!)}${hex(codes[i + 4]!)}`;
        i += 4;
      } else break; // malformed: the rest cannot be read
    }
  }
  return s;
}

/** Split a line into styled runs; `start` is the style in force at its beginning (lines do not carry it over by default). */
export function parseSgr(line: string, start: Style = {}): Run[] {
  const runs: Run[] = [];
  let style = start;
  let last = 0;
  SGR.lastIndex = 0;
  for (let m = SGR.exec(line); m; m = SGR.exec(line)) {
    if (m.index > last) runs.push({ text: line.slice(last, m.index), style });
    style = applySgr(style, m[1]!);
    last = SGR.lastIndex;
  }
  if (last < line.length) runs.push({ text: line.slice(last), style });
  return runs;
}
