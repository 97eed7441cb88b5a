#!/usr/bin/env node
// Idle cost of the node agent: N agents (each with its lease watchdog) around `sleep` workers, on this
// machine, for a window of S seconds. Prints the CPU the agents' process trees used and the processes
// they started, next to a baseline of N bare `sleep` processes (which cost nothing: what a supervisor
// with no per-worker watcher would add).
//
//   node scripts/bench/agent-idle.mjs [--n 32] [--seconds 20]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { renderSpec } from '../../dist/transport/agent.js';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const N = arg('n', 32);
const S = arg('seconds', 20);
const AGENT = new URL('../../share/node-agent.sh', import.meta.url).pathname;
const TICK = 100; // clock ticks per second (USER_HZ) on Linux

/** Total CPU ticks of the whole machine, and the count of processes created since boot. */
function machine() {
  const stat = readFileSync('/proc/stat', 'utf8');
  const cpu = stat.match(/^cpu\s+(.*)$/m)[1].split(/\s+/).map(Number);
  const busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]; // user nice system irq softirq steal
  return { busy, forks: Number(stat.match(/^processes (\d+)$/m)[1]) };
}

async function window(label, start) {
  const procs = await start();
  await sleep(2000); // let start-up settle
  const a = machine();
  await sleep(S * 1000);
  const b = machine();
  for (const p of procs) p.kill('SIGTERM');
  await sleep(1500);
  const cpuS = (b.busy - a.busy) / TICK;
  return { label, cpuS, forksPerS: (b.forks - a.forks) / S };
}

const dir = mkdtempSync(join(tmpdir(), 'dynsup-agent-idle-'));
try {
  const base = await window(`${N} bare sleep processes`, async () => Array.from({ length: N }, () => spawn('sleep', ['600'], { stdio: 'ignore' })));
  const agents = await window(`${N} node agents (sleep workers, lease watchdog on)`, async () => {
    const hb = join(dir, 'heartbeat');
    writeFileSync(hb, '1');
    const beat = setInterval(() => writeFileSync(hb, String(Date.now())), 1000);
    const procs = Array.from({ length: N }, (_, i) => {
      const name = `w-${i}`;
      writeFileSync(join(dir, `${name}.spec`), renderSpec({ replica: name, argv: ['sleep', '600'], env: {}, unsetEnv: [], graceSeconds: 2, stopSignal: 'SIGTERM' }, { mode: 'spool', leaseSeconds: 30 }), { mode: 0o600 });
      return spawn('sh', [AGENT, dir, name], { stdio: 'ignore', detached: true });
    });
    procs.push({ kill: () => clearInterval(beat) });
    return procs;
  });
  for (const f of readdirSync(dir)) if (f.endsWith('.pid')) try { process.kill(-Number(readFileSync(join(dir, f), 'utf8')), 'SIGKILL'); } catch {}
  const extra = agents.cpuS - base.cpuS;
  console.log(`agent idle cost, ${N} workers, ${S} s window (whole-machine CPU, /proc/stat):`);
  console.log(`| setup | machine CPU-s | processes started/s |`);
  console.log(`|---|---|---|`);
  for (const r of [base, agents]) console.log(`| ${r.label} | ${r.cpuS.toFixed(2)} | ${r.forksPerS.toFixed(1)} |`);
  console.log(`=> the agents add ${extra.toFixed(2)} CPU-s over ${S} s: ${((extra / S / N) * 1000).toFixed(2)} ms of CPU per second per worker, ${((agents.forksPerS - base.forksPerS) / N).toFixed(2)} processes/s per worker`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
