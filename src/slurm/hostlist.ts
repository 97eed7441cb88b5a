/**
 * Slurm hostlist expressions (`gpu-[01-04,07],login2`), expanded and compressed
 * without calling Slurm, so configs and SLURM_JOB_NODELIST can be understood on
 * machines that have no Slurm client installed. Pure: no I/O.
 *
 * Semantics follow `scontrol show hostnames` (checked against Slurm 22.05):
 *  - commas (and whitespace) outside brackets separate hosts; order and
 *    duplicates are kept;
 *  - a bracket holds comma-separated numbers or `lo-hi` ranges; the printed
 *    width is the width of `lo` as written, so `[08-10]` gives 08 09 10 and
 *    `[8-10]` gives 8 9 10;
 *  - several brackets in one host form a cartesian product, the first bracket
 *    varying slowest (`rack[1-2]-n[01-02]` -> rack1-n01 rack1-n02 rack2-n01 …).
 * Beyond Slurm 22.05 (which rejects them) text after the last bracket is allowed,
 * as newer Slurm and common usage have it: `n[1-3]-ib`.
 * Unlike Slurm, which silently produces garbage for some malformed input
 * (`n[1-3` -> `n]`), every malformed expression throws a HostlistError.
 */

import { DynsupError } from '../util/errors.js';

export class HostlistError extends DynsupError<'E_HOSTLIST'> {
  /** The expression (or host) that was rejected. */
  readonly expr: string;
  /** Offset in `expr` where the problem was found, when it is known. */
  readonly offset: number | undefined;

  constructor(expr: string, problem: string, offset?: number) {
    const where = offset === undefined ? '' : ` at offset ${offset}`;
    super('E_HOSTLIST', `invalid hostlist ${JSON.stringify(expr)}: ${problem}${where}`);
    this.name = 'HostlistError';
    this.expr = expr;
    this.offset = offset;
  }
}

export interface ExpandOptions {
  /**
   * Refuse expressions expanding to more hosts than this (default 65536): a typo
   * such as `n[1-10000000]` should fail loudly, not exhaust memory.
   */
  maxHosts?: number;
}

const DEFAULT_MAX_HOSTS = 65_536;

/** One host template: literal text interleaved with bracket alternatives. */
type Segment = { kind: 'text'; text: string } | { kind: 'set'; values: string[] };

const isSpace = (c: string): boolean => c === ' ' || c === '\t' || c === '\n' || c === '\r';

/** Expands a Slurm hostlist expression into host names, in Slurm's order. */
export function expandHostlist(expr: string, options: ExpandOptions = {}): string[] {
  const maxHosts = options.maxHosts ?? DEFAULT_MAX_HOSTS;
  if (typeof expr !== 'string') throw new HostlistError(String(expr), 'not a string');
  if (expr.trim() === '') throw new HostlistError(expr, 'empty expression');

  const hosts: string[] = [];
  for (const item of splitTopLevel(expr)) {
    const segments = parseHost(expr, item.text, item.offset, maxHosts);
    let count = 1;
    for (const s of segments) if (s.kind === 'set') count *= s.values.length;
    if (hosts.length + count > maxHosts) {
      throw new HostlistError(expr, `expands to more than ${maxHosts} hosts`, item.offset);
    }
    product(segments, 0, '', hosts);
  }
  return hosts;
}

/** Splits at commas/whitespace outside brackets; checks bracket balance. */
function splitTopLevel(expr: string): Array<{ text: string; offset: number }> {
  const items: Array<{ text: string; offset: number }> = [];
  let depth = 0;
  let start = 0;
  let open = -1;
  // A separator directly after another (`a,,b`) or at either end is an empty
  // host: almost always a typo in a config, so it is an error here.
  let sawSeparator = false;
  let lastSeparator = -1;

  const flush = (end: number): void => {
    const text = expr.slice(start, end);
    if (text !== '') items.push({ text, offset: start });
  };

  for (let i = 0; i < expr.length; i++) {
    const c = expr[i]!;
    if (c === '[') {
      if (depth > 0) throw new HostlistError(expr, 'nested "["', i);
      depth = 1;
      open = i;
    } else if (c === ']') {
      if (depth === 0) throw new HostlistError(expr, 'unbalanced "]"', i);
      depth = 0;
    } else if (depth === 0 && (c === ',' || isSpace(c))) {
      flush(i);
      if (c === ',') {
        // Empty if nothing but whitespace since the previous comma (or the start).
        const between = expr.slice(lastSeparator + 1, i);
        if (between.trim() === '') {
          throw new HostlistError(expr, 'empty host name (stray ",")', i);
        }
        sawSeparator = true;
        lastSeparator = i;
      }
      start = i + 1;
    }
  }
  if (depth > 0) throw new HostlistError(expr, 'unbalanced "[" (no closing "]")', open);
  if (sawSeparator && expr.slice(lastSeparator + 1).trim() === '') {
    throw new HostlistError(expr, 'empty host name (trailing ",")', lastSeparator);
  }
  flush(expr.length);
  return items;
}

