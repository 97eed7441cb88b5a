// Bench 1, bring-up fan-out: from the command to every replica running, on lab clusters of 1, 8 and 32
// nodes with 2 replicas each, for `dynsup up -d` (control plane off: the fan-out itself), a sequential
// `ssh` loop and `pdsh` (-R ssh) starting the same worker, 2 per node.
//
// "Running" is the same for every tool: the worker creates READY/<name> as its first action (the lab nodes
// share this machine's filesystem), polled every 5 ms. For dynsup the table also gives when `up -d`
// returned (it waits for every replica to be running) and when every replica's ready line had reached the
// head's log file; `dynsup down` time is reported as well.
//
//   node scripts/bench/bringup.mjs [--sizes 1,8,32] [--reps 3]   (BENCH_LAB_ATTACH=1: use a running lab)
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  WORK, dynsup, ensureApt, ensureCleanUser, short, supervisorErrors, killByEnv, labFor, log, ls, machineCpu, mdTable, median, onCleanup, onDynsupCleanup, supervisorPid, procSample, ratio, run, runCleanups, sec, sleep, waitFor,
} from './lib.mjs';

const WORKER = `#!/bin/sh
# bench worker: $1 = ready dir, $2 = replica name. Marks itself running, prints a ready line, then idles.
: > "$1/$2"
echo "ready $2"
exec sleep 1000000
`;

async function waitReady(dir, count, t0, timeoutMs = 180_000, signal = undefined) {
  await waitFor(`${count} replicas ready in ${dir}`, () => ls(dir).length >= count, timeoutMs, 5, signal);
  return performance.now() - t0;
}

