#!/usr/bin/env node
// `npm run bench`: the four benchmarks against the tools users would pick instead, on one 32-node netns lab
// (scripts/testbed/lab.sh, same lock as the tests), each figure as a ratio against a baseline measured in the same
// run. Prints each bench's table and a MET/MISSED line per issue-12 target as it finishes, and a summary of
// all targets at the end. Writes bench/REPORT.md (everything), bench/results.json (raw numbers) and
// $BENCH_WORK/performance-section.md (default /tmp/dynsup-bench: a draft of README's "## Performance"
// section, outside the repository; README is edited by hand). Needs root (namespaces, sshd, apt-get).
//
//   node scripts/bench/run.mjs [--only bringup,restart,logs,footprint,cli] [--quick]
//        [--reps 3] [--kills 200] [--supervisord-kills 60] [--lines 10000000] [--idle 60] [--calls 20] [--cli-runs 30]
//
// cli (issue 17): CLI start-up against `node -e 0` (scripts/bench/cli.mjs); needs no lab and no root alone.
//
// --quick: a smoke run (1 rep, 20 kills, 1M lines, 10 s idle): the figures are not the published ones.
// Installs what the baselines need when missing, and says so: pdsh and supervisor (apt-get), pm2 (npm
// install --prefix into /tmp/dynsup-bench-tools, never a project dependency); creates the user `dsbench`
// (/bin/sh, no password) for the clean-login runs and removes it at the end.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { benchBringup } from './bringup.mjs';
import { benchCli } from './cli.mjs';
import { benchFootprint } from './footprint.mjs';
import { ROOT, WORK, ensureApt, ensureCleanUser, ensurePm2, log, machineInfo, printSection, run, runCleanups, short, startLab, targetLines } from './lib.mjs';
import { benchLogs } from './logs.mjs';
import { benchRestart } from './restart.mjs';

const argv = process.argv.slice(2);
const arg = (k, d) => {
  const i = argv.indexOf(k);
  return i >= 0 ? argv[i + 1] : d;
};
const quick = argv.includes('--quick');
const only = new Set(arg('--only', 'bringup,restart,logs,footprint,cli').split(','));
// The CLI start-up bench needs neither the lab nor the baselines' tools.
const needsLab = ['bringup', 'restart', 'logs', 'footprint'].some((k) => only.has(k));
const opts = {
  reps: Number(arg('--reps', quick ? '1' : '3')),
  kills: Number(arg('--kills', quick ? '20' : '200')),
  supervisordKills: Number(arg('--supervisord-kills', quick ? '10' : '60')),
  lines: Number(arg('--lines', quick ? '1000000' : '10000000')),
  idle: Number(arg('--idle', quick ? '10' : '60')),
  calls: Number(arg('--calls', quick ? '5' : '20')),
  cliRuns: Number(arg('--cli-runs', quick ? '10' : '30')),
};

if (needsLab && process.getuid?.() !== 0) {
  console.error('npm run bench: must run as root (network namespaces, sshd, apt-get)');
  process.exit(2);
}

