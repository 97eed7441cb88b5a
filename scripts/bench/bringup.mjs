// Bench 1, bring-up fan-out: from the command to every replica running, on lab clusters of 1, 8 and 32
// nodes with 2 replicas each, for `dynsup up -d` (control plane off: the fan-out itself), a sequential
// `ssh` loop and `pdsh` (-R ssh) starting the same worker, 2 per node; then 256 replicas on 32 nodes (8 per
// node), `dynsup up -d` against pdsh starting the same 256 processes.
//
// dynsup connects to each node once (one ssh login, one exec channel running the agent bridge, which starts
// the node's resident agent) and sends the node's agent a `run` per replica over that channel; the agent
// starts the workers itself. The agent bundle is cached on the node (~/.cache/dynsup/agent-HASH.mjs): the
// first run of each login uploads it and is reported apart (not in the medians).
//
// "Running" is the same for every tool: the worker creates READY/<name> as its first action (the lab nodes
// share this machine's filesystem), polled every 5 ms. For dynsup the table also gives when `up -d`
// returned (it waits for every replica to be running) and when every replica's ready line had reached the
// head's log file; `dynsup down` time is reported as well.
// Issue-12 targets: 32 nodes × 2 all running ≤ 1.3× pdsh; 256 replicas on 32 nodes: `up -d` returned ≤ 2×
// pdsh's all running.
//
//   node scripts/bench/bringup.mjs [--sizes 1,8,32] [--reps 3] [--logins root,clean] [--no-256]
//   (BENCH_LAB_ATTACH=1: use a running lab)
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  WORK, agentBundleHash, dynsup, ensureApt, ensureCleanUser, short, supervisorErrors, killByEnv, labFor, log, ls, machineCpu, mdTable, median, onCleanup, onDynsupCleanup, supervisorPid, procSample, ratio, run, runCleanups, sec, sleep, waitFor, printSection,
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

