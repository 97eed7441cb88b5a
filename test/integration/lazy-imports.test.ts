/**
 * Commands that need no connection load no connection library: `validate`, `schema`, `--help`, `--version`
 * (and a usage error) run without ssh2, nats or etcd3 in the process. Checked on the modules the process
 * loaded (test/helpers/module-log.mjs), not on timings.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { BIN, ROOT } from '../helpers/cluster.js';

const HOOK = join(ROOT, 'test/helpers/module-log.mjs');
const HEAVY = ['ssh2', 'nats', 'etcd3'];

/** Run node with the module log; returns the packages under node_modules it loaded, and the exit code. */
async function loadedPackages(args: string[]): Promise<{ code: number; packages: Set<string> }> {
  const log = join(mkdtempSync(join(tmpdir(), 'dynsup-modlog-')), 'modules.log');
  const code = await promisify(execFile)(process.execPath, ['--import', HOOK, ...args], { cwd: ROOT, env: { ...process.env, DYNSUP_MODULE_LOG: log } }).then(
    () => 0,
    (err: { code?: number }) => err.code ?? 1,
  );
  const packages = new Set<string>();
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(line);
    if (m) packages.add(m[1]!);
  }
  return { code, packages };
}

describe('lazy command imports', () => {
  it('the module log sees ssh2, nats and etcd3 when they are loaded (the check below can fail)', async () => {
    const { code, packages } = await loadedPackages(['--input-type=module', '-e', "import 'ssh2'; import 'nats'; import 'etcd3';"]);
    expect(code).toBe(0);
    for (const p of HEAVY) expect(packages).toContain(p);
  });

  it.each([
    [['validate', 'clusters/local.yaml'], 0],
    [['validate', 'clusters/local.yaml', '--json'], 0],
    [['schema'], 0],
    [['--help'], 0],
    [['--version'], 0],
    [['up', '--help'], 0],
    [['up', '-d', 'clusters/local.yaml', '--timeout', 'abc'], 2],
  ])('dynsup %j loads none of ssh2, nats, etcd3', async (args, expected) => {
    const { code, packages } = await loadedPackages([BIN, ...args]);
    expect(code).toBe(expected);
    // yaml and zod are bundled into the CLI (scripts/build/cli.mjs); the exit code says the file was loaded.
    expect(HEAVY.filter((p) => packages.has(p))).toEqual([]);
  });
});
