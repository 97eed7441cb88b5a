import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseComputeAppsCsv, parseGpuCsv, queryGpus, type GpuSample } from '../../src/agent/nvidia-smi.js';
import { installFakeNvidiaSmi } from '../helpers/fake-nvidia-smi.js';

const U0 = 'GPU-5b3c1f0e-0000-1111-2222-333344445555';
const U1 = 'GPU-aa3c1f0e-0000-1111-2222-333344446666';
const g = (index: number, uuid: string, used: number, total: number, util: number): GpuSample => ({
  index,
  uuid,
  memoryUsedMiB: used,
  memoryTotalMiB: total,
  utilizationPct: util,
});

describe('parseGpuCsv', () => {
  const cases: Array<[string, string, GpuSample[]]> = [
    ['blank output', '', []],
    ['only newlines and spaces', '\n  \n\n', []],
    ['one H200', `0, ${U0}, 1024, 143771, 37\n`, [g(0, U0, 1024, 143771, 37)]],
    ['two GPUs, no trailing newline', `0, ${U0}, 0, 143771, 0\n1, ${U1}, 80000, 143771, 100`, [g(0, U0, 0, 143771, 0), g(1, U1, 80000, 143771, 100)]],
    ['trailing spaces and CRLF', `0, ${U0}, 5 , 100 , 3   \r\n`, [g(0, U0, 5, 100, 3)]],
    ['[N/A] memory (MIG / Grace)', `0, ${U0}, [N/A], [N/A], 12\n`, [g(0, U0, NaN, NaN, 12)]],
    ['[Not Supported] utilisation', `0, ${U0}, 10, 100, [Not Supported]\n`, [g(0, U0, 10, 100, NaN)]],
    ['units left in (no nounits)', `0, ${U0}, 10 MiB, 100 MiB, 7 %\n`, [g(0, U0, 10, 100, 7)]],
    ['a message instead of rows', 'No devices were found\n', []],
    ['a row without a uuid is skipped', `0, [N/A], 1, 2, 3\n1, ${U1}, 4, 5, 6\n`, [g(1, U1, 4, 5, 6)]],
    ['a row with a bad index is skipped', `x, ${U0}, 1, 2, 3\n`, []],
    ['a short row is skipped', `0, ${U0}, 1\n`, []],
  ];
  it.each(cases)('%s', (_name, text, want) => {
    expect(parseGpuCsv(text)).toEqual(want);
  });
});

describe('parseComputeAppsCsv', () => {
  const gpus = [g(0, U0, 0, 1, 0), g(1, U1, 0, 1, 0)];
  const cases: Array<[string, string, ReturnType<typeof parseComputeAppsCsv>]> = [
    ['blank output (no compute process)', '', []],
    ['one process', `4242, ${U1}, 70000\n`, [{ pid: 4242, gpuUuid: U1, gpuIndex: 1, usedMemoryMiB: 70000 }]],
    [
      'two processes on one GPU, trailing spaces',
      `1, ${U0}, 10  \n2, ${U0}, 20 \n`,
      [
        { pid: 1, gpuUuid: U0, gpuIndex: 0, usedMemoryMiB: 10 },
        { pid: 2, gpuUuid: U0, gpuIndex: 0, usedMemoryMiB: 20 },
      ],
    ],
    ['[N/A] used memory (another container)', `77, ${U0}, [N/A]\n`, [{ pid: 77, gpuUuid: U0, gpuIndex: 0, usedMemoryMiB: NaN }]],
    ['[Not Supported] used memory', `77, ${U0}, [Not Supported]\n`, [{ pid: 77, gpuUuid: U0, gpuIndex: 0, usedMemoryMiB: NaN }]],
    ['a uuid not among the GPUs: index -1', `9, GPU-other, 5\n`, [{ pid: 9, gpuUuid: 'GPU-other', gpuIndex: -1, usedMemoryMiB: 5 }]],
    ['the old "No running processes found" message', 'No running processes found\n', []],
    ['a [N/A] pid is skipped', `[N/A], ${U0}, 5\n`, []],
  ];
  it.each(cases)('%s', (_name, text, want) => {
    expect(parseComputeAppsCsv(text, gpus)).toEqual(want);
  });
});

describe('queryGpus', () => {
  const dir = mkdtempSync(join(tmpdir(), 'dynsup-nvsmi-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is null when nvidia-smi is not on PATH', async () => {
    expect(await queryGpus({ env: { PATH: join(dir, 'nothing-here') } })).toBeNull();
    expect(await queryGpus({ bin: join(dir, 'no-such-nvidia-smi') })).toBeNull();
  });

  it('reads the fake through PATH, one call of each query, and follows its state', async () => {
    const fake = installFakeNvidiaSmi(dir);
    const env = { ...process.env, PATH: `${fake.binDir}:${process.env.PATH ?? ''}` };
    fake.setState({ gpus: [{ index: 0, uuid: U0, memoryUsedMiB: 100, memoryTotalMiB: 143771, utilizationPct: 5 }], processes: [] });
    expect(await queryGpus({ env })).toEqual({ gpus: [g(0, U0, 100, 143771, 5)], processes: [] });
    expect(fake.calls()).toHaveLength(2);
    fake.setState({
      gpus: [
        { index: 0, uuid: U0, memoryUsedMiB: '[N/A]', memoryTotalMiB: 143771, utilizationPct: '[Not Supported]' },
        { index: 1, uuid: U1, memoryUsedMiB: 9000, memoryTotalMiB: 143771, utilizationPct: 99 },
      ],
      processes: [{ pid: 31337, gpuUuid: U1, usedMemoryMiB: 9000 }],
    });
    expect(await queryGpus({ env })).toEqual({
      gpus: [g(0, U0, NaN, 143771, NaN), g(1, U1, 9000, 143771, 99)],
      processes: [{ pid: 31337, gpuUuid: U1, gpuIndex: 1, usedMemoryMiB: 9000 }],
    });
  });

  it('rejects with the driver message when nvidia-smi fails, and on its time limit', async () => {
    const fake = installFakeNvidiaSmi(join(dir, 'b'));
    fake.setState({ gpus: [], processes: [], fail: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." });
    await expect(queryGpus({ bin: join(fake.binDir, 'nvidia-smi') })).rejects.toThrow(/couldn't communicate with the NVIDIA driver/);
    fake.setState({ gpus: [], processes: [], delayMs: 5000 });
    await expect(queryGpus({ bin: join(fake.binDir, 'nvidia-smi'), timeoutMs: 300 })).rejects.toThrow(/no answer in 300 ms/);
  });
});
