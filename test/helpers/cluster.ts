/** Integration-test helpers: temp cluster files on free ports, the real CLI, and polling with deadlines. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const ROOT = resolve(import.meta.dirname, '../..');
export const BIN = join(ROOT, 'bin/dynsup.js');

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, host, () => {
      const { port } = s.address() as { port: number };
      s.close(() => res(port));
    });
  });
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function dynsup(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<CliResult> {
  return new Promise((res) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 120_000, cwd: opts.cwd ?? ROOT, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        res({ code, stdout, stderr });
      },
    );
  });
}

/** Start `dynsup up FILE` in the foreground as a child (for tests that signal the supervisor itself). */
export function spawnUp(file: string, env: NodeJS.ProcessEnv = process.env): ChildProcess & { output: () => string } {
  const child = spawn(process.execPath, [BIN, 'up', file], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return Object.assign(child, { output: () => out });
}

/** Poll `fn` until it returns a truthy value or the deadline passes (then throw with `what`). */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 30_000, intervalMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(intervalMs);
  }
}

export interface TempCluster {
  dir: string;
  file: string;
  natsPort: number;
  etcdPort: number;
  metricsPort: number;
}

/**
 * Write a cluster file in a fresh temp dir. `body` is the YAML after the header; it may use
 * NATS_PORT / ETCD_PORT / DIR tokens, replaced here.
 */
export async function tempCluster(
  body: string,
  /** `nats`, `etcd`: more fields of controlPlane.nats / .etcd, e.g. 'workerCredentials: true'. */
  opts: { name?: string; controlPlane?: boolean; address?: string; nats?: string; etcd?: string } = {},
): Promise<TempCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'dynsup-test-'));
  const [natsPort, monitorPort, etcdPort, peerPort, metricsPort] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  const cp = opts.controlPlane ?? false;
  const yaml = `name: ${opts.name ?? 'test'}
head: { address: ${opts.address ?? '127.0.0.1'} }
stateDir: ./state
lease: 10s
metrics: { port: ${metricsPort} }
controlPlane:
  nats: { enabled: ${cp}, port: ${natsPort}, monitorPort: ${monitorPort}${opts.nats ? `, ${opts.nats}` : ''} }
  etcd: { enabled: ${cp}, port: ${etcdPort}, peerPort: ${peerPort}${opts.etcd ? `, ${opts.etcd}` : ''} }
${body.replaceAll('DIR', dir).replaceAll('NATS_PORT', String(natsPort)).replaceAll('ETCD_PORT', String(etcdPort))}
`;
  const file = join(dir, 'cluster.yaml');
  writeFileSync(file, yaml);
  return { dir, file, natsPort, etcdPort, metricsPort };
}

export interface StatusJson {
  running: boolean;
  supervisor: { pid: number } | null;
  controlPlane: { name: string; state: string; pid: number | null; restarts: number }[];
  replicas: {
    name: string;
    group: string;
    node: string;
    state: string;
    pid: number | null;
    restarts: number;
    gpus: number[];
    lastExit: { code: number | null; signal: string | null } | null;
    message: string | null;
    adopted?: boolean;
  }[];
}

export async function status(file: string): Promise<StatusJson> {
  const r = await dynsup(['status', file, '--json']);
  return JSON.parse(r.stdout) as StatusJson;
}

/** Whether `pid` runs; a zombie (dead, not yet reaped by a slow init) does not. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Every pid whose environment contains `needle` (e.g. DYNSUP_CLUSTER=name): finds anything a test left behind. */
export async function pidsWithEnv(needle: string): Promise<number[]> {
  const { readdir, readFile } = await import('node:fs/promises');
  const out: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const env = await readFile(`/proc/${e}/environ`).catch(() => null);
    if (env && env.includes(needle)) {
      const stat = await readFile(`/proc/${e}/stat`, 'utf8').catch(() => '');
      if (!/^\d+ \(.*\) Z/.test(stat)) out.push(Number(e));
    }
  }
  return out;
}

export { execFile };

/** Every live pid whose command line contains `needle` (e.g. a test's state dir). */
export async function pidsWithCmdline(needle: string): Promise<number[]> {
  const { readdir, readFile } = await import('node:fs/promises');
  const out: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const cmd = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(needle)) {
      const stat = await readFile(`/proc/${e}/stat`, 'utf8').catch(() => '');
      if (!/^\d+ \(.*\) Z/.test(stat)) out.push(Number(e));
    }
  }
  return out;
}
