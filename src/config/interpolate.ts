/**
 * Compose-style interpolation from the head's environment: `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
 * `${VAR:?message}`, and `$$` for a literal `$`. A bare `$VAR` (no braces) is left alone so shell commands
 * in the file keep working. An unset `${VAR}` without a default is an error: silently passing an empty
 * HF_TOKEN to a GPU worker wastes far more time than a config error.
 */
import { DynsupError } from '../util/errors.js';

export interface InterpolationResult {
  readonly value: string;
  /** Names of variables that were substituted. */
  readonly used: readonly string[];
}

export class InterpolationError extends DynsupError<'E_INTERPOLATION'> {
  constructor(message: string) {
    super('E_INTERPOLATION', message);
    this.name = 'InterpolationError';
  }
}

const VAR_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function interpolate(input: string, env: Readonly<Record<string, string | undefined>>): InterpolationResult {
  let out = '';
  const used: string[] = [];
  let i = 0;
  while (i < input.length) {
    const ch = input[i]!;
    if (ch !== '$') {
      out += ch;
      i++;
      continue;
    }
    const next = input[i + 1];
    if (next === '$') {
      out += '$';
      i += 2;
      continue;
    }
    if (next !== '{') {
      out += ch;
      i++;
      continue;
    }
    const close = findClose(input, i + 2);
    if (close < 0) throw new InterpolationError(`unterminated '\${' at offset ${i}`);
    const body = input.slice(i + 2, close);
    out += expand(body, env, used);
    i = close + 1;
  }
  return { value: out, used };
}

function findClose(s: string, from: number): number {
  let depth = 1;
  for (let j = from; j < s.length; j++) {
    if (s[j] === '{') depth++;
    else if (s[j] === '}' && --depth === 0) return j;
  }
  return -1;
}

function expand(body: string, env: Readonly<Record<string, string | undefined>>, used: string[]): string {
  const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([\s\S]*))?$/.exec(body);
  if (!m) {
    throw new InterpolationError(VAR_RE.test(body.split(/[:?-]/)[0] ?? '') ? `invalid substitution '\${${body}}'` : `invalid variable name in '\${${body}}'`);
  }
  const [, name, colon, op, rest] = m as unknown as [string, string, string | undefined, string | undefined, string | undefined];
  const raw = env[name];
  const missing = raw === undefined || (colon === ':' && raw === '');
  if (!missing) {
    used.push(name);
    return raw;
  }
  if (op === '-') {
    const inner = interpolate(rest ?? '', env);
    used.push(...inner.used);
    return inner.value;
  }
  if (op === '?') throw new InterpolationError(`variable ${name} is required: ${rest || 'not set'}`);
  throw new InterpolationError(`variable ${name} is not set (write \${${name}:-} to allow it to be empty)`);
}
