/**
 * Day-2 features on one machine: GPU telemetry from the node agents (a fake nvidia-smi on their PATH),
 * preStart/postStop hooks with named ports, and a fatal log line that restarts a worker once.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dynsup, freePort, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';
import { installFakeNvidiaSmi } from '../helpers/fake-nvidia-smi.js';

const started: { c: TempCluster; env: NodeJS.ProcessEnv }[] = [];
async function cluster(body: string): Promise<TempCluster> {
  const c = await tempCluster(body, { name: `d${Math.random().toString(36).slice(2, 8)}` });
  return c;
}
async function up(c: TempCluster, env: NodeJS.ProcessEnv = process.env, code = 0): Promise<void> {
  started.push({ c, env });
  const r = await dynsup(['up', '-d', c.file, '--timeout', '60'], { env });
  expect(r.code, r.stderr).toBe(code);
}
afterEach(async () => {
  for (const { c, env } of started.splice(0)) await dynsup(['down', c.file], { env });
});

interface Replica {
  name: string;
  state: string;
  pid: number | null;
  restarts: number;
  lastExit: { code: number | null; signal: string | null; reason?: string } | null;
  gpus: number[];
  gpu?: {
    memoryUsedMiB: number | null;
    memoryTotalMiB: number | null;
    utilizationPct: number | null;
    others: { pid: number; gpu: number; usedMemoryMiB: number | null; owner: string | null }[];
  };
}
async function replicas(c: TempCluster, env?: NodeJS.ProcessEnv): Promise<Replica[]> {
  const r = await dynsup(['status', c.file, '--json'], { env });
  return (JSON.parse(r.stdout) as { replicas: Replica[] }).replicas;
}
const log = (c: TempCluster, replica: string) => readFileSync(join(c.dir, `state/logs/${replica}.log`), 'utf8');

const U0 = 'GPU-00000000-1111-2222-3333-444444444444';
const U1 = 'GPU-11111111-1111-2222-3333-444444444444';

describe('GPU telemetry', () => {
  it('status, status --json and /metrics show per replica the memory and utilisation of its GPUs and the processes on them that are not its own; one nvidia-smi pair per node per sample', async () => {
    const c = await cluster(`nodes:
  head: { transport: local, gpus: 2 }
workers:
  w:
    command: "exec sleep 600"
    replicas: 2
    gpus: 1
`);
    // Sampled every 200ms (default 5s), next to tempCluster's metrics port.
    writeFileSync(c.file, readFileSync(c.file, 'utf8').replace(/^metrics: \{ port: (\d+) \}$/m, 'metrics: { port: $1, gpuInterval: 200ms }'));
    const fake = installFakeNvidiaSmi(c.dir);
    const gpus = [
      { index: 0, uuid: U0, memoryUsedMiB: 4096, memoryTotalMiB: 143771, utilizationPct: 37 },
      { index: 1, uuid: U1, memoryUsedMiB: 20480, memoryTotalMiB: 143771, utilizationPct: '[N/A]' },
    ];
    fake.setState({ gpus, processes: [] });
    const env = { ...process.env, PATH: `${fake.binDir}:${process.env.PATH ?? ''}` };
    await up(c, env);
    const first = await replicas(c, env);
    const w0 = first.find((r) => r.name === 'w-0')!;
    const w1 = first.find((r) => r.name === 'w-1')!;
    expect([w0.gpus, w1.gpus]).toEqual([[0], [1]]);
    // w-0's own process on GPU 0; on GPU 1 a process of nobody here (a leak of an earlier run).
    fake.setState({
      gpus,
      processes: [
        { pid: w0.pid!, gpuUuid: U0, usedMemoryMiB: 4000 },
        { pid: 4_194_301, gpuUuid: U1, usedMemoryMiB: 20000 },
      ],
    });
    const seen = await waitFor(
      'telemetry with the processes',
      async () => {
        const rs = await replicas(c, env);
        const a = rs.find((r) => r.name === 'w-1');
        return a?.gpu?.others.length ? rs : null;
      },
      30_000,
      100,
    );
    expect(seen.find((r) => r.name === 'w-0')!.gpu).toMatchObject({ memoryUsedMiB: 4096, memoryTotalMiB: 143771, utilizationPct: 37, others: [] });
    expect(seen.find((r) => r.name === 'w-1')!.gpu).toMatchObject({
      memoryUsedMiB: 20480,
      utilizationPct: null,
      others: [{ pid: 4_194_301, gpu: 1, usedMemoryMiB: 20000, owner: null }],
    });

    const text = (await dynsup(['status', c.file], { env })).stdout;
    expect(text).toMatch(/GPU MEM +GPU UTIL +OTHER PROCS/);
    expect(text).toMatch(/w-0 .* 4\.0\/140\.4 GiB +37% +-/);
    expect(text).toMatch(/w-1 .* 20\.0\/140\.4 GiB +\? +4194301@1 19\.5GiB/);

    const metrics = await (await fetch(`http://127.0.0.1:${c.metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/dynsup_replica_gpu_memory_used_bytes\{cluster="[^"]+",replica="w-0",node="head",gpu="0"\} 4294967296/);
    expect(metrics).toMatch(/dynsup_replica_gpu_utilization_ratio\{cluster="[^"]+",replica="w-0",node="head",gpu="0"\} 0\.37/);
    expect(metrics).toMatch(/dynsup_replica_gpu_foreign_processes\{cluster="[^"]+",replica="w-1",node="head"\} 1/);

    // One call pair per sample for the node, whatever the number of replicas on it: the calls come in
    // pairs of one --query-gpu and one --query-compute-apps.
    const calls = fake.calls().map((l) => (l.startsWith('--query-gpu') ? 'gpu' : l.startsWith('--query-compute-apps') ? 'apps' : l));
    const pairs = Math.floor(calls.length / 2);
    expect(pairs).toBeGreaterThan(1);
    for (let i = 0; i < pairs; i++) expect([calls[2 * i], calls[2 * i + 1]].sort()).toEqual(['apps', 'gpu']);
  });

  it('without nvidia-smi: no GPU columns, no gpu field, no error; hooks run on the node with named ports, output in the replica log; a failing preStart is a failed start', async () => {
    const kv = await freePort();
    const c = await cluster(`nodes:
  head: { transport: local, gpus: 1 }
workers:
  h:
    command: "echo worker kv=$DYNSUP_PORT_KV; exec sleep 600"
    gpus: 1
    ports: { kv: ${kv} }
    preStart: "echo preStart for {replica} kv={ports.kv}; touch DIR/pre-$DYNSUP_WORKER"
    postStop: "echo postStop ran; touch DIR/post-{replica}"
  bad:
    command: "echo the worker ran; exec sleep 600"
    preStart: "echo cannot clean up; exit 3"
    restart: { initialDelay: 100ms, maxRestarts: 2, jitter: 0 }
`);
    // No nvidia-smi anywhere on this PATH.
    const env = { ...process.env, PATH: '/usr/local/bin:/usr/bin:/bin' };
    // `up -d` says the cluster did not come up whole (bad-0 failed): exit 1, the rest running.
    await up(c, env, 1);
    const h = await waitFor(
      'h-0 running after its preStart',
      async () => (await replicas(c, env)).find((r) => r.name === 'h-0' && r.state === 'running'),
      30_000,
      100,
    );
    await waitFor('worker line', () => log(c, 'h-0').includes('worker kv='), 10_000);
    expect(log(c, 'h-0')).toBe(`preStart for h-0 kv=${kv}\nworker kv=${kv}\n`);
    expect(existsSync(join(c.dir, 'pre-h-0'))).toBe(true);
    expect(h.gpu).toBeUndefined();
    const text = (await dynsup(['status', c.file], { env })).stdout;
    expect(text).not.toMatch(/GPU MEM|GPU UTIL|OTHER PROCS/);

    // preStart exits 3 on every start: a failed start each time, counted, until the crash-loop limit.
    const bad = await waitFor('bad-0 failed', async () => (await replicas(c, env)).find((r) => r.name === 'bad-0' && r.state === 'failed'), 30_000, 100);
    expect(bad.restarts).toBe(2);
    expect(bad.lastExit).toMatchObject({ code: 127, reason: 'preStart exited with code 3' });
    expect(log(c, 'bad-0')).toBe('cannot clean up\n'.repeat(3));
    const events = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(events).toContain('bad-0 could not be started: preStart exited with code 3');
    expect(events).not.toMatch(/nvidia-smi/);

    // postStop after the worker's exit, on a stop.
    const stop = await dynsup(['stop', c.file, 'h'], { env });
    expect(stop.code, stop.stderr).toBe(0);
    expect(log(c, 'h-0')).toMatch(/worker kv=\d+\npostStop ran\n$/);
    expect(existsSync(join(c.dir, 'post-h-0'))).toBe(true);
  });
});

describe('fatal log patterns', () => {
  it('a worker printing a matching line is restarted once and status shows why', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w:
    # Prints the fatal line on its first start only, then hangs as such workers do.
    command: "if [ ! -e DIR/once ]; then touch DIR/once; echo 'RuntimeError: CUDA error: an illegal memory access was encountered'; fi; echo serving; exec sleep 600"
    restart: { initialDelay: 100ms, jitter: 0, onLog: ["NCCL .*timeout", "CUDA error"] }
`);
    await up(c);
    const again = await waitFor(
      'restarted and serving again',
      async () => {
        const r = (await replicas(c)).find((x) => x.name === 'w-0')!;
        return r.restarts >= 1 && r.state === 'running' && log(c, 'w-0').split('serving').length === 3 ? r : null;
      },
      30_000,
      100,
    );
    expect(again.restarts).toBe(1);
    expect(again.lastExit).toMatchObject({ signal: 'SIGTERM', reason: 'log line matched /CUDA error/' });
    const text = (await dynsup(['status', c.file])).stdout;
    expect(text).toMatch(/w-0 +head +running +\d+ +1 +SIGTERM \(log line matched \/CUDA error\/\)/);
    const ev = readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8');
    expect(ev.match(/printed a fatal line/g)).toHaveLength(1);
    expect(ev).toContain('w-0 printed a fatal line (restart.onLog /CUDA error/), restarting it: RuntimeError: CUDA error');
    // Still the second process, still once.
    const later = (await replicas(c)).find((x) => x.name === 'w-0')!;
    expect([later.pid, later.restarts]).toEqual([again.pid, 1]);
  });
});
