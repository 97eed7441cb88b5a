// Bench 2, restart latency: from `kill -9` of a worker to its replacement's first output line in the
// supervisor's log file, with zero backoff, for dynsup (local and over SSH, as root with its heavy ~/.bashrc
// and as a clean /bin/sh login), supervisord and pm2.
//
// dynsup restarts on the node: the resident node agent sees the leader exit, applies the restart policy and
// starts the replacement; its output lands in the node's spool file (RUNDIR/w-0.out), which the agent
// streams to the head over the node's one connection (a unix socket for `local`, the bridge on one ssh
// exec channel for `ssh`), and the head writes it to <stateDir>/logs/w-0.log. No login, no channel per
// restart: the login is paid once, when the head connects to the node.
// Issue-12 targets: ssh p50 ≤ 1.5× local p50 (both logins); local p50 ≤ pm2 p50.
//
// Every tool supervises the same program (worker.sh: prints `start PID EPOCH_NS`, then exec sleep), so the
// pid to kill next is read from the line itself. The bench polls each tool's own log file every 1 ms from
// the same process, identically for every tool; "spawn" is the worker's own timestamp minus the kill time
// (how fast the process came back, without the log pipeline).
//
//   node scripts/bench/restart.mjs [--kills N]      (BENCH_LAB_ATTACH=1: use a lab that is already up)
import { closeSync, mkdirSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import {
  WORK, agentProcs, dynsup, ensureApt, ensureCleanUser, ensurePm2, short, supervisorErrors, killByEnv, labFor, log, mdTable, ms, must, onCleanup, onDynsupCleanup, supervisorPid, percentile, pidAlive, procSample, ratio, run, runCleanups, sleep, waitFor, printSection,
} from './lib.mjs';

const nowMs = () => performance.timeOrigin + performance.now();

const WORKER = `#!/bin/sh
# bench worker: one timestamped line at start, then nothing (exec keeps the pid the supervisor started)
echo "start $$ $(date +%s%N)"
exec sleep 1000000
`;

/** Follows a log file from an offset; returns parsed `start` lines as they appear. */
class LogFollower {
  constructor(file) {
    this.file = file;
    this.offset = 0;
    this.rest = '';
    this.buf = Buffer.alloc(1 << 16);
  }
  /** New `start` lines since the last call: [{pid, ns}]. */
  poll() {
    let size;
    try {
      size = statSync(this.file).size;
    } catch {
      return [];
    }
    if (size < this.offset) this.offset = 0; // truncated/rotated
    if (size === this.offset) return [];
    const fd = openSync(this.file, 'r');
    let text = '';
    try {
      while (this.offset < size) {
        const n = readSync(fd, this.buf, 0, Math.min(this.buf.length, size - this.offset), this.offset);
        if (n <= 0) break;
        this.offset += n;
        text += this.buf.toString('utf8', 0, n);
      }
    } finally {
      closeSync(fd);
    }
    const lines = (this.rest + text).split('\n');
    this.rest = lines.pop() ?? '';
    const out = [];
    for (const l of lines) {
      const m = /start (\d+) (\d+)/.exec(l);
      if (m) out.push({ pid: Number(m[1]), ns: BigInt(m[2]) });
    }
    return out;
  }
  /** Wait (1 ms polling) for a start line whose pid is not `notPid`; resolves {line, seenAt}. */
  async next(notPid, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const l of this.poll()) if (l.pid !== notPid) return { line: l, seenAt: nowMs() };
      if (Date.now() > deadline) throw new Error(`no new start line in ${this.file} within ${timeoutMs} ms`);
      await sleep(1);
    }
  }
}

/**
 * Kill the current worker `kills` times; measure kill → first line in the log, and kill → worker start.
 * supervisorPid: the supervising daemon (its CPU per restart); agentPids: dynsup's node-side processes (agent
 * daemon and bridge), whose CPU per restart is reported beside it.
 */
