/** Plain aligned text table. Cells may quote workers (status messages): control characters are escaped. */
import { escapeTerminal } from '../util/terminal-escape.js';

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const safe = rows.map((r) => r.map((c) => escapeTerminal(c)));
  const widths = header.map((h, i) => Math.max(h.length, ...safe.map((r) => (r[i] ?? '').length)));
  const fmt = (r: readonly string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return `${[fmt(header), ...safe.map(fmt)].join('\n')}\n`;
}