const started = new Date();
const t0 = performance.now();
const sections = [];
const failures = [];
const installedNotes = [];
let lab;
try {
  log(`plan: ${[...only].join(', ')}; ${JSON.stringify(opts)}${quick ? ' (QUICK smoke run)' : ''}`);
  // What the baselines need, up front (said on stderr when something is installed).
  const apt = needsLab ? await ensureApt([['/usr/bin/pdsh', 'pdsh'], ['/usr/bin/supervisord', 'supervisor']]) : [];
  if (apt.length) installedNotes.push(`apt-get install ${apt.join(' ')}`);
  const pm2 = needsLab ? await ensurePm2() : null;
  if (pm2?.installed) installedNotes.push(`npm install --prefix ${pm2.bin.replace(/\/node_modules.*/, '')} pm2@5`);
  const pm2Version = pm2 ? (await run(pm2.bin, ['--version'], { env: { ...process.env, PM2_HOME: '/tmp/dynsup-bench-tools/pm2-version-home' } })).stdout.trim().split('\n').pop() : 'not used';
  if (pm2) await run(pm2.bin, ['kill'], { env: { ...process.env, PM2_HOME: '/tmp/dynsup-bench-tools/pm2-version-home' } });
  // What is benchmarked: the tree as built by `npm run bench` right before this (others may commit meanwhile).
  const privateBuild = process.env.BENCH_DYNSUP_BIN;
  const commit = privateBuild ? (process.env.BENCH_COMMIT ?? 'unknown commit') : (await run('git', ['rev-parse', '--short', 'HEAD'])).stdout.trim();
  const dirty = privateBuild
    ? ` (private build: ${privateBuild})`
    : (await run('git', ['status', '--porcelain', 'src', 'share'])).stdout.trim() ? ' (with uncommitted changes in src/ or share/)' : '';
  lab = needsLab ? await startLab(32) : undefined;
  const clean = needsLab ? await ensureCleanUser() : { name: 'root', created: false };
  if (clean.created) installedNotes.push(`useradd ${clean.name} (removed at the end)`);
  const benches = [
    ['bringup', () => benchBringup({ lab, sizes: [1, 8, 32], reps: opts.reps, logins: [{ user: 'root', label: 'root' }, { user: clean.name, label: 'clean' }] })],
    ['restart', () => benchRestart({ lab, kills: opts.kills, supervisordKills: opts.supervisordKills, cleanUser: clean.name })],
    ['logs', () => benchLogs({ lab, lines: opts.lines })],
    ['footprint', () => benchFootprint({ lab, idleS: opts.idle, calls: opts.calls, user: 'root' })],
    ['cli', () => benchCli({ runs: opts.cliRuns })],
  ];
  for (const [key, fn] of benches) {
    if (!only.has(key)) continue;
    const b0 = performance.now();
    log(`=== ${key} ===`);
    try {
      const r = await fn();
      r.seconds = (performance.now() - b0) / 1000;
      sections.push({ key, ...r });
      printSection(r);
      log(`=== ${key} done in ${r.seconds.toFixed(0)} s ===`);
    } catch (err) {
      log(`=== ${key} FAILED: ${err.stack ?? err}`);
      failures.push({ key, error: short(err, 800) });
    }
  }
  const versions = {
    dynsup: JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version,
    commit,
    dirty,
    ssh: (await run('ssh', ['-V'])).stderr.trim(),
    pdsh: needsLab ? (await run('pdsh', ['-V'])).stdout.split('\n')[0].trim() || (await run('pdsh', ['-V'])).stderr.split('\n')[0].trim() : 'not used',
    supervisord: needsLab ? (await run('/usr/bin/supervisord', ['--version'])).stdout.trim() : 'not used',
    pm2: pm2Version,
  };
  writeReports({ versions, wallS: (performance.now() - t0) / 1000 });
  console.log(['## Targets (issues 12, 17)', '', ...targetLines(sections.flatMap((s) => s.targets ?? [])), ...failures.map((f) => `FAILED ${f.key}: ${f.error}`), ''].join('\n'));
} finally {
  await runCleanups();
  log(`total ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}
process.exitCode = failures.length ? 1 : 0;

function writeReports({ versions, wallS }) {
  const m = machineInfo();
  const date = started.toISOString().slice(0, 10);
  const machine = `${m.nproc} cores (${m.model}), ${m.ramGiB.toFixed(0)} GiB RAM, ${m.os}, Linux ${m.kernel}, Node ${m.node}`;
  const targets = sections.flatMap((s) => s.targets ?? []);
  const targetTable = targets.length
    ? ['| bench | target | measured | met |', '|---|---|---|---|', ...targets.map((t) => `| ${t.bench} | ${t.what} | ${t.value} | ${t.met ? 'yes' : '**NO**'} |`)].join('\n')
    : '(no targets evaluated)';
  const header = [
    `Run ${started.toISOString().replace('T', ' ').slice(0, 16)} UTC on ${machine}; dynsup ${versions.dynsup} at ${versions.commit}${versions.dirty}; ` +
      `${versions.ssh}, ${versions.pdsh}, supervisord ${versions.supervisord}, pm2 ${versions.pm2}. Whole run: ${(wallS / 60).toFixed(1)} min` +
      `${quick ? ' (**--quick smoke run: fewer repetitions, not the published figures**)' : ''}.`,
    '',
    `The "nodes" are ${lab?.n ?? 32} network namespaces of this one machine (scripts/testbed/lab.sh), each with its own sshd: they share ` +
      `its ${m.nproc} cores, its filesystem and root's home, so node-side work that would run in parallel on real machines ` +
      `queues here, and root's ~/.bashrc (pyenv init, ~0.1 CPU-s, with a \`pyenv rehash\` lock in /root/.pyenv that every ` +
      `"node" shares) runs for every ssh login (dynsup: one per node connection; the baselines: one per command). ` +
      `Figures marked "clean" log in as a user whose shell is /bin/sh with no rc file. dynsup runs one resident node agent per ` +
      `node (\`node ~/.cache/dynsup/agent-HASH.mjs serve RUNDIR\`), reached over one ssh exec channel per node.` +
      (installedNotes.length ? ` Set up for this run: ${installedNotes.join('; ')}.` : ''),
  ].join('\n');
  const rerun = 'sudo npm run bench   # = npm run build && node scripts/bench/run.mjs; ~12 min, needs root; --quick for a smoke run';
  const report = [
    '# dynsup benchmarks',
    '',
    header,
    '',
    '## Targets (issues 12, 17)',
    '',
    targetTable,
    '',
    ...sections.flatMap((s) => [`## ${s.title}`, '', s.md, '', `_(${s.seconds.toFixed(0)} s)_`, '']),
    ...(failures.length ? ['## Failed benches', '', ...failures.map((f) => `- ${f.key}: ${f.error}`), ''] : []),
    '## Rerun',
    '',
    '```sh',
    rerun,
    'node scripts/bench/restart.mjs --kills 50   # one bench alone (each starts the lab it needs)',
    '```',
    '',
  ].join('\n');
  mkdirSync(join(ROOT, 'bench'), { recursive: true });
  writeFileSync(join(ROOT, 'bench/REPORT.md'), report);
  writeFileSync(join(ROOT, 'bench/results.json'), JSON.stringify({ started, machine: m, versions, opts, quick, sections: sections.map((s) => ({ key: s.key, title: s.title, targets: s.targets, raw: s.raw, seconds: s.seconds })), failures }, null, 2));
  const perf = [
    '## Performance',
    '',
    `Measured ${date} on ${machine}, against the tools users would otherwise pick, in the same run ` +
      `(full tables, method and caveats: \`bench/REPORT.md\`). The SSH "nodes" are network namespaces of that one machine.`,
    '',
    targetTable,
    '',
    ...sections.flatMap((s) => [`### ${s.title}`, '', s.md, '']),
    `Rerun: \`${rerun}\``,
    '',
  ].join('\n');
  mkdirSync(WORK, { recursive: true });
  writeFileSync(join(WORK, 'performance-section.md'), perf);
  log(`wrote bench/REPORT.md, bench/results.json, ${join(WORK, 'performance-section.md')}`);
}