async function measure(name, logFile, kills, supervisorPid, agentPids = []) {
  const f = new LogFollower(logFile);
  let { line: cur } = await f.next(-1, 30_000);
  await sleep(300); // let the supervisor settle after the first start
  const seen = [];
  const spawned = [];
  const cpu0 = supervisorPid ? procSample(supervisorPid)?.cpuS : undefined;
  const agentCpu = () => agentPids.reduce((a, pid) => a + (procSample(pid)?.cpuS ?? NaN), 0);
  const agent0 = agentCpu();
  const t0 = Date.now();
  for (let i = 0; i < kills; i++) {
    const killedAt = nowMs();
    try {
      process.kill(cur.pid, 'SIGKILL');
    } catch (err) {
      throw new Error(`${name}: cannot kill worker pid ${cur.pid}: ${err.message}`, { cause: err });
    }
    const { line, seenAt } = await f.next(cur.pid, 15_000);
    seen.push(seenAt - killedAt);
    spawned.push(Number(line.ns / 1000n) / 1000 - killedAt);
    cur = line;
    await sleep(30); // a crash does not follow a start within the same millisecond
  }
  const cpu1 = supervisorPid ? procSample(supervisorPid)?.cpuS : undefined;
  const agent1 = agentCpu();
  const r = {
    name, kills, seen, spawned, wallS: (Date.now() - t0) / 1000,
    supCpuPerRestartMs: cpu0 !== undefined && cpu1 !== undefined ? ((cpu1 - cpu0) * 1000) / kills : NaN,
    agentCpuPerRestartMs: agentPids.length ? ((agent1 - agent0) * 1000) / kills : NaN,
    agentProcs: agentPids.length,
  };
  log(`restart ${name}: p50 ${ms(percentile(seen, 50))} ms, p99 ${ms(percentile(seen, 99))} ms (${kills} kills, ${r.wallS.toFixed(1)} s)`);
  return r;
}

/** runDirNeedle: a part of the node's run dir (the agent's and bridge's argv) that names this cluster. */
async function dynsupCase(label, dir, nodesYaml, nodeName, kills, runDirNeedle) {
  const name = `bench-restart-${label.replace(/\W+/g, '-')}-${process.pid}`;
  const file = join(dir, `${name}.yaml`);
  const stateDir = join(dir, `state-${name}`);
  rmSync(stateDir, { recursive: true, force: true });
  writeFileSync(file, `name: ${name}
head: { address: 10.99.0.1 }
stateDir: ${stateDir}
lease: 30s
metrics: { enabled: false }
ui: { enabled: false }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
nodes:
${nodesYaml}
workers:
  w:
    command: [sh, ${join(dir, 'worker.sh')}]
    nodes: [${nodeName}]
    restart: { initialDelay: 0, maxRestarts: 0 }
    stop: { grace: 1s }
`);
  const done = onDynsupCleanup(`dynsup ${label}`, name, file, 120_000);
  try {
    const up = await dynsup(['up', '-d', file, '--timeout', '60']);
    if (up.code !== 0) throw new Error(`dynsup up (${label}) failed (exit ${up.code}): ${supervisorErrors(stateDir) || short(up.stderr)}`);
    const pid = supervisorPid(stateDir);
    const needle = runDirNeedle(name, stateDir);
    const { daemons, bridges } = await agentProcs(needle);
    if (daemons.length !== 1) throw new Error(`dynsup ${label}: expected one node agent daemon with ${needle} in its argv, found ${daemons.length}`);
    return await measure(`dynsup ${label}`, join(stateDir, 'logs/w-0.log'), kills, pid, [...daemons, ...bridges].map((x) => x.pid)).catch((err) => {
      const why = supervisorErrors(stateDir);
      throw new Error(`${short(err)}${why ? `; the supervisor logged: ${why}` : ''}`);
    });
  } finally {
    await done();
  }
}

async function supervisordCase(dir, kills) {
  const d = join(dir, 'supervisord');
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  const token = `BENCH_RESTART_SUPD_${process.pid}`;
  const conf = join(d, 'supervisord.conf');
  writeFileSync(conf, `[unix_http_server]
file=${d}/supervisor.sock
[supervisord]
logfile=${d}/supervisord.log
pidfile=${d}/supervisord.pid
childlogdir=${d}
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://${d}/supervisor.sock
[program:w]
command=/bin/sh ${join(dir, 'worker.sh')}
environment=${token}="1"
startsecs=0
startretries=1000000
autorestart=true
redirect_stderr=true
stdout_logfile=${d}/w.log
stdout_logfile_maxbytes=0
stopasgroup=true
killasgroup=true
`);
  const child = spawn('/usr/bin/supervisord', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (x) => (err += x));
  const done = onCleanup('supervisord', async () => {
    if (pidAlive(child.pid)) {
      child.kill('SIGTERM');
      await waitFor('supervisord to exit', () => !pidAlive(child.pid) || child.exitCode !== null, 15_000).catch(() => child.kill('SIGKILL'));
    }
    await killByEnv(`${token}=1`);
  });
  try {
    const r = await measure('supervisord', join(d, 'w.log'), kills, child.pid);
    return r;
  } catch (e) {
    throw new Error(`${e.message}\n${err}`, { cause: e });
  } finally {
    await done();
  }
}

