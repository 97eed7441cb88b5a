/**
 * The CLI's code cache (scripts/build/cli.mjs, bin/dynsup.js): the build writes one, commands use it, and
 * a cache that is not the bundle's own is never used: V8 checks a cache against the source's length only,
 * so a cache from another build of the same length would run the other build's code. Checked through
 * DYNSUP_CODE_CACHE_REPORT (what the loader did) and through what the command does, never through timings.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { BIN, ROOT } from '../helpers/cluster.js';

const run = promisify(execFile);
let dir: string;

/** `dynsup ARGS` run from the bundle in `bundle`; stdout, and what the loader said of the cache. */
async function dynsupFrom(bundle: string, args: string[], nodeFlags: string[] = []): Promise<{ stdout: string; cache: string }> {
  const { stdout, stderr } = await run(process.execPath, [...nodeFlags, BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, DYNSUP_CLI_BUNDLE: bundle, DYNSUP_CODE_CACHE_REPORT: '1' },
  });
  return { stdout, cache: /dynsup: code cache (.*)/.exec(stderr)?.[1] ?? '(not said)' };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'dynsup-codecache-'));
  await run(process.execPath, [join(ROOT, 'scripts/build/cli.mjs'), dir], { cwd: ROOT });
}, 120_000);

describe('CLI code cache', () => {
  it('the build writes a cache beside the bundle, and a command uses it', async () => {
    const bundle = join(dir, 'main.cjs');
    expect(statSync(`${bundle}.cache`).size).toBeGreaterThan(32);
    const r = await dynsupFrom(bundle, ['validate', 'clusters/local.yaml']);
    expect(r.cache).toBe('used');
    expect(r.stdout).toContain('frontend-0');
  });

  it('the bundle has no import(): V8 drops its callback in functions restored from a code cache (Node 20)', () => {
    expect(readFileSync(join(dir, 'main.cjs'), 'utf8').match(/\bimport\(.{0,40}/g) ?? []).toEqual([]);
  });

  it('a bundle without a cache compiles from source and works', async () => {
    const other = mkdtempSync(join(tmpdir(), 'dynsup-codecache-'));
    copyFileSync(join(dir, 'main.cjs'), join(other, 'main.cjs'));
    expect(existsSync(join(other, 'main.cjs.cache'))).toBe(false);
    const r = await dynsupFrom(join(other, 'main.cjs'), ['validate', 'clusters/local.yaml']);
    expect(r.cache).toBe('none');
    expect(r.stdout).toContain('frontend-0');
  });

  it("another build's cache is not used, even for a bundle of the same length", async () => {
    const other = mkdtempSync(join(tmpdir(), 'dynsup-codecache-'));
    const source = readFileSync(join(dir, 'main.cjs'), 'utf8');
    const id = /^\/\* dynsup-build (\S+) \*\//.exec(source)?.[1];
    expect(id).toMatch(/^[0-9a-f]{24}$/);
    // Another build: another id, and a changed usage text, both of the same length as before.
    const changed = source
      .replace(id!, 'f'.repeat(id!.length))
      .replace('supervise NATS, etcd and GPU inference workers', 'SUPERVISE nats, ETCD AND gpu INFERENCE WORKERS');
    expect(changed.length).toBe(source.length);
    expect(changed).not.toBe(source);
    writeFileSync(join(other, 'main.cjs'), changed);
    copyFileSync(join(dir, 'main.cjs.cache'), join(other, 'main.cjs.cache'));
    const r = await dynsupFrom(join(other, 'main.cjs'), ['--help']);
    expect(r.cache).toBe('from another build');
    expect(r.stdout).toContain('SUPERVISE nats, ETCD AND gpu INFERENCE WORKERS');
  });

  it('a cache V8 refuses (other flags) is reported and the command still works', async () => {
    const r = await dynsupFrom(join(dir, 'main.cjs'), ['validate', 'clusters/local.yaml'], ['--no-opt']);
    expect(r.cache).toMatch(/^rejected by V8/);
    expect(r.stdout).toContain('frontend-0');
  });
});
