/**
 * Output into a pipe whose reader went away (`dynsup status | head -3`): a command ends quietly with exit 0
 * instead of an EPIPE stack trace, and a supervisor in the foreground goes on supervising (it only stops
 * printing) rather than dying and leaving its workers to the lease.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, ROOT, dynsup, pidAlive, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const clusters: TempCluster[] = [];
afterAll(async () => {
  for (const c of clusters) await dynsup(['down', c.file]);
});

/** Run dynsup with its stdout's read end closed at once; its exit code and stderr. */
function withClosedStdout(args: string[]): { child: ReturnType<typeof spawn>; done: Promise<{ code: number | null; stderr: string }> } {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.destroy();
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return { child, done: new Promise((resolve) => child.once('close', (code) => resolve({ code, stderr }))) };
}

describe('stdout closed by its reader', () => {
  it('a command ends with exit 0 and no stack trace', async () => {
    // `schema` prints more than a pipe holds: its write meets the closed pipe whatever the timing.
    const { code, stderr } = await withClosedStdout(['schema']).done;
    expect(stderr).not.toMatch(/EPIPE|Error|at /);
    expect(code).toBe(0);
  });

  it('a foreground supervisor keeps supervising, and down stops it', async () => {
    const c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "while true; do echo line $$; sleep 0.02; done" }
`,
      { name: `pipe${Math.random().toString(36).slice(2, 7)}` },
    );
    clusters.push(c);
    const { child, done } = withClosedStdout(['up', c.file]);
    const log = join(c.dir, 'state/logs/w-0.log');
    // The worker's lines go to the terminal too: the first of them met the closed pipe (so did the
    // supervisor's own start-up lines); 100 lines in the log file later, it still logs.
    await waitFor('100 lines in the log', () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').length > 100 : false), 60_000, 100);
    const st = await dynsup(['status', c.file, '--json']);
    expect(st.code, st.stderr).toBe(0);
    expect(JSON.parse(st.stdout).replicas.map((r: { state: string }) => r.state)).toEqual(['running']);
    expect(pidAlive(child.pid!)).toBe(true);
    const down = await dynsup(['down', c.file]);
    expect(down.code, down.stderr).toBe(0);
    const { stderr } = await done;
    expect(stderr).not.toMatch(/EPIPE/);
  }, 120_000);
});
