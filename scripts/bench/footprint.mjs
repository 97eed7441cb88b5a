/* global document -- the page.waitForFunction callbacks run in the browser */
// Bench 4, footprint at scale: 256 replicas across 32 lab nodes (8 per node) under one dynsup supervisor:
// its RSS and idle CPU over a minute, the node side's idle CPU (the resident agent daemon of each node, the
// bridge its ssh exec channel runs, and the sshd session process carrying that channel), and `dynsup status`
// latency (p50 of 20 calls). Baselines, measured in the same minute: supervisord and pm2 each supervising 256
// local copies of the same worker (they cannot reach other machines), and `supervisorctl status` / `pm2 ls`
// latency. Issue-12 targets: node side ≤ 0.2 ms of CPU per second per replica; supervisor RSS ≤ 100 MB;
// `dynsup status` p50 ≤ 1.5× `supervisorctl status`. Then the web view (issue 16): the supervisor's RSS and CPU
// with 10 pages of it open in headless Chromium (Debian's chromium, driven by puppeteer-core), each showing
// the 256 tiles live.
//
//   node scripts/bench/footprint.mjs [--idle 60] [--calls 20] [--user root] [--pages 10]   (BENCH_LAB_ATTACH=1)
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import {
  WORK, agentProcs, dynsup, freePort, procStat, short, supervisorErrors, ensureApt, ensureCleanUser, ensurePm2, killByEnv, labFor, log, machineCpu, mb, mdTable, ms, must, onCleanup, onDynsupCleanup, supervisorPid, percentile, pidAlive, procSample, ratio, run, runCleanups, sec, sleep, waitFor, printSection,
} from './lib.mjs';

const REPLICAS = 256;
const NODES = 32;
const WORKER_CMD = 'echo ready; exec sleep 1000000';

/**
 * The node side of a cluster at one instant: agent daemons, bridges and the sshd processes that are the
 * bridges' parents (the session process of each exec channel), each pid with its CPU seconds.
 */
