/** Faults on one machine: crash loops, dependencies not ready, log rotation, a full log disk, resource hygiene. */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { dynsup, spawnUp, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const started: TempCluster[] = [];
async function cluster(body: string): Promise<TempCluster> {
  const c = await tempCluster(body, { name: `r${Math.random().toString(36).slice(2, 8)}` });
  started.push(c);
  return c;
}
afterEach(async () => {
  for (const c of started.splice(0)) await dynsup(['down', c.file]);
});

const events = (c: TempCluster) =>
  readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { time: number; at?: number; replica?: string; msg: string; delayMs?: number });

describe('crash loops', () => {
  it('follows the backoff schedule, hits the crash-loop limit, is failed, and the rest keeps running', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  ok: { command: "exec sleep 600" }
  crash:
    command: "echo boom; exit 1"
    restart: { initialDelay: 200ms, factor: 2, maxDelay: 10s, jitter: 0, maxRestarts: 3, window: 60s }
`);
    const sup = spawnUp(c.file);
    try {
      const failed = await waitFor(
        'crash-0 failed',
        async () => {
          const r = (await status(c.file)).replicas.find((x) => x.name === 'crash-0');
          return r?.state === 'failed' ? r : null;
        },
        20_000,
        50,
      );
      expect(failed.restarts).toBe(3);
      expect(failed.message).toMatch(/crash loop: 3 restarts within 60s/);
      const ev = events(c).filter((e) => e.replica === 'crash-0');
      expect(ev.filter((e) => /restarting in/.test(e.msg)).map((e) => e.delayMs)).toEqual([200, 400, 800]);
      // Each start came no earlier than its delay after the previous exit (on the node's clock: the head
      // hears of both a little later, not always equally late).
      const starts = ev.filter((e) => /started \(pid/.test(e.msg)).map((e) => e.at!);
      const exits = ev.filter((e) => /exited with code 1/.test(e.msg)).map((e) => e.at!);
      expect(starts).toHaveLength(4);
      for (const [i, d] of [200, 400, 800].entries()) expect(starts[i + 1]! - exits[i]!).toBeGreaterThanOrEqual(d - 5);
      // The other group is untouched and the supervisor is still up.
      const s = await status(c.file);
      expect(s.running).toBe(true);
      expect(s.replicas.find((x) => x.name === 'ok-0')).toMatchObject({ state: 'running', restarts: 0 });
      expect(readFileSync(join(c.dir, 'state/logs/crash-0.log'), 'utf8')).toBe('boom\n'.repeat(4));
    } finally {
      sup.kill('SIGTERM');
    }
  });

  it('a worker that prints a fatal line and hangs is restarted as a crash (restart.onLog), the reason shown', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w:
    command: "echo loading; echo 'RuntimeError: CUDA error: an illegal memory access was encountered'; echo more after it; exec sleep 600"
    restart: { initialDelay: 100ms, jitter: 0, maxRestarts: 0, onLog: ["NCCL .*timeout", "CUDA error"] }
`);
    const sup = spawnUp(c.file);
    try {
      const first = await waitFor('running', async () => (await status(c.file)).replicas.find((r) => r.state === 'running'), 30_000, 50);
      const again = await waitFor(
        'restarted',
        async () => {
          const r = (await status(c.file)).replicas[0]!;
          return r.restarts >= 1 && r.pid !== first.pid ? r : null;
        },
        30_000,
        50,
      );
      expect(again.lastExit).toMatchObject({ signal: 'SIGTERM', reason: 'log line matched /CUDA error/' });
      const ev = events(c).filter((e) => e.replica === 'w-0' && /fatal line/.test(e.msg));
      expect(ev[0]!.msg).toContain('w-0 printed a fatal line (restart.onLog /CUDA error/), restarting it: RuntimeError: CUDA error');
      // One restart per process, however many lines match after the first.
      const st = await status(c.file);
      expect(ev.length).toBeLessThanOrEqual(st.replicas[0]!.restarts + 1);
    } finally {
      sup.kill('SIGTERM');
    }
  });

  it('a worker whose dependency is not ready at first start recovers', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  needs:
    command: "[ -e DIR/ready ] || { echo 'dependency not ready'; exit 1; }; echo connected; exec sleep 600"
    restart: { initialDelay: 200ms, maxRestarts: 10 }
`);
    const sup = spawnUp(c.file);
    try {
      await waitFor('first failure', async () => ((await status(c.file)).replicas[0]?.restarts ?? 0) >= 1, 20_000);
      writeFileSync(join(c.dir, 'ready'), '');
      const r = await waitFor(
        'recovered',
        async () => {
          const x = (await status(c.file)).replicas[0]!;
          return x.state === 'running' && readFileSync(join(c.dir, 'state/logs/needs-0.log'), 'utf8').includes('connected') ? x : null;
        },
        20_000,
      );
      expect(r.restarts).toBeGreaterThanOrEqual(1);
    } finally {
      sup.kill('SIGTERM');
    }
  });
});

describe('logs under pressure', () => {
  it('rotates by size at line boundaries without losing or splitting a line', async () => {
    const c = await cluster(`logs: { maxSize: 100KB, keep: 20 }
nodes:
  head: { transport: local }
workers:
  chatty: { command: "seq 1 60000; exec sleep 600" }
`);
    const r = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(r.code, r.stderr).toBe(0);
    const dir = join(c.dir, 'state/logs');
    const all = () =>
      readdirSync(dir)
        .filter((f) => f.startsWith('chatty-0.log'))
        .map((f) => readFileSync(join(dir, f), 'utf8'))
        .join('');
    await waitFor('all lines', () => all().includes('\n60000\n'), 20_000, 100);
    const rotated = readdirSync(dir)
      .filter((f) => /^chatty-0\.log\.\d+$/.test(f))
      .sort((a, b) => Number(b.split('.').pop()) - Number(a.split('.').pop()));
    expect(rotated.length).toBe(3); // 348,894 bytes in files of at most 100,000
    const parts = [...rotated, 'chatty-0.log'].map((f) => readFileSync(join(dir, f), 'utf8'));
    for (const p of parts) expect(p === '' || p.endsWith('\n')).toBe(true); // no line split across files (the current file may be empty right after a rotation)
    for (const p of parts.slice(0, -1)) expect(Buffer.byteLength(p)).toBeLessThanOrEqual(100_000); // 100KB, never exceeded by lines this short
    const lines = parts.join('').trimEnd().split('\n');
    expect(lines.length).toBe(60_000);
    expect(lines.every((l, i) => l === String(i + 1))).toBe(true);
  });

  it('a full log disk is reported and does not stop the worker', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w: { command: "head -c 2000000 /dev/zero | tr '\\\\0' 'x' | fold -w 100; touch DIR/printed; exec sleep 600" }
`);
    const logs = join(c.dir, 'state/logs');
    mkdirSync(logs, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', logs]);
    const sup = spawnUp(c.file);
    try {
      await waitFor('worker printed everything', () => existsSync(join(c.dir, 'printed')), 20_000, 100);
      const s = await waitFor('status', async () => (await status(c.file)).replicas[0], 5000);
      expect(s.state).toBe('running');
      expect(s.restarts).toBe(0);
      await waitFor('reported', () => /w-0: cannot write .*w-0\.log: ENOSPC/.test(sup.output()), 10_000, 100);
      await sleep(500);
      expect((await status(c.file)).running).toBe(true);
    } finally {
      // A full disk must not keep the supervisor from stopping.
      const exited = sup.exitCode !== null || sup.signalCode !== null ? Promise.resolve() : new Promise((r) => sup.once('exit', r));
      sup.kill('SIGTERM');
      await exited;
      execFileSync('umount', ['-l', logs]);
    }
  });

  it('keeps file descriptors and memory flat over a long run with restarts and chatty output', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  chatty: { command: "while true; do seq 1 200; sleep 0.01; done" }
  flappy:
    command: "echo up; sleep 0.1; exit 1"
    restart: { initialDelay: 10ms, maxDelay: 50ms, maxRestarts: 0 }
`);
    const sup = spawnUp(c.file);
    try {
      await waitFor('running', async () => (await status(c.file)).replicas.length === 2, 20_000);
      const sample = () => ({
        fds: readdirSync(`/proc/${sup.pid}/fd`).length,
        rss: Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${sup.pid}/status`, 'utf8'))![1]) * 1024,
      });
      await sleep(8000); // warm up (JIT, buffers)
      const a = sample();
      const restartsA = (await status(c.file)).replicas.find((r) => r.name === 'flappy-0')!.restarts;
      await sleep(20_000);
      const b = sample();
      const restartsB = (await status(c.file)).replicas.find((r) => r.name === 'flappy-0')!.restarts;
      expect(restartsB - restartsA).toBeGreaterThan(50); // it really churned
      expect(b.fds - a.fds).toBeLessThanOrEqual(4);
      expect(b.rss - a.rss).toBeLessThan(40 * 2 ** 20);
      console.log(
        `hygiene: fds ${a.fds} -> ${b.fds}, rss ${(a.rss / 2 ** 20).toFixed(1)} -> ${(b.rss / 2 ** 20).toFixed(1)} MiB over ${restartsB - restartsA} restarts`,
      );
    } finally {
      sup.kill('SIGTERM');
    }
  }, 60_000);
});