async function dynsupOnce(ctx, n, rep) {
  const { lab, dir, user } = ctx;
  const name = `bench-up${n}-${user}-${rep}-${process.pid}`;
  const ready = join(dir, `ready-${name}`);
  const stateDir = join(dir, `state-${name}`);
  mkdirSync(ready, { recursive: true });
  chmodSync(ready, 0o1777);
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, `name: ${name}
head: { address: ${lab.head} }
stateDir: ${stateDir}
lease: 30s
metrics: { enabled: false }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
nodes:
${lab.yamlNodes(n, user, 2)}
workers:
  w:
    command: [sh, ${join(dir, 'worker.sh')}, ${ready}, '{replica}']
    replicas: ${2 * n}
    gpus: 1
    stop: { grace: 2s }
`);
  const done = onDynsupCleanup(`dynsup ${name}`, name, file, 180_000);
  try {
    const cpu0 = machineCpu();
    const t0 = performance.now();
    const up = dynsup(['up', '-d', file, '--timeout', '90']);
    // Stop waiting as soon as `up -d` reports a failure.
    const failed = up.then((r) => (r.code !== 0 ? Promise.reject(new Error(`dynsup up -d failed (exit ${r.code}): ${supervisorErrors(stateDir) || short(r.stderr)}`)) : new Promise(() => undefined)));
    const stopWaiting = new AbortController();
    const readyP = waitReady(ready, 2 * n, t0, 95_000, stopWaiting.signal);
    readyP.catch(() => undefined);
    const readyMs = await Promise.race([readyP, failed]).finally(() => stopWaiting.abort());
    const cpu1 = machineCpu();
    const r = await up;
    const returnMs = r.ms;
    if (r.code !== 0) throw new Error(`dynsup up -d failed (exit ${r.code}): ${supervisorErrors(stateDir) || short(r.stderr)}`);
    // Every replica's ready line in its head-side log. Not a reason to drop the run when some never arrive
    // (the replicas do run): counted, and reported as a defect.
    const missing = () => {
      let k = 0;
      for (let i = 0; i < 2 * n; i++) {
        let t = '';
        try {
          t = readFileSync(join(stateDir, `logs/w-${i}.log`), 'utf8');
        } catch { /* not yet */ }
        if (!t.includes('ready ')) k++;
      }
      return k;
    };
    const logsMs = await waitFor('ready lines in the head logs', () => missing() === 0, 20_000, 5).then(() => performance.now() - t0, () => NaN);
    const logsMissing = Number.isFinite(logsMs) ? 0 : missing();
    const supPid = supervisorPid(stateDir);
    const used = new Set(JSON.parse(readFileSync(join(stateDir, 'run/state.json'), 'utf8')).replicas.map((x) => x.node));
    if (used.size !== n) throw new Error(`placement: replicas on ${used.size} nodes, expected ${n}`);
    const sup = procSample(supPid);
    const events = readFileSync(join(stateDir, 'logs/dynsup.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const tFirst = events[0].time;
    const tGroup = events.find((e) => /^started group/.test(e.msg))?.time;
    const td = performance.now();
    await done();
    const downMs = performance.now() - td;
    return {
      readyMs, returnMs, logsMs, logsMissing, downMs,
      machineCpuS: cpu1.busyS - cpu0.busyS,
      supCpuS: sup?.cpuS ?? NaN,
      supRssKB: sup?.rssKB ?? NaN,
      connectMs: tGroup !== undefined ? tGroup - tFirst : NaN,
    };
  } finally {
    await done();
    rmSync(ready, { recursive: true, force: true });
  }
}

/** The command every baseline runs on each node: start this node's 2 workers, detached. */
const nodeCommand = (dir, ready, token) =>
  `for i in 0 1; do ${token}=1 setsid sh ${join(dir, 'worker.sh')} ${ready} "$(hostname)-$i" </dev/null >/dev/null 2>&1 & done`;

async function baselineOnce(ctx, n, rep, kind) {
  const { lab, dir, user } = ctx;
  const token = `BENCH_UP_${kind.replace(/\W/g, '_').toUpperCase()}_${user.toUpperCase()}_${n}_${rep}_${process.pid}`;
  const ready = join(dir, `ready-${token}`);
  mkdirSync(ready, { recursive: true });
  chmodSync(ready, 0o1777);
  const done = onCleanup(`${kind} workers`, () => killByEnv(`${token}=1`));
  try {
    const cmd = nodeCommand(dir, ready, token);
    const cpu0 = machineCpu();
    const t0 = performance.now();
    let cmdMs;
    if (kind === 'ssh loop') {
      for (const node of lab.nodes.slice(0, n)) {
        const r = await run('ssh', ['-n', ...lab.sshOptions, `${user}@${node.address}`, cmd], { timeoutMs: 60_000 });
        if (r.code !== 0) throw new Error(`ssh ${node.name} failed (${r.code}): ${r.stderr}`);
      }
      cmdMs = performance.now() - t0;
    } else {
      const last = 10 + n;
      const env = {
        ...process.env,
        PDSH_RCMD_TYPE: 'ssh',
        PDSH_SSH_ARGS: '-x -l%u %h',
        PDSH_SSH_ARGS_APPEND: lab.sshOptions.join(' '),
      };
      const r = await run('pdsh', ['-f', '64', '-l', user, '-w', n === 1 ? '10.99.0.11' : `10.99.0.[11-${last}]`, cmd], { env, timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`pdsh failed (${r.code}): ${r.stderr}`);
      cmdMs = r.ms;
    }
    const readyMs = await waitReady(ready, 2 * n, t0);
    const cpu1 = machineCpu();
    return { readyMs, returnMs: cmdMs, machineCpuS: cpu1.busyS - cpu0.busyS };
  } finally {
    await done();
    rmSync(ready, { recursive: true, force: true });
  }
}

/**
 * logins: [{user, label}] — root (this machine's real login: ~/.bashrc with pyenv init) and a clean-login user
 * (/bin/sh, no rc file): see ensureCleanUser in lib.mjs.
 */
export async function benchBringup({ lab, sizes = [1, 8, 32], reps = 3, logins = [{ user: 'root', label: 'root' }] }) {
  const installed = await ensureApt([['/usr/bin/pdsh', 'pdsh']]);
  const dir = join(WORK, 'bringup');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'worker.sh'), WORKER, { mode: 0o755 });
  // The cost of one ssh exec on a lab node, per login (a fresh connection each time).
  const execMs = {};
  for (const { user } of logins) {
    execMs[user] = [];
    for (let i = 0; i < 5; i++) execMs[user].push((await lab.ssh(lab.nodes[0], 'true', {}, user)).ms);
  }
  const results = [];
  const errors = [];
  for (const { user, label } of logins) {
    for (const n of sizes) {
      if (n > lab.nodes.length) throw new Error(`bring-up: the lab has ${lab.nodes.length} nodes, need ${n}`);
      for (const kind of ['dynsup', 'ssh loop', 'pdsh']) {
        const runs = [];
        for (let rep = 0; rep < reps; rep++) {
          try {
            const ctx = { lab, dir, user };
            const r = kind === 'dynsup' ? await dynsupOnce(ctx, n, rep) : await baselineOnce(ctx, n, rep, kind);
            runs.push(r);
            log(`bring-up [${label}] ${kind} ${n} node(s) rep ${rep + 1}: all running after ${sec(r.readyMs)} s`);
          } catch (err) {
            log(`bring-up [${label}] ${kind} ${n} FAILED: ${short(err, 1000)}`);
            errors.push(`[${label}] ${kind} on ${n} nodes, run ${rep + 1}: ${short(err)}`);
          }
          await sleep(300); // let the previous teardown's stragglers finish
        }
        {
          const med = (k) => median(runs.map((r) => r[k]).filter((v) => Number.isFinite(v)));
          const lost = runs.filter((r) => r.logsMissing > 0);
          if (lost.length) errors.push(`[${label}] ${kind} on ${n} nodes: in ${lost.length} of ${runs.length} runs, ${lost.map((r) => r.logsMissing).join('/')} of ${2 * n} replicas' ready lines had not reached the head's log files 20 s after all were running (they arrive only when the replica exits)`);
          results.push({ user, label, kind, n, reps: runs.length, failedReps: reps - runs.length, runs, logsLostRuns: lost.length, readyMs: med('readyMs'), returnMs: med('returnMs'), logsMs: med('logsMs'), downMs: med('downMs'), machineCpuS: med('machineCpuS'), supCpuS: med('supCpuS'), connectMs: med('connectMs') });
        }
      }
    }
  }
  const get = (user, kind, n) => results.find((r) => r.user === user && r.kind === kind && r.n === n);
  const big = Math.max(...sizes);
  const rows = results.map((r) => [
    r.label,
    r.kind,
    String(r.n),
    String(2 * r.n),
    r.reps === 0 ? `**failed** (0 of ${r.failedReps} runs)` : `${sec(r.readyMs)}${r.failedReps ? ` (${r.reps} of ${r.reps + r.failedReps} runs; the others failed)` : ''}`,
    ratio(r.readyMs, get(r.user, 'pdsh', r.n)?.readyMs),
    ratio(r.readyMs, get(r.user, 'ssh loop', r.n)?.readyMs),
    ratio(r.readyMs, get(r.user, r.kind, Math.min(...sizes))?.readyMs),
    sec(r.returnMs),
    r.kind === 'dynsup' ? `${sec(r.logsMs)}${r.logsLostRuns ? ` (**lines missing in ${r.logsLostRuns} of ${r.reps} runs**)` : ''}` : '-',
    r.kind === 'dynsup' ? sec(r.downMs) : '-',
    Number.isFinite(r.machineCpuS) ? r.machineCpuS.toFixed(1) : 'n/a',
    r.kind === 'dynsup' && Number.isFinite(r.supCpuS) ? r.supCpuS.toFixed(2) : '-',
  ]);
  const targets = logins.map(({ user, label }) => {
    const d1 = get(user, 'dynsup', Math.min(...sizes));
    const dBig = get(user, 'dynsup', big);
    const p1 = get(user, 'pdsh', Math.min(...sizes));
    const pBig = get(user, 'pdsh', big);
    const scale = dBig && d1 ? dBig.readyMs / d1.readyMs : NaN;
    const pdScale = pBig && p1 ? pBig.readyMs / p1.readyMs : NaN;
    return {
      bench: 'bring-up',
      what: `[${label}] dynsup ${big} nodes ≤ 1.5× the time of ${Math.min(...sizes)} node`,
      value: Number.isFinite(scale)
        ? `${scale.toFixed(2)}× (${sec(dBig.readyMs)} s vs ${sec(d1.readyMs)} s; pdsh: ${Number.isFinite(pdScale) ? pdScale.toFixed(2) : 'n/a'}×)`
        : `not measured: every dynsup run on ${[d1, dBig].filter((x) => !x?.reps).map((x) => x?.n).join(' and ')} node(s) failed (see errors); pdsh: ${Number.isFinite(pdScale) ? pdScale.toFixed(2) : 'n/a'}×`,
      met: Number.isFinite(scale) && scale <= 1.5,
    };
  });
  const cores = (await import('node:os')).cpus().length;
  const md = [
    mdTable(['login', 'tool', 'nodes', 'replicas', 'all running s (median)', 'vs pdsh', 'vs ssh loop', `vs same tool on ${Math.min(...sizes)} node`, 'command returned s', 'ready lines in head logs s', '`down` s', 'machine CPU s', 'supervisor CPU s'], rows),
    '',
    `Medians of ${reps} runs. dynsup: \`dynsup up -d\`, control plane off, metrics off; "all running" = every worker has ` +
      `created its ready file; \`up -d\` returns once the supervisor reports every replica running. Baselines run on each node ` +
      `\`for i in 0 1; do setsid sh worker.sh ... & done\` (one ssh exec per node): the ssh loop one node after the other, pdsh ` +
      `with \`-R ssh -f 64\`. "machine CPU s" = CPU-seconds the whole machine (head and all lab nodes: they share its ` +
      `${cores} cores) spent from the command to all running. ` +
      logins.map(({ user, label }) => `${label}: \`ssh node true\` takes ${sec(median(execMs[user]))} s (median of 5, new connection each time)`).join('; ') +
      '.' + (installed.length ? ` Installed for this run with apt-get: ${installed.join(', ')}.` : ''),
    ...(errors.length ? ['', `**Errors:** ${errors.join('; ')}`] : []),
  ].join('\n');
  return { title: 'Bring-up fan-out', md, targets, raw: { execMs, results } };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = (k, d) => {
    const i = process.argv.indexOf(k);
    return i > 0 ? process.argv[i + 1] : d;
  };
  const sizes = arg('--sizes', '1,8,32').split(',').map(Number);
  try {
    const lab = await labFor(Math.max(...sizes));
    const clean = await ensureCleanUser();
    const logins = [{ user: 'root', label: 'root' }, { user: clean.name, label: 'clean' }].filter((l) => arg('--logins', 'root,clean').split(',').includes(l.label));
    const r = await benchBringup({ lab, sizes, reps: Number(arg('--reps', '3')), logins });
    console.log(`## ${r.title}\n\n${r.md}\n`);
  } finally {
    await runCleanups();
  }
}