/** Parses one host template such as `rack[1-2]-n[01-02]` into segments. */
function parseHost(expr: string, item: string, base: number, maxHosts: number): Segment[] {
  const segments: Segment[] = [];
  let i = 0;
  while (i < item.length) {
    const open = item.indexOf('[', i);
    if (open === -1) {
      segments.push({ kind: 'text', text: item.slice(i) });
      break;
    }
    if (open > i) segments.push({ kind: 'text', text: item.slice(i, open) });
    const close = item.indexOf(']', open); // balance already checked
    segments.push({ kind: 'set', values: parseBracket(expr, item.slice(open + 1, close), base + open + 1, maxHosts) });
    i = close + 1;
  }
  return segments;
}

const DIGITS = /^[0-9]+$/;

/** Parses the inside of a bracket: `01-04,07`. Whitespace around parts is ignored. */
function parseBracket(expr: string, body: string, base: number, maxHosts: number): string[] {
  if (body.trim() === '') throw new HostlistError(expr, 'empty "[]"', base - 1);
  const values: string[] = [];
  let offset = base;
  for (const rawPart of body.split(',')) {
    const part = rawPart.trim();
    const at = offset + (rawPart.length - rawPart.trimStart().length);
    offset += rawPart.length + 1;
    if (part === '') throw new HostlistError(expr, 'empty element in "[...]"', at);
    const dash = part.indexOf('-');
    if (dash === -1) {
      if (!DIGITS.test(part)) throw new HostlistError(expr, `"${part}" is not a number`, at);
      values.push(part);
      continue;
    }
    const lo = part.slice(0, dash).trim();
    const hi = part.slice(dash + 1).trim();
    if (!DIGITS.test(lo) || !DIGITS.test(hi)) {
      throw new HostlistError(expr, `"${part}" is not a range of numbers (expected LO-HI)`, at);
    }
    const a = Number(lo);
    const b = Number(hi);
    if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b)) {
      throw new HostlistError(expr, `range "${part}" is out of bounds`, at);
    }
    if (b < a) throw new HostlistError(expr, `reversed range "${part}" (${a} > ${b})`, at);
    if (b - a + 1 > maxHosts) {
      // Checked here too, so the loop below never builds a huge array.
      throw new HostlistError(expr, `range "${part}" expands to more than ${maxHosts} hosts`, at);
    }
    // Slurm pads to the width of the low bound as written (`08-10`, not `8-10`).
    const width = lo.length;
    for (let n = a; n <= b; n++) values.push(String(n).padStart(width, '0'));
  }
  return values;
}

/** Cartesian product, first bracket varying slowest (Slurm's order). */
function product(segments: Segment[], index: number, prefix: string, out: string[]): void {
  if (index === segments.length) {
    out.push(prefix);
    return;
  }
  const s = segments[index]!;
  if (s.kind === 'text') {
    product(segments, index + 1, prefix + s.text, out);
    return;
  }
  for (const v of s.values) product(segments, index + 1, prefix + v, out);
}

/**
 * Compresses host names into a hostlist expression for display, keeping their
 * order (like `scontrol show hostlist`): adjacent hosts that differ only in their
 * last number share one bracket, and consecutive numbers become ranges.
 * `expandHostlist(compressHostlist(hosts))` returns `hosts` exactly.
 */
export function compressHostlist(hosts: readonly string[]): string {
  const groups: Array<{ prefix: string; suffix: string; nums: string[] }> = [];
  for (const host of hosts) {
    if (typeof host !== 'string' || host === '' || /[\s,[\]]/.test(host)) {
      throw new HostlistError(String(host), 'not a valid host name (empty, or contains "[", "]", "," or whitespace)');
    }
    const m = /^(.*?)([0-9]+)([^0-9]*)$/.exec(host);
    const last = groups[groups.length - 1];
    if (!m) {
      groups.push({ prefix: host, suffix: '', nums: [] });
      continue;
    }
    const [, prefix, num, suffix] = m as unknown as [string, string, string, string];
    if (last && last.nums.length > 0 && last.prefix === prefix && last.suffix === suffix) {
      last.nums.push(num);
    } else {
      groups.push({ prefix, suffix, nums: [num] });
    }
  }
  return groups
    .map((g) => {
      if (g.nums.length === 0) return g.prefix;
      if (g.nums.length === 1) return g.prefix + g.nums[0]! + g.suffix;
      return `${g.prefix}[${ranges(g.nums).join(',')}]${g.suffix}`;
    })
    .join(',');
}

/** Folds number strings into `lo-hi` runs that expand back to the same strings. */
function ranges(nums: string[]): string[] {
  const out: string[] = [];
  let lo = nums[0]!;
  let hi = lo;
  for (const s of nums.slice(1)) {
    // s extends the run if it is the next number and, printed at the run's width
    // (the width of lo), it is spelled exactly as s.
    const next = Number(hi) + 1;
    if (Number.isSafeInteger(next) && Number(s) === next && String(next).padStart(lo.length, '0') === s) {
      hi = s;
    } else {
      out.push(lo === hi ? lo : `${lo}-${hi}`);
      lo = hi = s;
    }
  }
  out.push(lo === hi ? lo : `${lo}-${hi}`);
  return out;
}