async function pm2Case(dir, kills, pm2) {
  const d = join(dir, 'pm2');
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  const token = `BENCH_RESTART_PM2_${process.pid}`;
  const env = { ...process.env, PM2_HOME: join(d, 'home') };
  const eco = join(d, 'ecosystem.config.cjs');
  writeFileSync(eco, `module.exports = { apps: [{
  name: 'w', script: ${JSON.stringify(join(dir, 'worker.sh'))}, interpreter: '/bin/sh', exec_mode: 'fork',
  autorestart: true, restart_delay: 0, min_uptime: 0, max_restarts: 1000000000, time: false, merge_logs: true,
  out_file: ${JSON.stringify(join(d, 'w-out.log'))}, error_file: ${JSON.stringify(join(d, 'w-err.log'))},
  env: { ${token}: '1' },
}] };
`);
  const done = onCleanup('pm2', async () => {
    await run(pm2, ['kill'], { env, timeoutMs: 60_000 });
    await killByEnv(`${token}=1`);
    // the God daemon, by the pid file in our PM2_HOME, if `pm2 kill` left it
    try {
      const pid = Number((await import('node:fs')).readFileSync(join(d, 'home/pm2.pid'), 'utf8'));
      if (pid > 1 && pidAlive(pid)) process.kill(pid, 'SIGKILL');
    } catch { /* gone */ }
  });
  try {
    await must(pm2, ['start', eco], { env, timeoutMs: 60_000 });
    const god = Number((await import('node:fs')).readFileSync(join(d, 'home/pm2.pid'), 'utf8'));
    return await measure('pm2', join(d, 'w-out.log'), kills, god);
  } finally {
    await done();
  }
}

