/**
 * Command-line input, through the real CLI: every option value is checked before anything starts (exit 2,
 * a message naming the option and what it expects, no process left), and a second `up` names the running
 * supervisor instead of reporting its cluster as its own.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dynsup, pidAlive, pidsWithCmdline, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const clusters: TempCluster[] = [];
async function cluster(): Promise<TempCluster> {
  const c = await tempCluster(
    `nodes:
  head: { transport: local }
workers:
  w:
    command: "sleep 600"
`,
    { name: `cli${Math.random().toString(36).slice(2, 7)}` },
  );
  clusters.push(c);
  return c;
}

afterAll(async () => {
  for (const c of clusters) await dynsup(['down', c.file]);
});

/** Nothing of this cluster runs and no supervisor was ever started for it. */
async function nothingStarted(c: TempCluster): Promise<void> {
  expect(await pidsWithCmdline(c.dir)).toEqual([]);
  expect(existsSync(join(c.dir, 'state/run/supervisor.json'))).toBe(false);
}

describe('option values are checked before anything starts', () => {
  it('up -d --timeout abc exits 2 naming --timeout and leaves no process', async () => {
    const c = await cluster();
    const r = await dynsup(['up', '-d', c.file, '--timeout', 'abc']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--timeout expects a positive number of seconds.*"abc"/);
    await nothingStarted(c);
  });

  it.each([
    [['up', '-d', 'FILE', '--timeout', '0'], /--timeout expects a positive number of seconds/],
    [['up', '-d', 'FILE', '--timeout', '-5'], /--timeout/],
    [['up', '-d', 'FILE', '--timeout', '10s'], /--timeout expects a positive number of seconds.*"10s"/],
    [['up', '-d', 'FILE', '--timeout'], /--timeout <value>' argument missing/],
    [['up', '-d', 'FILE', '--state-dir', ''], /--state-dir expects a non-empty value/],
    [['up', '-d', 'FILE', '--detach=yes'], /--detach/],
    [['logs', 'FILE', '-n', 'ten'], /--lines expects a whole number.*"ten"/],
    [['logs', 'FILE', '--lines', '1.5'], /--lines expects a whole number/],
    [['status', 'FILE', '--head', 'a b'], /--head expects the head's address/],
    [['status', 'FILE', '--creds', '/nonexistent/credentials.json'], /--creds expects a credentials file \(no control credentials at/],
    [['restart', 'FILE', 'w', '--creds', ''], /--creds expects a credentials file/],
    [['scale', 'FILE', 'w=2', 'w=two'], /expected GROUP=N.*'w=two'/],
    [['sbatch', 'FILE', '--dry-run', '--nodes', '0'], /--nodes: expected a positive integer/],
    [['sbatch', 'FILE', '--dry-run', '--time', 'soon'], /--time: expected a time limit/],
    [['up', 'FILE', '--bogus'], /Unknown option '--bogus'/],
  ])('%j exits 2 with a message naming the option', async (args, message) => {
    const c = await cluster();
    const r = await dynsup(args.map((a) => (a === 'FILE' ? c.file : a)));
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    await nothingStarted(c);
  });
});

describe('up while the cluster is up', () => {
  it('a second up -d (or up) exits 1 naming the running supervisor, which keeps running', async () => {
    const c = await cluster();
    const first = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(first.code, first.stderr).toBe(0);
    const lock = JSON.parse(readFileSync(join(c.dir, 'state/run/supervisor.json'), 'utf8')) as { pid: number };
    expect(first.stdout).toContain(`supervisor pid ${lock.pid}`);

    const second = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(second.code, second.stdout).toBe(1);
    expect(second.stdout).toBe('');
    expect(second.stderr).toContain(`already running: supervisor pid ${lock.pid}`);

    const foreground = await dynsup(['up', c.file]);
    expect(foreground.code).toBe(1);
    expect(foreground.stderr).toContain(`supervisor pid ${lock.pid}`);

    // The first supervisor is untouched and still the only one.
    expect(pidAlive(lock.pid)).toBe(true);
    expect((JSON.parse(readFileSync(join(c.dir, 'state/run/supervisor.json'), 'utf8')) as { pid: number }).pid).toBe(lock.pid);
    const down = await dynsup(['down', c.file]);
    expect(down.code, down.stderr).toBe(0);
    await waitFor('nothing left', async () => (await pidsWithCmdline(c.dir)).length === 0, 15_000);
  });
});

describe('known conditions are not internal errors', () => {
  it('a credentials file that is not JSON: exit 2 naming it', async () => {
    const c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "sleep 600" }
`,
      { controlPlane: true },
    );
    clusters.push(c);
    const creds = join(c.dir, 'creds.json');
    writeFileSync(creds, 'not json');
    const r = await dynsup(['restart', c.file, 'w-0', '--head', '127.0.0.1', '--creds', creds]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${creds}: not a dynsup credentials file`);
    expect(r.stderr).not.toMatch(/internal error/);
  });

  it('an operating-system error (a log file that is a directory): exit 1 with its message', async () => {
    const c = await cluster();
    mkdirSync(join(c.dir, 'state/logs/w-0.log'), { recursive: true });
    const r = await dynsup(['logs', c.file, 'w-0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^dynsup logs: EISDIR/);
    expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
  });
});