async function dynsupOnce(ctx, n, rep, per = 2) {
  const { lab, dir, user } = ctx;
  const total = per * n;
  const name = `bench-up${n}x${per}-${user}-${rep}-${process.pid}`;
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
ui: { enabled: false }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
nodes:
${lab.yamlNodes(n, user, per)}
workers:
  w:
    command: [sh, ${join(dir, 'worker.sh')}, ${ready}, '{replica}']
    replicas: ${total}
    gpus: 1
    stop: { grace: 2s }
`);
  const done = onDynsupCleanup(`dynsup ${name}`, name, file, 180_000);
  try {
    const cpu0 = machineCpu();
    const t0 = performance.now();
    const up = dynsup(['up', '-d', file, '--timeout', total > 64 ? '240' : '90'], { timeoutMs: 300_000 });
    // Stop waiting as soon as `up -d` reports a failure.
    const failed = up.then((r) => (r.code !== 0 ? Promise.reject(new Error(`dynsup up -d failed (exit ${r.code}): ${supervisorErrors(stateDir) || short(r.stderr)}`)) : new Promise(() => undefined)));
    const stopWaiting = new AbortController();
    const readyP = waitReady(ready, total, t0, total > 64 ? 245_000 : 95_000, stopWaiting.signal);
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
      for (let i = 0; i < total; i++) {
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

/** The command every baseline runs on each node: start this node's `per` workers, detached. */
const nodeCommand = (dir, ready, token, per) =>
  `for i in ${Array.from({ length: per }, (_, i) => i).join(' ')}; do ${token}=1 setsid sh ${join(dir, 'worker.sh')} ${ready} "$(hostname)-$i" </dev/null >/dev/null 2>&1 & done`;

async function baselineOnce(ctx, n, rep, kind, per = 2) {
  const { lab, dir, user } = ctx;
  const token = `BENCH_UP_${kind.replace(/\W/g, '_').toUpperCase()}_${user.toUpperCase()}_${n}X${per}_${rep}_${process.pid}`;
  const ready = join(dir, `ready-${token}`);
  mkdirSync(ready, { recursive: true });
  chmodSync(ready, 0o1777);
  const done = onCleanup(`${kind} workers`, () => killByEnv(`${token}=1`));
  try {
    const cmd = nodeCommand(dir, ready, token, per);
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
    const readyMs = await waitReady(ready, per * n, t0);
    const cpu1 = machineCpu();
    return { readyMs, returnMs: cmdMs, machineCpuS: cpu1.busyS - cpu0.busyS };
  } finally {
    await done();
    rmSync(ready, { recursive: true, force: true });
  }
}

/**
 * logins: [{user, label}] — root (this machine's real login: ~/.bashrc with pyenv init) and a clean-login user
 * (/bin/sh, no rc file): see ensureCleanUser in lib.mjs. big: also the 256-replica case (32 nodes × 8).
 */
export async function benchBringup({ lab, sizes = [1, 8, 32], reps = 3, logins = [{ user: 'root', label: 'root' }], big = true }) {
  const installed = await ensureApt([['/usr/bin/pdsh', 'pdsh']]);
  const dir = join(WORK, 'bringup');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'worker.sh'), WORKER, { mode: 0o755 });
  const maxN = Math.max(...sizes);
  // [nodes, replicas per node, tools]
  const cases = [
    ...sizes.map((n) => [n, 2, ['dynsup', 'ssh loop', 'pdsh']]),
    ...(big && lab.nodes.length >= 32 ? [[32, 8, ['dynsup', 'pdsh']]] : []),
  ];
  const hash = agentBundleHash();
  // The cost of one ssh exec on a lab node, per login (a fresh connection each time).
  const execMs = {};
  const firstRun = {};
  for (const { user } of logins) {
    execMs[user] = [];
    for (let i = 0; i < 5; i++) execMs[user].push((await lab.ssh(lab.nodes[0], 'true', {}, user)).ms);
  }
  const results = [];
  const errors = [];
  for (const { user, label } of logins) {
    // First run of this login: the agent bundle goes into the login's cache on the node (shared by every lab
    // node here: one filesystem); reported apart, so the medians are the steady state.
    {
      const home = (await run('getent', ['passwd', user])).stdout.split(':')[5] ?? '';
      const cached = home ? existsSync(join(home, `.cache/dynsup/agent-${hash}.mjs`)) : false;
      try {
        const r = await dynsupOnce({ lab, dir, user }, 1, 'first');
        firstRun[user] = { ...r, cached };
        log(`bring-up [${label}] first dynsup run (1 node, agent bundle ${cached ? 'already cached' : 'uploaded'}): all running after ${sec(r.readyMs)} s`);
      } catch (err) {
        firstRun[user] = { cached, error: short(err) };
        errors.push(`[${label}] first dynsup run (1 node): ${short(err)}`);
      }
    }
    for (const [n, per, kinds] of cases) {
      if (n > lab.nodes.length) throw new Error(`bring-up: the lab has ${lab.nodes.length} nodes, need ${n}`);
      for (const kind of kinds) {
        const runs = [];
        for (let rep = 0; rep < reps; rep++) {
          try {
            const ctx = { lab, dir, user };
            const r = kind === 'dynsup' ? await dynsupOnce(ctx, n, rep, per) : await baselineOnce(ctx, n, rep, kind, per);
            runs.push(r);
            log(`bring-up [${label}] ${kind} ${n} node(s) × ${per} rep ${rep + 1}: all running after ${sec(r.readyMs)} s${r.returnMs !== undefined ? `, command returned after ${sec(r.returnMs)} s` : ''}`);
          } catch (err) {
            log(`bring-up [${label}] ${kind} ${n} × ${per} FAILED: ${short(err, 1000)}`);
            errors.push(`[${label}] ${kind} on ${n} nodes × ${per}, run ${rep + 1}: ${short(err)}`);
          }
          await sleep(300); // let the previous teardown's stragglers finish
        }
        const med = (k) => median(runs.map((r) => r[k]).filter((v) => Number.isFinite(v)));
        const lost = runs.filter((r) => r.logsMissing > 0);
        if (lost.length) errors.push(`[${label}] ${kind} on ${n} nodes × ${per}: in ${lost.length} of ${runs.length} runs, ${lost.map((r) => r.logsMissing).join('/')} of ${per * n} replicas' ready lines had not reached the head's log files 20 s after all were running`);
        results.push({ user, label, kind, n, per, reps: runs.length, failedReps: reps - runs.length, runs, logsLostRuns: lost.length, readyMs: med('readyMs'), returnMs: med('returnMs'), logsMs: med('logsMs'), downMs: med('downMs'), machineCpuS: med('machineCpuS'), supCpuS: med('supCpuS'), connectMs: med('connectMs') });
      }
    }
  }
  const get = (user, kind, n, per = 2) => results.find((r) => r.user === user && r.kind === kind && r.n === n && r.per === per);
  const minN = Math.min(...sizes);
  const rows = results.map((r) => [
    r.label,
    r.kind,
    String(r.n),
    String(r.per * r.n),
    r.reps === 0 ? `**failed** (0 of ${r.failedReps} runs)` : `${sec(r.readyMs)}${r.failedReps ? ` (${r.reps} of ${r.reps + r.failedReps} runs; the others failed)` : ''}`,
    ratio(r.readyMs, get(r.user, 'pdsh', r.n, r.per)?.readyMs),
    ratio(r.readyMs, get(r.user, 'ssh loop', r.n, r.per)?.readyMs),
    r.per === 2 ? ratio(r.readyMs, get(r.user, r.kind, minN)?.readyMs) : '-',
    sec(r.returnMs),
    r.kind === 'dynsup' ? `${sec(r.logsMs)}${r.logsLostRuns ? ` (**lines missing in ${r.logsLostRuns} of ${r.reps} runs**)` : ''}` : '-',
    r.kind === 'dynsup' ? sec(r.downMs) : '-',
    Number.isFinite(r.machineCpuS) ? r.machineCpuS.toFixed(1) : 'n/a',
    r.kind === 'dynsup' && Number.isFinite(r.supCpuS) ? r.supCpuS.toFixed(2) : '-',
  ]);
  const failedNote = (...xs) => `not measured: ${xs.filter((x) => !x?.reps).map((x) => (x ? `${x.kind} ${x.n}×${x.per}` : 'a case')).join(', ')} failed (see errors)`;
  const targets = logins.flatMap(({ user, label }) => {
    const out = [];
    const d = get(user, 'dynsup', maxN);
    const pd = get(user, 'pdsh', maxN);
    const rel = d?.reps && pd?.reps ? d.readyMs / pd.readyMs : NaN;
    out.push({
      bench: 'bring-up',
      what: `[${label} login] ${maxN} nodes × 2 workers, all running ≤ 1.3× pdsh`,
      value: Number.isFinite(rel) ? `${rel.toFixed(2)}× (${sec(d.readyMs)} s vs ${sec(pd.readyMs)} s)` : failedNote(d, pd),
      met: Number.isFinite(rel) && rel <= 1.3,
    });
    const D = get(user, 'dynsup', 32, 8);
    const P = get(user, 'pdsh', 32, 8);
    if (D || P) {
      const relB = D?.reps && P?.reps ? D.returnMs / P.readyMs : NaN;
      out.push({
        bench: 'bring-up',
        what: `[${label} login] 256 replicas on 32 nodes: \`up -d\` ≤ 2× pdsh starting the same 256 processes`,
        value: Number.isFinite(relB) ? `${relB.toFixed(2)}× (\`up -d\` returned after ${sec(D.returnMs)} s, all running after ${sec(D.readyMs)} s; pdsh all running ${sec(P.readyMs)} s)` : failedNote(D, P),
        met: Number.isFinite(relB) && relB <= 2,
      });
    }
    return out;
  });
  const cores = (await import('node:os')).cpus().length;
  const md = [
    mdTable(['login', 'tool', 'nodes', 'replicas', 'all running s (median)', 'vs pdsh', 'vs ssh loop', `vs same tool on ${minN} node`, 'command returned s', 'ready lines in head logs s', '`down` s', 'machine CPU s', 'supervisor CPU s'], rows),
    '',
    `Medians of ${reps} runs. dynsup: \`dynsup up -d\`, control plane off, metrics off; "all running" = every worker has ` +
      `created its ready file; \`up -d\` returns once the supervisor reports every replica running. Baselines run on each node ` +
      `\`for i in 0 1 ...; do setsid sh worker.sh ... & done\` (one ssh exec per node, 2 or 8 workers): the ssh loop one node after the other, pdsh ` +
      `with \`-R ssh -f 64\`. "machine CPU s" = CPU-seconds the whole machine (head and all lab nodes: they share its ` +
      `${cores} cores) spent from the command to all running. ` +
      logins.map(({ user, label }) => `${label}: \`ssh node true\` takes ${sec(median(execMs[user]))} s (median of 5, new connection each time)`).join('; ') +
      '. First dynsup run of each login, before the medians (1 node): ' +
      logins.map(({ user, label }) => {
        const f = firstRun[user];
        return `${label} ${f?.readyMs !== undefined ? `${sec(f.readyMs)} s` : 'failed'} (agent bundle ${f?.cached ? 'already in the cache' : 'uploaded to the node\'s cache'})`;
      }).join(', ') + '.' +
      (installed.length ? ` Installed for this run with apt-get: ${installed.join(', ')}.` : ''),
    ...(errors.length ? ['', `**Errors:** ${errors.join('; ')}`] : []),
  ].join('\n');
  return { title: 'Bring-up fan-out', md, targets, raw: { execMs, firstRun, results } };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = (k, d) => {
    const i = process.argv.indexOf(k);
    return i > 0 ? process.argv[i + 1] : d;
  };
  const sizes = arg('--sizes', '1,8,32').split(',').map(Number);
  try {
    const lab = await labFor(process.argv.includes('--no-256') ? Math.max(...sizes) : Math.max(32, ...sizes));
    const clean = await ensureCleanUser();
    const logins = [{ user: 'root', label: 'root' }, { user: clean.name, label: 'clean' }].filter((l) => arg('--logins', 'root,clean').split(',').includes(l.label));
    const r = await benchBringup({ lab, sizes, reps: Number(arg('--reps', '3')), logins, big: !process.argv.includes('--no-256') });
    printSection(r);
  } finally {
    await runCleanups();
  }
}
