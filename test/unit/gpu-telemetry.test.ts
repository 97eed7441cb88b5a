import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ownerOf, toSample } from '../../src/agent/gpu-sampler.js';
import type { NodeGpuSample } from '../../src/agent/protocol.js';
import { gpuCells, render } from '../../src/cli/status.js';
import { renderMetrics } from '../../src/api/metrics.js';
import { replicaGpuTelemetry } from '../../src/supervise/gpu-telemetry.js';
import type { ReplicaStatus } from '../../src/supervise/replica.js';

const sample: NodeGpuSample = {
  at: 1000,
  gpus: [
    { index: 0, uuid: 'GPU-0', memoryUsedMiB: 71680, memoryTotalMiB: 143771, utilizationPct: 90 },
    { index: 1, uuid: 'GPU-1', memoryUsedMiB: 10240, memoryTotalMiB: 143771, utilizationPct: 10 },
    { index: 2, uuid: 'GPU-2', memoryUsedMiB: null, memoryTotalMiB: 143771, utilizationPct: null },
  ],
  processes: [
    { pid: 11, gpuIndex: 0, usedMemoryMiB: 71000, owner: 'decode-0' },
    { pid: 12, gpuIndex: 1, usedMemoryMiB: 10000, owner: null },
    { pid: 13, gpuIndex: 1, usedMemoryMiB: 200, owner: 'prefill-0' },
  ],
};

describe('replicaGpuTelemetry', () => {
  const cases: Array<[string, string, number[], NodeGpuSample | null, unknown]> = [
    ['no sample (no nvidia-smi): nothing', 'decode-0', [0], null, undefined],
    ['no GPUs: nothing', 'frontend-0', [], sample, undefined],
    [
      'its GPUs summed and averaged, its own process not listed',
      'decode-0',
      [0, 1],
      sample,
      {
        at: 1000,
        gpus: [
          { index: 0, memoryUsedMiB: 71680, memoryTotalMiB: 143771, utilizationPct: 90 },
          { index: 1, memoryUsedMiB: 10240, memoryTotalMiB: 143771, utilizationPct: 10 },
        ],
        memoryUsedMiB: 81920,
        memoryTotalMiB: 287542,
        utilizationPct: 50,
        others: [
          { pid: 12, gpu: 1, usedMemoryMiB: 10000, owner: null },
          { pid: 13, gpu: 1, usedMemoryMiB: 200, owner: 'prefill-0' },
        ],
      },
    ],
    [
      'an unknown value makes the sum unknown',
      'x-0',
      [2],
      sample,
      {
        at: 1000,
        gpus: [{ index: 2, memoryUsedMiB: null, memoryTotalMiB: 143771, utilizationPct: null }],
        memoryUsedMiB: null,
        memoryTotalMiB: 143771,
        utilizationPct: null,
        others: [],
      },
    ],
  ];
  it.each(cases)('%s', (_n, name, gpus, s, want) => {
    expect(replicaGpuTelemetry(name, gpus, s)).toEqual(want);
  });
});

describe('ownerOf (a fake /proc)', () => {
  const proc = mkdtempSync(join(tmpdir(), 'dynsup-proc-'));
  afterAll(() => rmSync(proc, { recursive: true, force: true }));
  const fake = (pid: number, env: string | null, pgid: number) => {
    mkdirSync(join(proc, String(pid)));
    if (env !== null) writeFileSync(join(proc, String(pid), 'environ'), env);
    writeFileSync(join(proc, String(pid), 'stat'), `${pid} (python3 (x) y) S 1 ${pgid} ${pgid} 0 -1`);
  };
  fake(100, 'PATH=/bin\0DYNSUP_TOKEN=decode-0.abc\0', 100);
  fake(101, null, 555); // another user's: environ unreadable; its process group is prefill-0's leader
  fake(102, 'DYNSUP_TOKEN=old-run.zzz\0', 102);
  const workers = [
    { name: 'decode-0', token: 'decode-0.abc', pid: 99 },
    { name: 'prefill-0', token: 'prefill-0.def', pid: 555 },
  ];
  const cases: Array<[string, number, string | null]> = [
    ['by the token in its environment', 100, 'decode-0'],
    ['by its process group', 101, 'prefill-0'],
    ['a token of no current worker: nobody', 102, null],
    ['gone: nobody', 999, null],
  ];
  it.each(cases)('%s', (_n, pid, want) => {
    expect(ownerOf(pid, workers, proc)).toBe(want);
  });

  it('toSample: NaN becomes null, owners attached', () => {
    const s = toSample(
      {
        gpus: [{ index: 0, uuid: 'GPU-0', memoryUsedMiB: NaN, memoryTotalMiB: 100, utilizationPct: 5 }],
        processes: [{ pid: 100, gpuUuid: 'GPU-0', gpuIndex: 0, usedMemoryMiB: NaN }],
      },
      7,
      (pid) => ownerOf(pid, workers, proc),
    );
    expect(s).toEqual({
      at: 7,
      gpus: [{ index: 0, uuid: 'GPU-0', memoryUsedMiB: null, memoryTotalMiB: 100, utilizationPct: 5 }],
      processes: [{ pid: 100, gpuIndex: 0, usedMemoryMiB: null, owner: 'decode-0' }],
    });
  });
});

const rep = (over: Partial<ReplicaStatus> = {}): ReplicaStatus => ({
  name: 'decode-0',
  group: 'decode',
  node: 'gpu1',
  state: 'ready',
  pid: 11,
  restarts: 0,
  lastExit: null,
  gpus: [0, 1],
  startedAt: null,
  since: 0,
  message: null,
  ...over,
});

describe('status and /metrics with and without telemetry', () => {
  const gpu = replicaGpuTelemetry('decode-0', [0, 1], sample)!;
  const withGpu = { cluster: 'c', controlPlane: [], replicas: [rep({ gpu }), rep({ name: 'frontend-0', gpus: [] })] };
  const without = { cluster: 'c', controlPlane: [], replicas: [rep(), rep({ name: 'frontend-0', gpus: [] })] };
  const shown = (status: typeof withGpu) => ({ running: true, source: 'supervisor' as const, headline: 'h', status, supervisor: null });

  it('status: GPU MEM, GPU UTIL and OTHER PROCS columns only with telemetry', () => {
    expect(gpuCells(rep({ gpu }))).toEqual(['80.0/280.8 GiB', '50%', '12@1 9.8GiB, 13@1 0.2GiB (prefill-0)']);
    const text = render(shown(withGpu));
    expect(text).toMatch(/GPU MEM +GPU UTIL +OTHER PROCS/);
    expect(text).toContain('80.0/280.8 GiB');
    expect(render(shown(without))).not.toMatch(/GPU MEM|GPU UTIL|OTHER PROCS/);
  });

  it('/metrics: GPU gauges per replica GPU only with telemetry', () => {
    const m = renderMetrics(withGpu, new Map());
    expect(m).toContain(`dynsup_replica_gpu_memory_used_bytes{cluster="c",replica="decode-0",node="gpu1",gpu="0"} ${71680 * 2 ** 20}`);
    expect(m).toContain('dynsup_replica_gpu_utilization_ratio{cluster="c",replica="decode-0",node="gpu1",gpu="1"} 0.1');
    expect(m).toContain('dynsup_replica_gpu_foreign_processes{cluster="c",replica="decode-0",node="gpu1"} 2');
    expect(m).not.toContain('frontend-0",node="gpu1",gpu=');
    expect(renderMetrics(without, new Map())).not.toContain('dynsup_replica_gpu');
  });
});
