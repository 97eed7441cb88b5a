// Bench 5, CLI start-up (issue 17): how long a command takes from `node bin/dynsup.js ...` to its exit,
// against `node -e 0` (the floor: starting Node itself) measured in the same run, interleaved, median of
// --runs. Targets: `status`, `logs -n` and `validate` ≤ 2× `node -e 0`; `--version` ≤ 1.3×. `status` and
// `logs -n 10` ask a running local cluster (3 replicas, no control plane) started for the bench in a
// temp dir; `validate` checks clusters/local.yaml. Needs no root and no lab.
//
//   node scripts/bench/cli.mjs [--runs 30]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BIN, ROOT, dynsup, log, mdTable, median, ms, onCleanup, printSection, ratio, runCleanups } from './lib.mjs';

/** Wall time of one run of `argv` (ms); its exit code does not matter (status of a stopped cluster is 1). */
function timeOnce(argv) {
  const t0 = process.hrtime.bigint();
  try {
    execFileSync(argv[0], argv.slice(1), { stdio: 'ignore', cwd: ROOT });
  } catch {
    /* a non-zero exit is still a start-up */
  }
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

export async function benchCli({ runs = 30 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'dynsup-bench-cli-'));
  const file = join(dir, 'cluster.yaml');
  writeFileSync(
    file,
    `name: bcli${process.pid}
head: { address: 127.0.0.1 }
stateDir: ./state
metrics: { enabled: false }
controlPlane: { nats: { enabled: false }, etcd: { enabled: false } }
nodes: { head: { transport: local } }
workers:
  w: { command: "while true; do echo line $$; sleep 0.05; done", replicas: 3 }
`,
  );
  const up = await dynsup(['up', '-d', file, '--timeout', '60']);
  if (up.code !== 0) throw new Error(`up -d failed: ${up.stderr}`);
  onCleanup('bench cluster', async () => {
    await dynsup(['down', file]);
    rmSync(dir, { recursive: true, force: true });
  });
  const node = process.execPath;
  const cases = [
    { name: '`node -e 0` (baseline)', argv: [node, '-e', '0'] },
    { name: '`dynsup --version`', argv: [node, BIN, '--version'], target: 1.3 },
    { name: '`dynsup status FILE`', argv: [node, BIN, 'status', file], target: 2 },
    { name: '`dynsup logs FILE -n 10`', argv: [node, BIN, 'logs', file, '-n', '10'], target: 2 },
    { name: '`dynsup validate clusters/local.yaml`', argv: [node, BIN, 'validate', 'clusters/local.yaml'], target: 2 },
    { name: '`dynsup --help`', argv: [node, BIN, '--help'] },
  ];
  for (const c of cases) timeOnce(c.argv); // warm the page cache
  const samples = cases.map(() => []);
  // Interleaved, so that a busy moment of the machine weighs on every case alike.
  for (let r = 0; r < runs; r++) cases.forEach((c, i) => samples[i].push(timeOnce(c.argv)));
  const base = median(samples[0]);
  const rows = cases.map((c, i) => {
    const m = median(samples[i]);
    return { ...c, median: m, ratio: m / base };
  });
  log(`cli: ${rows.map((r) => `${r.name} ${ms(r.median)} ms`).join(', ')}`);
  const md = [
    `Median of ${runs} runs each, interleaved, wall time from spawn to exit; the baseline is \`node -e 0\` (${process.version}) in the same run.`,
    '',
    mdTable(['command', 'median ms', 'vs node -e 0', 'target'], rows.map((r) => [r.name, ms(r.median), ratio(r.median, base), r.target ? `≤ ${r.target}×` : '-'])),
  ].join('\n');
  const targets = rows
    .filter((r) => r.target)
    .map((r) => ({ bench: 'cli', what: `${r.name} ≤ ${r.target}× node -e 0`, value: `${ratio(r.median, base)} (${ms(r.median)} vs ${ms(base)} ms)`, met: r.ratio <= r.target }));
  return { title: 'CLI start-up', md, targets, raw: { runs, rows: rows.map(({ name, median: m, ratio: x }) => ({ name, median: m, ratio: x })), samples } };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf('--runs');
  try {
    printSection(await benchCli({ runs: i > 0 ? Number(process.argv[i + 1]) : 30 }));
  } finally {
    await runCleanups();
  }
}
