/**
 * The GPU release gate: a GPU replica that died is not started again while nvidia-smi still shows its
 * last run's process on its GPUs (a driver slow to free memory, a child that escaped); past
 * restart.gpuReleaseTimeout it is `blocked`, naming the GPU and the pid, and it starts once they are gone.
 * A fake nvidia-smi on the node agent's PATH plays the GPU.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dynsup, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';
import { installFakeNvidiaSmi } from '../helpers/fake-nvidia-smi.js';

const U0 = 'GPU-00000000-1111-2222-3333-444444444444';
const U1 = 'GPU-11111111-1111-2222-3333-444444444444';
const GPUS = [
  { index: 0, uuid: U0, memoryUsedMiB: 70000, memoryTotalMiB: 143771, utilizationPct: 0 },
  { index: 1, uuid: U1, memoryUsedMiB: 0, memoryTotalMiB: 143771, utilizationPct: 0 },
];

const started: { c: TempCluster; env: NodeJS.ProcessEnv }[] = [];
afterEach(async () => {
  for (const { c, env } of started.splice(0)) await dynsup(['down', c.file], { env });
});

interface R {
  name: string;
  state: string;
  pid: number | null;
  restarts: number;
  message: string | null;
}
async function replica(c: TempCluster, env: NodeJS.ProcessEnv): Promise<R> {
  const r = await dynsup(['status', c.file, '--json'], { env });
  return (JSON.parse(r.stdout) as { replicas: R[] }).replicas[0]!;
}

async function gpuCluster(timeout: string): Promise<{ c: TempCluster; env: NodeJS.ProcessEnv; fake: ReturnType<typeof installFakeNvidiaSmi> }> {
  const c = await tempCluster(
    `nodes:
  head: { transport: local, gpus: 2 }
workers:
  w:
    command: "echo started pid $$; exec sleep 600"
    gpus: 1
    restart: { initialDelay: 100ms, jitter: 0, gpuReleaseTimeout: ${timeout} }
`,
    { name: `gr${Math.random().toString(36).slice(2, 8)}` },
  );
  const fake = installFakeNvidiaSmi(c.dir);
  fake.setState({ gpus: GPUS, processes: [] });
  const env = { ...process.env, PATH: `${fake.binDir}:${process.env.PATH ?? ''}` };
  started.push({ c, env });
  const r = await dynsup(['up', '-d', c.file, '--timeout', '60'], { env });
  expect(r.code, r.stderr).toBe(0);
  return { c, env, fake };
}

const starts = (c: TempCluster): number => (readFileSync(join(c.dir, 'state/logs/w-0.log'), 'utf8').match(/^started pid/gm) ?? []).length;

describe('GPU release before a restart', () => {
  it('waits while the dead run still holds its GPU, then starts', async () => {
    const { c, env, fake } = await gpuCluster('60s');
    const first = await waitFor('w-0 running', async () => ((await replica(c, env)).state === 'running' ? replica(c, env) : null), 30_000, 100);
    // The driver still lists the process after it died (as it does while it frees a large allocation).
    fake.setState({ gpus: GPUS, processes: [{ pid: first.pid!, gpuUuid: U0, usedMemoryMiB: 70000 }] });
    process.kill(first.pid!, 'SIGKILL');
    const waiting = await waitFor(
      'w-0 waiting for its GPU',
      async () => {
        const r = await replica(c, env);
        return r.message?.includes('waiting for GPU 0') ? r : null;
      },
      30_000,
      100,
    );
    expect(waiting.state).toBe('starting');
    expect(waiting.message).toContain(`released by pid ${first.pid}`);
    expect(waiting.pid).toBeNull();
    expect(starts(c)).toBe(1);
    // A process of someone else on the GPU does not hold it back; only the last run's does.
    fake.setState({ gpus: GPUS, processes: [{ pid: 4_194_301, gpuUuid: U0, usedMemoryMiB: 1000 }] });
    const again = await waitFor(
      'w-0 running again',
      async () => {
        const r = await replica(c, env);
        return r.state === 'running' && r.pid !== first.pid ? r : null;
      },
      30_000,
      100,
    );
    expect(again.restarts).toBe(1);
    expect(starts(c)).toBe(2);
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(events).toContain(`w-0 waits for GPU 0 to be released by pid ${first.pid}`);
    expect(events).toMatch(/w-0: its GPUs are free after [\d.]+s: starting/);
  }, 120_000);

  it('past restart.gpuReleaseTimeout the replica is blocked, naming GPU and pid, and starts once the GPU is free', async () => {
    const { c, env, fake } = await gpuCluster('1s');
    const first = await waitFor('w-0 running', async () => ((await replica(c, env)).state === 'running' ? replica(c, env) : null), 30_000, 100);
    fake.setState({ gpus: GPUS, processes: [{ pid: first.pid!, gpuUuid: U0, usedMemoryMiB: 70000 }] });
    process.kill(first.pid!, 'SIGKILL');
    const blocked = await waitFor(
      'w-0 blocked',
      async () => {
        const r = await replica(c, env);
        return r.state === 'blocked' ? r : null;
      },
      30_000,
      100,
    );
    expect(blocked.message).toMatch(new RegExp(`^blocked: GPU 0 still held by pid ${first.pid} `));
    expect(starts(c)).toBe(1);
    const text = (await dynsup(['status', c.file], { env })).stdout;
    expect(text).toContain(`blocked: GPU 0 still held by pid ${first.pid}`);
    fake.setState({ gpus: GPUS, processes: [] });
    await waitFor('w-0 running again', async () => (await replica(c, env)).state === 'running', 30_000, 100);
    expect(starts(c)).toBe(2);
  }, 120_000);

  it('without nvidia-smi the gate is skipped and said once', async () => {
    const c = await tempCluster(
      `nodes:
  head: { transport: local, gpus: 1 }
workers:
  w:
    command: "echo started pid $$; exec sleep 600"
    gpus: 1
    restart: { initialDelay: 100ms, jitter: 0 }
`,
      { name: `gn${Math.random().toString(36).slice(2, 8)}` },
    );
    const env = { ...process.env, PATH: '/usr/local/bin:/usr/bin:/bin' };
    started.push({ c, env });
    expect((await dynsup(['up', '-d', c.file, '--timeout', '60'], { env })).code).toBe(0);
    for (let i = 1; i <= 2; i++) {
      const r = await waitFor('running', async () => ((await replica(c, env)).state === 'running' ? replica(c, env) : null), 30_000, 100);
      process.kill(r.pid!, 'SIGKILL');
      await waitFor(`restart ${i}`, async () => (await replica(c, env)).restarts === i && (await replica(c, env)).state === 'running', 30_000, 100);
    }
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(events.match(/GPU release before restarts not checked on w-0's node: no nvidia-smi on the node/g)?.length).toBe(1);
  }, 120_000);
});