async function nodeSide(runDirNeedle) {
  const { daemons, bridges } = await agentProcs(runDirNeedle);
  const sshd = [];
  for (const b of bridges) {
    const p = procStat(b.ppid);
    if (!p) continue;
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${b.ppid}/cmdline`, 'utf8').replaceAll('\0', ' ');
    } catch { /* gone */ }
    if (cmd.startsWith('sshd')) sshd.push({ pid: b.ppid, cmd, ...p });
  }
  const map = (l) => new Map(l.map((x) => [x.pid, x.cpuS]));
  const agentRssKB = daemons.map((x) => procSample(x.pid)?.rssKB).filter((v) => Number.isFinite(v));
  return { daemons: map(daemons), bridges: map(bridges), sshd: map(sshd), agentRssKB };
}

/** CPU seconds a set of processes used between two nodeSide() samples (per pid; new pids count from 0). */
function cpuBetween(before, after) {
  let s = 0;
  for (const [pid, cpu] of after) s += cpu - (before.get(pid) ?? 0);
  return s;
}

async function timeCalls(label, calls, fn) {
  const t = [];
  for (let i = 0; i < calls; i++) {
    const r = await fn();
    if (r.code !== 0 && !(label.startsWith('dynsup') && r.code === 1 && r.stdout)) throw new Error(`${label} exited ${r.code}: ${r.stderr.slice(0, 300)}`);
    t.push(r.ms);
  }
  return t;
}

/**
 * `dynsup up -d` with all replicas at once (`initial` = REPLICAS), or staged: up with `initial`, then
 * `dynsup scale` by `initial` at a time, each step waiting for every replica to be running.
 */
async function startDynsup(lab, dir, user, initial = REPLICAS) {
  const uiPort = await freePort(lab.head);
  const name = `bench-fp-${initial === REPLICAS ? 'all' : 'staged'}-${process.pid}`;
  const stateDir = join(dir, `state-${name}`);
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, `name: ${name}
head: { address: ${lab.head} }
stateDir: ${stateDir}
lease: 30s
metrics: { enabled: false, port: ${uiPort} }
ui: { enabled: true }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
nodes:
${lab.yamlNodes(NODES, user, REPLICAS / NODES)}
workers:
  w:
    command: "${WORKER_CMD}"
    replicas: ${initial}
    gpus: 1
    stop: { grace: 2s }
`);
  const stop = onDynsupCleanup(`dynsup footprint ${name}`, name, file, 300_000);
  try {
    const t0 = performance.now();
    const up = await dynsup(['up', '-d', file, '--timeout', '240'], { timeoutMs: 300_000 });
    if (up.code !== 0) throw new Error(`dynsup up -d (${initial} replicas at once) failed (exit ${up.code}): ${supervisorErrors(stateDir) || short(up.stderr, 600)}`);
    for (let n = initial * 2; n <= REPLICAS; n += initial) {
      const r = await dynsup(['scale', file, `w=${n}`], { timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`dynsup scale w=${n} failed: ${short(r.stderr)}`);
      await waitFor(`${n} replicas running`, async () => {
        const st = JSON.parse((await dynsup(['status', file, '--json'])).stdout);
        if (st.replicas.some((x) => x.state === 'failed')) throw new Error(supervisorErrors(stateDir) || 'a replica failed');
        return st.replicas.filter((x) => x.state === 'running').length >= n;
      }, 240_000, 1000);
    }
    const upMs = performance.now() - t0;
    const pid = supervisorPid(stateDir);
    return { name, file, pid, upMs, stop, staged: initial !== REPLICAS, runDirNeedle: `/dynsup-${user}/${name}/`, uiUrl: `http://${lab.head}:${uiPort}/` };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * The web view with `pages` pages open, each on the overview with every tile shown: the supervisor's RSS once
 * they are all live (and after a settle), its CPU over `windowS` seconds with them open (an idle cluster: only
 * keep-alives and the telemetry rescan), and what one page transferred on its first load.
 */
async function measurePages(url, pid, pages, windowS) {
  const { default: puppeteer } = await import('puppeteer-core');
  const chromium = (await run('sh', ['-c', 'command -v chromium'])).stdout.trim();
  if (!chromium) throw new Error('chromium is not installed (.ci/install.sh installs it)');
  const before = procSample(pid);
  const probe = await fetch(url).then((r) => `HTTP ${r.status}`, (e) => `unreachable: ${e.message}`);
  if (probe !== 'HTTP 200') throw new Error(`the web view at ${url}: ${probe}`);
  const browser = await puppeteer.launch({ executablePath: chromium, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  const stop = onCleanup('chromium (web view pages)', () => browser.close());
  try {
    let firstLoadBytes = 0;
    const opened = [];
    for (let i = 0; i < pages; i++) {
      // One browser context each, like 10 operators: a tab hidden behind another holds no stream (and one
      // browser allows 6 connections per host), so 10 tabs of one window would be one live page.
      const context = await browser.createBrowserContext();
      const page = await context.newPage();
      // Generous: 2 shared cores run 256 replicas' agents, two other supervisors and Chromium here.
      page.setDefaultTimeout(180_000);
      page.setDefaultNavigationTimeout(180_000);
      let cdp;
      const sizes = new Map();
      if (i === 0) {
        cdp = await page.createCDPSession();
        await cdp.send('Network.enable');
        cdp.on('Network.loadingFinished', (e) => sizes.set(e.requestId, e.encodedDataLength));
      }
      await page.goto(url, { waitUntil: 'load' });
      await page.waitForFunction((n) => document.querySelectorAll('.group .tile').length >= n, { timeout: 180_000, polling: 250 }, REPLICAS);
      if (i === 0) firstLoadBytes = [...sizes.values()].reduce((a, b) => a + b, 0);
      opened.push(page);
    }
    const snapshotBytes = Buffer.byteLength(await (await fetch(`${url}api/status`)).text());
    await sleep(5000); // settle
    const s0 = procSample(pid);
    await sleep(windowS * 1000);
    const s1 = procSample(pid);
    // Still live after the window: every page shows all tiles, on its open stream.
    for (const p of opened) {
      await p.waitForFunction((n) => document.querySelectorAll('.group .tile').length >= n && document.getElementById('conn').textContent === 'live', { timeout: 30_000 }, REPLICAS);
    }
    return { pages, rssBeforeKB: before?.rssKB, rssKB: s1?.rssKB, hwmKB: s1?.hwmKB, cpuS: s1 && s0 ? s1.cpuS - s0.cpuS : NaN, windowS, firstLoadBytes, snapshotBytes };
  } finally {
    await stop();
  }
}

async function startSupervisord(dir) {
  const d = join(dir, 'supervisord');
  mkdirSync(d, { recursive: true });
  const token = `BENCH_FP_SUPD_${process.pid}`;
  const conf = join(d, 'supervisord.conf');
  writeFileSync(conf, `[unix_http_server]
file=${d}/supervisor.sock
[supervisord]
logfile=${d}/supervisord.log
pidfile=${d}/supervisord.pid
childlogdir=${d}
nodaemon=true
minfds=4096
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://${d}/supervisor.sock
[program:w]
command=/bin/sh -c '${WORKER_CMD}'
process_name=%(program_name)s-%(process_num)03d
numprocs=${REPLICAS}
environment=${token}="1"
startsecs=0
autorestart=true
redirect_stderr=true
stdout_logfile=${d}/%(program_name)s-%(process_num)03d.log
stdout_logfile_maxbytes=0
`);
  const child = spawn('/usr/bin/supervisord', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (x) => (err += x));
  const stop = onCleanup('supervisord footprint', async () => {
    if (pidAlive(child.pid) && child.exitCode === null) {
      child.kill('SIGTERM');
      await waitFor('supervisord to exit', () => child.exitCode !== null || !pidAlive(child.pid), 30_000).catch(() => child.kill('SIGKILL'));
    }
    await killByEnv(`${token}=1`);
  });
  const ctl = () => run('/usr/bin/supervisorctl', ['-c', conf, 'status'], { timeoutMs: 60_000 });
  await waitFor('256 supervisord programs RUNNING', async () => {
    const r = await ctl();
    return (r.stdout.match(/RUNNING/g) ?? []).length >= REPLICAS;
  }, 120_000, 500).catch((e) => {
    throw new Error(`${e.message}\n${err}`);
  });
  return { pid: child.pid, stop, status: ctl };
}

async function startPm2(dir, pm2) {
  const d = join(dir, 'pm2');
  mkdirSync(d, { recursive: true });
  const token = `BENCH_FP_PM2_${process.pid}`;
  const env = { ...process.env, PM2_HOME: join(d, 'home') };
  const eco = join(d, 'ecosystem.config.cjs');
  writeFileSync(eco, `module.exports = { apps: Array.from({ length: ${REPLICAS} }, (_, i) => ({
  name: 'w-' + i, script: '/bin/sh', args: ['-c', ${JSON.stringify(WORKER_CMD)}], interpreter: 'none', exec_mode: 'fork',
  autorestart: true, restart_delay: 0, time: false, merge_logs: true,
  out_file: ${JSON.stringify(d)} + '/w-' + i + '.log', error_file: ${JSON.stringify(d)} + '/w-' + i + '.err',
  env: { ${token}: '1' },
})) };
`);
  const stop = onCleanup('pm2 footprint', async () => {
    await run(pm2, ['kill'], { env, timeoutMs: 120_000 });
    await killByEnv(`${token}=1`);
    try {
      const pid = Number(readFileSync(join(d, 'home/pm2.pid'), 'utf8'));
      if (pid > 1 && pidAlive(pid)) process.kill(pid, 'SIGKILL');
    } catch { /* gone */ }
  });
  await must(pm2, ['start', eco], { env, timeoutMs: 300_000 });
  const god = Number(readFileSync(join(d, 'home/pm2.pid'), 'utf8'));
  await waitFor('256 pm2 apps online', async () => {
    const r = await run(pm2, ['jlist'], { env, timeoutMs: 60_000 });
    try {
      return JSON.parse(r.stdout).filter((p) => p.pm2_env?.status === 'online').length >= REPLICAS;
    } catch {
      return false;
    }
  }, 120_000, 1000);
  return { pid: god, stop, status: () => run(pm2, ['ls'], { env, timeoutMs: 60_000 }) };
}

export async function benchFootprint({ lab, idleS = 60, calls = 20, user = 'root', pages = 10 }) {
  if (lab.nodes.length < NODES) throw new Error(`footprint: need a ${NODES}-node lab`);
  const installed = await ensureApt([['/usr/bin/supervisord', 'supervisor']]);
  const pm2 = await ensurePm2();
  const dir = join(WORK, 'footprint');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const errors = [];
  let d;
  let s;
  let p;
  try {
    log(`footprint: dynsup up -d, ${REPLICAS} replicas on ${NODES} nodes (login ${user})`);
    try {
      d = await startDynsup(lab, dir, user);
    } catch (err) {
      // Reported as measured; then the footprint is taken on a cluster brought up 64 replicas at a time.
      errors.push(`all ${REPLICAS} replicas at once: ${short(err, 600)}`);
      log(`footprint: ${short(err, 600)}; retrying staged (up 64, then dynsup scale +64 at a time)`);
      d = await startDynsup(lab, dir, user, 64);
    }
    const upMs = d.upMs;
    log(`footprint: dynsup up in ${sec(d.upMs)} s; starting supervisord and pm2 with ${REPLICAS} programs each`);
    try {
      s = await startSupervisord(dir);
    } catch (err) {
      errors.push(`supervisord: ${err.message.split('\n')[0]}`);
    }
    try {
      p = await startPm2(dir, pm2.bin);
    } catch (err) {
      errors.push(`pm2: ${err.message.split('\n')[0]}`);
    }
    await sleep(5000); // settle
    log(`footprint: idle window of ${idleS} s`);
    const daemons = [['dynsup supervisor', d.pid], ['supervisord', s?.pid], ['pm2 God daemon', p?.pid]].filter(([, pid]) => pid);
    const before = Object.fromEntries(daemons.map(([n, pid]) => [n, procSample(pid)]));
    const node0 = await nodeSide(d.runDirNeedle);
    const m0 = machineCpu();
    await sleep(idleS * 1000);
    const m1 = machineCpu();
    const node1 = await nodeSide(d.runDirNeedle);
    const after = Object.fromEntries(daemons.map(([n, pid]) => [n, procSample(pid)]));
    log('footprint: status latency');
    const lat = {};
    lat['dynsup supervisor'] = await timeCalls('dynsup status', calls, () => dynsup(['status', d.file]));
    const jsonLat = await timeCalls('dynsup status --json', calls, () => dynsup(['status', d.file, '--json']));
    if (s) lat.supervisord = await timeCalls('supervisorctl status', calls, s.status);
    if (p) lat['pm2 God daemon'] = await timeCalls('pm2 ls', calls, p.status);
    const nodeStart = await timeCalls('node -e 0', 10, () => run(process.execPath, ['-e', '0']));
    let web;
    if (pages > 0) {
      log(`footprint: the web view with ${pages} pages open`);
      try {
        web = await measurePages(d.uiUrl, d.pid, pages, 20);
      } catch (err) {
        errors.push(`web view pages: ${short(err, 400)}`);
      }
    }
    const rows = daemons.map(([n]) => {
      const b = before[n];
      const a = after[n];
      const cpu = a && b ? a.cpuS - b.cpuS : NaN;
      return { n, rssKB: a?.rssKB, hwmKB: a?.hwmKB, cpuS: cpu, pct: (cpu / idleS) * 100, lat: lat[n] };
    });
    const base = rows.find((r) => r.n === 'supervisord') ?? rows.find((r) => r.n === 'pm2 God daemon');
    const cmd = { 'dynsup supervisor': '`dynsup status`', supervisord: '`supervisorctl status`', 'pm2 God daemon': '`pm2 ls`' };
    const table = rows.map((r) => [
      r.n,
      r.n === 'dynsup supervisor' ? `${REPLICAS} on ${NODES} lab nodes (ssh)` : `${REPLICAS} local`,
      mb(r.rssKB),
      ratio(r.rssKB, base?.rssKB),
      mb(r.hwmKB),
      `${(r.cpuS * 1000).toFixed(0)} ms (${r.pct.toFixed(2)}% of a core)`,
      ratio(r.cpuS, base?.cpuS),
      `${cmd[r.n]} ${ms(percentile(r.lat ?? [], 50))}`,
      ms(percentile(r.lat ?? [], 99)),
      ratio(percentile(r.lat ?? [], 50), percentile(base?.lat ?? [], 50)),
    ]);
    const agentCpu = cpuBetween(node0.daemons, node1.daemons);
    const bridgeCpu = cpuBetween(node0.bridges, node1.bridges);
    const sshdCpu = cpuBetween(node0.sshd, node1.sshd);
    const nodeCpu = agentCpu + bridgeCpu + sshdCpu;
    const perReplica = (cpuS) => (cpuS / idleS / REPLICAS) * 1000; // ms of CPU per second per replica
    const dyn = rows.find((r) => r.n === 'dynsup supervisor');
    const supd = rows.find((r) => r.n === 'supervisord');
    const statusRatio = percentile(dyn?.lat ?? [], 50) / percentile(supd?.lat ?? [], 50);
    const targets = [
      {
        bench: 'footprint',
        what: `256 replicas idle: node-side CPU ≤ 0.2 ms/s per replica (agent daemons + bridges + their sshd)`,
        value: `${perReplica(nodeCpu).toFixed(3)} ms/s (agents ${perReplica(agentCpu).toFixed(3)}, bridges ${perReplica(bridgeCpu).toFixed(3)}, sshd ${perReplica(sshdCpu).toFixed(3)})`,
        met: node1.daemons.size > 0 && perReplica(nodeCpu) <= 0.2,
      },
      {
        bench: 'footprint',
        what: 'supervisor RSS ≤ 100 MB (256 replicas, idle)',
        value: `${mb(dyn?.rssKB)} MB (peak ${mb(dyn?.hwmKB)} MB)`,
        met: Number.isFinite(dyn?.rssKB) && dyn.rssKB / 1024 <= 100,
      },
      ...(web
        ? [
            {
              bench: 'footprint',
              what: `supervisor RSS ≤ 100 MB with ${web.pages} web view pages open (256 replicas)`,
              value: `${mb(web.rssKB)} MB (${mb(web.rssBeforeKB)} MB before the pages; peak ${mb(web.hwmKB)} MB)`,
              met: Number.isFinite(web.rssKB) && web.rssKB / 1024 <= 100,
            },
          ]
        : []),
      {
        bench: 'footprint',
        what: '`dynsup status` p50 ≤ 1.5× `supervisorctl status`',
        value: Number.isFinite(statusRatio) ? `${statusRatio.toFixed(2)}× (${ms(percentile(dyn.lat, 50))} ms vs ${ms(percentile(supd.lat, 50))} ms)` : 'n/a',
        met: Number.isFinite(statusRatio) && statusRatio <= 1.5,
      },
    ];
    if (node1.daemons.size !== NODES) errors.push(`expected ${NODES} agent daemons for the cluster, found ${node1.daemons.size}`);
    const td = performance.now();
    await d.stop();
    const downMs = performance.now() - td;
    const staged = d.staged;
    d = undefined;
    const md = [
      mdTable(['supervisor', 'replicas', 'RSS MB', 'RSS vs baseline', 'peak RSS MB (VmHWM)', `idle CPU over ${idleS} s`, 'idle CPU vs baseline', 'status p50 ms', 'p99 ms', 'status vs baseline'], table),
      '',
      `Baseline = ${base?.n ?? 'n/a'}. All three supervise ${REPLICAS} copies of \`sh -c '${WORKER_CMD}'\` at the same time and are ` +
        `measured over the same ${idleS} s idle window (CPU = utime+stime of the daemon process from /proc). ` +
        `dynsup's ${REPLICAS} replicas run under the resident node agents of ${NODES} lab nodes over ssh (login: ${user}), ` +
        `8 per node; ${staged ? `brought up in stages (\`up -d\` with 64, then \`dynsup scale\` +64 three times, because all 256 at once failed: see errors) in ${sec(upMs)} s` : `\`up -d\` took ${sec(upMs)} s`}, \`dynsup down\` ${sec(downMs)} s. ` +
        `Node side over the window: ${node1.daemons.size} agent daemons (\`node agent-HASH.mjs serve\`) ${agentCpu.toFixed(2)} CPU-s, ` +
        `${node1.bridges.size} bridges (\`... connect\`, one per node's ssh exec channel) ${bridgeCpu.toFixed(2)} CPU-s, ` +
        `${node1.sshd.size} sshd session processes carrying those channels ${sshdCpu.toFixed(2)} CPU-s: ` +
        `${nodeCpu.toFixed(2)} CPU-s in all, ${((nodeCpu / idleS) * 100).toFixed(2)}% of a core for ${REPLICAS} replicas, ` +
        `${perReplica(nodeCpu).toFixed(3)} ms/s per replica (the workers themselves, \`sleep\`, use none); an agent daemon's RSS: ` +
        `${mb(percentile(node1.agentRssKB, 50))} MB (median of ${node1.agentRssKB.length}); the whole machine used ` +
        `${(m1.busyS - m0.busyS).toFixed(1)} CPU-s of ${((m1.totalS - m0.totalS)).toFixed(0)}. ` +
        `\`dynsup status --json\`: p50 ${ms(percentile(jsonLat, 50))} ms. For scale: \`node -e 0\` takes ${ms(percentile(nodeStart, 50))} ms here ` +
        `(p50 of 10), every dynsup and pm2 CLI call pays it.` +
        (installed.length ? ` Installed for this run with apt-get: ${installed.join(', ')}.` : '') +
        (web
          ? ` Web view: with ${web.pages} pages open in headless Chromium (each showing the ${REPLICAS} tiles live), the supervisor's RSS was ` +
            `${mb(web.rssKB)} MB (${mb(web.rssBeforeKB)} MB before they opened; peak ${mb(web.hwmKB)} MB) and it used ` +
            `${(web.cpuS * 1000).toFixed(0)} ms of CPU over ${web.windowS} s with them open; a page's first load transferred ` +
            `${(web.firstLoadBytes / 1024).toFixed(1)} KB (HTML, script, style; gzip), then the live stream's first snapshot of ${(web.snapshotBytes / 1024).toFixed(0)} KB.`
          : ''),
      ...(errors.length ? ['', `**Errors:** ${errors.join('; ')}`] : []),
    ].join('\n');
    return {
      title: 'Footprint at scale',
      md,
      targets,
      raw: { web, rows, agentCpuS: agentCpu, bridgeCpuS: bridgeCpu, sshdCpuS: sshdCpu, nodeCpuS: nodeCpu, agents: node1.daemons.size, bridges: node1.bridges.size, sshd: node1.sshd.size, agentRssKB: node1.agentRssKB, machineBusyS: m1.busyS - m0.busyS, jsonLat, nodeStart, downMs, upMs, staged },
    };
  } finally {
    await p?.stop();
    await s?.stop();
    if (d) await d.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = (k, dflt) => {
    const i = process.argv.indexOf(k);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  try {
    const lab = await labFor(NODES);
    let user = arg('--user', 'root');
    if (user === 'clean') user = (await ensureCleanUser()).name;
    const r = await benchFootprint({ lab, idleS: Number(arg('--idle', '60')), calls: Number(arg('--calls', '20')), user, pages: Number(arg('--pages', '10')) });
    printSection(r);
  } finally {
    await runCleanups();
  }
}
