import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { sbatchFlags } from '../../src/cli/sbatch.js';
import { batchJob, parseSubmitted, renderBatchScript, slurmTime, type SlurmSettings } from '../../src/slurm/sbatch.js';

const ROOT = resolve(import.meta.dirname, '../..');
const BIN = join(ROOT, 'bin/dynsup.js');
const tmp = mkdtempSync(join(tmpdir(), 'dynsup-sbatch-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const file: SlurmSettings = {
  nodes: 4,
  gpusPerNode: 8,
  time: '04:00:00',
  partition: 'gpu',
  account: 'llm',
  jobName: 'llama',
  output: '/shared/logs/%x-%j.out',
  signalLeadSeconds: 90,
  exclusive: true,
  extraArgs: ['--qos=high', '--constraint=h100'],
};
const defaults = { nodes: 3, jobName: 'cluster', output: '/state/logs/slurm-%j.out' };
const opts = { node: '/usr/bin/node', bin: '/opt/dynsup/bin/dynsup.js', file: '/shared/llama.yaml' };

describe('batchJob: flags override the file, the file overrides the defaults', () => {
  it('takes everything from the file when there are no flags', () => {
    expect(batchJob(file, {}, defaults)).toEqual({
      nodes: 4,
      jobName: 'llama',
      output: '/shared/logs/%x-%j.out',
      time: '04:00:00',
      partition: 'gpu',
      account: 'llm',
      gpusPerNode: 8,
      signalLeadSeconds: 90,
      exclusive: true,
      extraArgs: ['--qos=high', '--constraint=h100'],
    });
  });
  it('lets every flag win', () => {
    const j = batchJob(file, { nodes: 8, time: '1-00:00:00', partition: 'debug', account: 'me', jobName: 'try', output: '/tmp/o.out' }, defaults);
    expect(j).toMatchObject({ nodes: 8, time: '1-00:00:00', partition: 'debug', account: 'me', jobName: 'try', output: '/tmp/o.out', gpusPerNode: 8 });
  });
  it('falls back to the defaults without a slurm: section', () => {
    expect(batchJob(undefined, {}, defaults)).toEqual({
      ...defaults,
      time: undefined,
      partition: undefined,
      account: undefined,
      gpusPerNode: undefined,
      signalLeadSeconds: undefined,
      exclusive: true,
      extraArgs: [],
    });
  });
});

describe('renderBatchScript', () => {
  it('writes #SBATCH lines and execs the supervisor in Slurm mode', () => {
    const s = renderBatchScript(batchJob(file, {}, defaults), { ...opts, stateDir: '/scratch/state dir' });
    const lines = s.split('\n');
    expect(lines[0]).toBe('#!/bin/sh');
    expect(lines.filter((l) => l.startsWith('#SBATCH'))).toEqual([
      '#SBATCH --job-name=llama',
      '#SBATCH --nodes=4',
      '#SBATCH --ntasks-per-node=1',
      '#SBATCH --output=/shared/logs/%x-%j.out',
      '#SBATCH --time=04:00:00',
      '#SBATCH --partition=gpu',
      '#SBATCH --account=llm',
      '#SBATCH --gpus-per-node=8',
      '#SBATCH --exclusive',
      '#SBATCH --signal=B:TERM@90',
      '#SBATCH --qos=high',
      '#SBATCH --constraint=h100',
    ]);
    expect(lines.at(-2)).toBe("exec /usr/bin/node /opt/dynsup/bin/dynsup.js up /shared/llama.yaml --slurm --state-dir '/scratch/state dir'");
    expect(s.endsWith('\n')).toBe(true);
    // #SBATCH lines must come before the first command, or sbatch ignores them.
    const firstCmd = lines.findIndex((l, i) => i > 0 && l && !l.startsWith('#'));
    expect(lines.findLastIndex((l) => l.startsWith('#SBATCH'))).toBeLessThan(firstCmd);
  });

  it('leaves out what is not set, and --exclusive when exclusive is false', () => {
    const s = renderBatchScript(batchJob({ exclusive: false, extraArgs: [] }, {}, defaults), opts);
    expect(s.split('\n').filter((l) => l.startsWith('#SBATCH'))).toEqual([
      '#SBATCH --job-name=cluster',
      '#SBATCH --nodes=3',
      '#SBATCH --ntasks-per-node=1',
      '#SBATCH --output=/state/logs/slurm-%j.out',
    ]);
    expect(s).toContain('exec /usr/bin/node /opt/dynsup/bin/dynsup.js up /shared/llama.yaml --slurm\n');
  });

  it('double-quotes values with spaces (sbatch honours them) and refuses what cannot round-trip', () => {
    const j = batchJob(undefined, { jobName: 'my job', output: '/a b/%j.out' }, defaults);
    expect(renderBatchScript(j, opts)).toContain('#SBATCH --job-name="my job"\n#SBATCH --nodes=3');
    expect(renderBatchScript(j, opts)).toContain('#SBATCH --output="/a b/%j.out"');
    expect(() => renderBatchScript(batchJob(undefined, { jobName: 'a"b' }, defaults), opts)).toThrow(/cannot go on an #SBATCH line/);
    expect(() => renderBatchScript(batchJob({ exclusive: true, extraArgs: ['--x\n#SBATCH --y'] }, {}, defaults), opts)).toThrow(/line break/);
  });

  it('quotes the command line so that odd paths stay one word each', () => {
    const s = renderBatchScript(batchJob(undefined, {}, defaults), { ...opts, file: "/it's/a $(file).yaml" });
    expect(s).toContain(`up '/it'\\''s/a $(file).yaml' --slurm`);
  });
});

describe('slurmTime', () => {
  it.each([
    ['90m', '01:30:00'],
    ['4h', '04:00:00'],
    ['45s', '00:00:45'],
    ['1.5d', '1-12:00:00'],
    ['30', '30'],
    ['4:00:00', '4:00:00'],
    ['1-12', '1-12'],
    ['2-00:30:00', '2-00:30:00'],
    ['UNLIMITED', 'UNLIMITED'],
  ])('%s → %s', (input, want) => expect(slurmTime(input)).toBe(want));
  it.each(['', '4 hours', '1:2:3:4', '-5m', '0s', 'h'])('refuses %j', (input) => expect(slurmTime(input)).toBeNull());
});

describe('parseSubmitted', () => {
  it('reads --parsable output and the classic sentence', () => {
    expect(parseSubmitted('1234\n')).toBe('1234');
    expect(parseSubmitted('1234;cluster2\n')).toBe('1234');
    expect(parseSubmitted('Submitted batch job 77\n')).toBe('77');
    expect(parseSubmitted('sbatch: warning: something\n88\n')).toBe('88');
    expect(parseSubmitted('sbatch: error: Batch job submission failed\n')).toBeNull();
  });
});

describe('sbatchFlags', () => {
  it('parses and checks the flags', () => {
    expect(sbatchFlags({ nodes: '5', time: '2h', 'job-name': 'j', output: 'rel/o-%j.out', partition: 'p', account: 'a' })).toEqual({
      nodes: 5,
      time: '02:00:00',
      jobName: 'j',
      output: resolve('rel/o-%j.out'),
      partition: 'p',
      account: 'a',
    });
    expect(() => sbatchFlags({ nodes: '0' })).toThrow(/--nodes: expected a positive integer/);
    expect(() => sbatchFlags({ nodes: '2.5' })).toThrow(/--nodes/);
    expect(() => sbatchFlags({ time: 'soon' })).toThrow(/--time: expected a time limit/);
    expect(() => sbatchFlags({ 'job-name': 'a\nb' })).toThrow(/--job-name/);
  });
});

describe('dynsup sbatch --dry-run (CLI)', () => {
  const yaml = (body: string) => {
    const f = join(tmp, `c${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(f, body);
    return f;
  };
  const run = (...args: string[]) => spawnSync(process.execPath, [BIN, 'sbatch', ...args], { encoding: 'utf8', timeout: 30_000 });
  const cluster = `name: demo
slurm:
  nodes: 3
  time: 2h
  jobName: from-file
  output: logs/%x-%j.out
  signalLead: 1m
  extraArgs: [--qos=normal]
  roles: { frontend: head, decode: { first: 1 }, prefill: rest }
workers:
  prefill: { command: sleep 100, replicas: 2 }
  decode: { command: sleep 100 }
  frontend: { command: sleep 100 }
`;

  it('prints the script; flags override the file; relative paths resolve against the file', () => {
    const f = yaml(cluster);
    const r = run(f, '--dry-run', '--nodes', '4', '--job-name', 'from-flag', '-t', '30', '--', '--mail-type=END');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('#SBATCH --job-name=from-flag\n#SBATCH --nodes=4\n');
    expect(r.stdout).toContain('#SBATCH --time=30\n');
    expect(r.stdout).toContain(`#SBATCH --output=${join(tmp, 'logs/%x-%j.out')}\n`);
    expect(r.stdout).toContain('#SBATCH --signal=B:TERM@60\n#SBATCH --qos=normal\n');
    expect(r.stdout).toContain(`exec ${process.execPath} ${BIN} up ${f} --slurm\n`);
    expect(r.stderr).toContain('sbatch --parsable --mail-type=END');
  });

  it('checks the roles against the node count before submitting (exit 2, file:line)', () => {
    const f = yaml(cluster);
    const r = run(f, '--dry-run', '--nodes', '2');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:9:\\d+: slurm\\.roles\\.prefill: 'rest' is empty`));
    expect(r.stdout).toBe('');
  });

  it('refuses bad flags with exit 2', () => {
    const r = run(yaml(cluster), '--dry-run', '--time', 'tomorrow');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--time: expected a time limit/);
  });
});
