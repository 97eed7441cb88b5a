/** The README's demo: clusters/local.yaml brings up a real graph; a completion works, survives kill -9 of a decode worker. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dynsup, pidsWithCmdline, pidsWithEnv, ROOT, status, waitFor } from '../helpers/cluster.js';

const stateDir = mkdtempSync(join(tmpdir(), 'dynsup-demo-'));
const file = join(ROOT, 'clusters/local.yaml');
const args = ['--state-dir', stateDir];

async function complete(prompt: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch('http://127.0.0.1:8000/v1/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'demo', prompt, max_tokens: 8 }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

afterAll(async () => {
  await dynsup(['down', file, ...args]);
});

describe('demo cluster (clusters/local.yaml)', () => {
  it('serves completions through frontend → decode → prefill, recovers from kill -9 of a decode worker, and down leaves nothing', async () => {
    const up = await dynsup(['up', '-d', file, ...args, '--timeout', '90']);
    expect(up.code, up.stderr).toBe(0);
    const first = await complete('hello world');
    expect(first.status).toBe(200);
    expect((first.body.choices as { text: string }[])[0]!.text.split(' ').filter(Boolean)).toHaveLength(8);
    expect(first.body.dynsup).toMatchObject({ frontend: 'frontend-0' });

    const s = JSON.parse((await dynsup(['status', file, ...args, '--json'])).stdout) as Awaited<ReturnType<typeof status>>;
    const victim = s.replicas.find((r) => r.name === 'decode-0')!;
    process.kill(victim.pid!, 'SIGKILL');
    // Replaced: a new pid, counted as one restart, the crash recorded; the other replicas untouched.
    // (How fast a restart is: scripts/bench/restart.mjs. The deadline only stops a hung test.)
    const replaced = await waitFor(
      'decode-0 replaced',
      async () => {
        const now = JSON.parse((await dynsup(['status', file, ...args, '--json'])).stdout) as Awaited<ReturnType<typeof status>>;
        const r = now.replicas.find((x) => x.name === 'decode-0')!;
        return r.pid && r.pid !== victim.pid && (r.state === 'running' || r.state === 'ready') ? { r, now } : null;
      },
      60_000,
      20,
    );
    expect(replaced.r.restarts).toBe(1);
    expect(replaced.r.lastExit).toMatchObject({ signal: 'SIGKILL' });
    const others = (x: typeof s) => x.replicas.filter((r) => r.name !== 'decode-0').map((r) => [r.name, r.pid, r.restarts]);
    expect(others(replaced.now)).toEqual(others(s));
    const again = await waitFor(
      'completion after restart',
      async () => {
        const r = await complete('after the crash');
        return r.status === 200 ? r : null;
      },
      15_000,
      200,
    );
    expect(again.body.object).toBe('text_completion');

    const down = await dynsup(['down', file, ...args]);
    expect(down.code).toBe(0);
    expect(await pidsWithEnv('DYNSUP_CLUSTER=demo')).toEqual([]);
    expect(await pidsWithCmdline(stateDir)).toEqual([]);
    await expect(fetch('http://127.0.0.1:8000/health')).rejects.toThrow();
  });
});
