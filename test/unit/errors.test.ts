/** One error root: every error dynsup defines is a DynsupError with a stable code, an exit code and `cause`. */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/load.js';
import { interpolate, InterpolationError } from '../../src/config/interpolate.js';
import { expandHostlist, HostlistError } from '../../src/slurm/hostlist.js';
import { SshError } from '../../src/transport/ssh/connection.js';
import { DynsupError, EXIT_RUNTIME, EXIT_USAGE, isSystemError } from '../../src/util/errors.js';

const SRC = join(import.meta.dirname, '../../src');
const sources = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('did not throw');
}

describe('error root', () => {
  it('no class in src extends Error except DynsupError', () => {
    const roots = sources(SRC).flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/class (\w+)(?:<[^>]*>)? extends Error\b/g)].map((m) => m[1]));
    expect(roots).toEqual(['DynsupError']);
  });

  it('HostlistError: E_HOSTLIST, a usage error, its own fields kept', () => {
    const e = thrown(() => expandHostlist('n[1-')) as HostlistError;
    expect(e).toBeInstanceOf(HostlistError);
    expect(e).toBeInstanceOf(DynsupError);
    expect([e.name, e.code, e.exitCode, e.expr]).toEqual(['HostlistError', 'E_HOSTLIST', EXIT_USAGE, 'n[1-']);
  });

  it('InterpolationError: E_INTERPOLATION, a usage error', () => {
    const e = thrown(() => interpolate('${NOPE_NOT_SET}', {})) as InterpolationError;
    expect(e).toBeInstanceOf(InterpolationError);
    expect(e).toBeInstanceOf(DynsupError);
    expect([e.name, e.code, e.exitCode]).toEqual(['InterpolationError', 'E_INTERPOLATION', EXIT_USAGE]);
    expect(e.message).toMatch(/NOPE_NOT_SET is not set/);
  });

  it('SshError: its E_SSH_* code, a runtime error, node/target and cause kept', () => {
    const cause = new Error('ECONNREFUSED');
    const e = new SshError('E_SSH_UNREACHABLE', 'n1', 'u@h:22', 'cannot reach h:22', cause);
    expect(e).toBeInstanceOf(DynsupError);
    expect([e.name, e.code, e.exitCode, e.node, e.target, e.cause]).toEqual(['SshError', 'E_SSH_UNREACHABLE', EXIT_RUNTIME, 'n1', 'u@h:22', cause]);
    expect(e.message).toBe('node n1 (u@h:22): cannot reach h:22');
  });

  it('ConfigError: E_CONFIG, a usage error', () => {
    const e = new ConfigError([{ file: 'f.yaml', line: 1, column: 2, path: 'x', message: 'bad' }]);
    expect(e).toBeInstanceOf(DynsupError);
    expect([e.code, e.exitCode, e.message]).toEqual(['E_CONFIG', EXIT_USAGE, 'f.yaml:1:2: x: bad']);
  });

  it('tells operating-system errors (a condition, not a bug) from others', () => {
    const sys = thrown(() => readFileSync('/nonexistent/dynsup'));
    expect(isSystemError(sys)).toBe(true);
    expect(isSystemError(new TypeError('x'))).toBe(false);
    expect(isSystemError(Object.assign(new Error('x'), { code: 'E_USAGE' }))).toBe(false);
  });
});