/** Runs the restart bench; returns the report section. */
export async function benchRestart({ lab, kills = 200, supervisordKills = kills, cleanUser }) {
  const installed = await ensureApt([['/usr/bin/supervisord', 'supervisor']]);
  const pm2 = await ensurePm2();
  const dir = join(WORK, 'restart');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'worker.sh'), WORKER, { mode: 0o755 });
  const results = [];
  const errors = [];
  const cases = [
    // local: the agent's run dir is <stateDir>/run/nodes/head; ssh: /tmp/dynsup-USER/CLUSTER/NODE on the node.
    ['dynsup local', () => dynsupCase('local', dir, '  head: { transport: local }', 'head', kills, (_, stateDir) => `${stateDir}/run/nodes/head`)],
    ['dynsup ssh', () => dynsupCase('ssh', dir, lab.yamlNodes(1), lab.nodes[0].name, kills, (name) => `/dynsup-root/${name}/${lab.nodes[0].name}`)],
    ...(cleanUser ? [['dynsup ssh (clean login)', () => dynsupCase('ssh (clean login)', dir, lab.yamlNodes(1, cleanUser), lab.nodes[0].name, kills, (name) => `/dynsup-${cleanUser}/${name}/${lab.nodes[0].name}`)]] : []),
    ['supervisord', () => supervisordCase(dir, supervisordKills)],
    ['pm2', () => pm2Case(dir, kills, pm2.bin)],
  ];
  for (const [name, fn] of cases) {
    try {
      results.push(await fn());
    } catch (err) {
      log(`restart ${name} FAILED: ${err.message}`);
      errors.push(`${name}: ${short(err, 500)}`);
    }
  }
  const by = Object.fromEntries(results.map((r) => [r.name, r]));
  const p = (r, q, k = 'seen') => (r ? percentile(r[k], q) : NaN);
  const best = Math.min(p(by.supervisord, 50), p(by.pm2, 50));
  const bestName = p(by.supervisord, 50) <= p(by.pm2, 50) ? 'supervisord' : 'pm2';
  const rows = results.map((r) => [
    r.name,
    String(r.kills),
    ms(p(r, 50)),
    ms(p(r, 99)),
    ms(p(r, 50, 'spawned')),
    ms(p(r, 99, 'spawned')),
    ratio(p(r, 50), p(by.pm2, 50)),
    ratio(p(r, 50), best),
    Number.isFinite(r.supCpuPerRestartMs) ? ms(r.supCpuPerRestartMs) : 'n/a',
    Number.isFinite(r.agentCpuPerRestartMs) ? ms(r.agentCpuPerRestartMs) : '-',
  ]);
  const local = p(by['dynsup local'], 50);
  const pm2p50 = p(by.pm2, 50);
  const targets = [
    ...[['dynsup ssh', 'root login, heavy ~/.bashrc'], ['dynsup ssh (clean login)', 'clean login']].filter(([n]) => n !== 'dynsup ssh (clean login)' || cleanUser).map(([n, what]) => {
      const v = p(by[n], 50);
      const rel = v / local;
      return {
        bench: 'restart',
        what: `ssh (${what}) p50 ≤ 1.5× local p50`,
        value: Number.isFinite(rel) ? `${rel.toFixed(2)}× (${ms(v)} ms vs ${ms(local)} ms)` : `n/a (${by[n] ? '' : `${n} failed; `}${by['dynsup local'] ? '' : 'local failed'})`,
        met: Number.isFinite(rel) && rel <= 1.5,
      };
    }),
    {
      bench: 'restart',
      what: 'local p50 ≤ pm2 p50',
      value: Number.isFinite(local / pm2p50) ? `${(local / pm2p50).toFixed(2)}× (${ms(local)} ms vs pm2 ${ms(pm2p50)} ms)` : 'n/a',
      met: Number.isFinite(local / pm2p50) && local <= pm2p50,
    },
  ];
  const md = [
    mdTable(['supervisor', 'kills', 'kill→line p50 ms', 'p99 ms', 'kill→worker start p50 ms', 'p99 ms', 'p50 vs pm2', 'p50 vs best baseline', 'supervisor CPU per restart ms', 'node agent CPU per restart ms'], rows),
    '',
    `Zero backoff everywhere: dynsup \`restart: {initialDelay: 0, maxRestarts: 0}\`; supervisord \`startsecs=0, autorestart=true\`; ` +
      `pm2 \`restart_delay: 0, min_uptime: 0\`. "kill→line" is what an operator sees: \`kill -9\` to the replacement's first line ` +
      `in the tool's own log file (dynsup: \`<stateDir>/logs/w-0.log\`; supervisord: \`stdout_logfile\`; pm2: \`out_file\`), ` +
      `polled every 1 ms by the bench. "kill→worker start" is the timestamp the new worker prints first (\`date +%s%N\`). ` +
      `Best baseline = the faster of supervisord and pm2 (${bestName}). supervisord and pm2 supervise locally; "dynsup local" runs the worker under ` +
      `the head's own node agent (reached over a unix socket); "dynsup ssh" runs it on lab node ${lab.nodes[0].name}, under that node's agent, reached ` +
      `over one ssh exec channel as root (whose login runs ~/.bashrc with pyenv init: paid once, when the head connects, not per restart)` +
      (cleanUser ? `, "clean login" as user ${cleanUser} (/bin/sh, no rc file)` : '') + '. ' +
      `The restart itself happens on the node (the agent applies the restart policy); the replacement's output goes to the node's spool file and ` +
      `the agent streams it to the head. "node agent CPU per restart" = the agent daemon plus, over ssh, the bridge on the exec channel (utime+stime from /proc).` +
      (supervisordKills !== kills ? ` supervisord: ${supervisordKills} kills instead of ${kills}, to fit the time budget: each of its restarts waits for its 1 s main-loop tick (about 2 s per kill), so ${kills} kills would take ${Math.round(kills * 2.05)} s; its p50/p99 are stable at that tick.` : '') +
      (installed.length ? ` Installed for this run with apt-get: ${installed.join(', ')}.` : '') +
      (pm2.installed ? ` pm2 installed for this run into ${pm2.bin.replace(/\/node_modules.*/, '')} (npm --prefix).` : ''),
    ...(errors.length ? ['', `**Errors:** ${errors.join('; ')}`] : []),
  ].join('\n');
  return { title: 'Restart latency', md, targets, raw: results.map((r) => ({ ...r, p50: p(r, 50), p99: p(r, 99) })) };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = (k, d) => {
    const i = process.argv.indexOf(k);
    return i > 0 ? process.argv[i + 1] : d;
  };
  const kills = Number(arg('--kills', '200'));
  try {
    const lab = await labFor(1);
    const clean = await ensureCleanUser();
    const r = await benchRestart({ lab, kills, supervisordKills: Number(arg('--supervisord-kills', String(kills))), cleanUser: clean.name });
    printSection(r);
  } finally {
    await runCleanups();
  }
}
