// Bench 3, log throughput: a worker on a lab node writes 1 GB of 100-byte numbered lines; dynsup brings them
// over SSH into <stateDir>/logs/w-0.log on the head, raw `ssh node cmd > file` is the baseline. Both workers
// wait for the same trigger file, so neither figure includes the ssh login; the clock runs from the trigger
// to the last byte in the head's file. Every line is checked: byte count, line count and SHA-256 of the whole
// file against the generator's (computed here, in-process). Also: the supervisor's peak RSS (VmHWM) and its
// CPU time (utime+stime) per GB, against the ssh client's.
//
// dynsup's path: the worker writes into its spool file on the node (RUNDIR/w-0.out, its stdout itself); the
// node's resident agent reads the spool and sends it as sequenced data frames over the node's one ssh exec
// channel (the bridge: `node agent-HASH.mjs connect RUNDIR`); the head splits lines into
// <stateDir>/logs/w-0.log and acknowledges offsets, and the agent releases acknowledged spool.
// Issue-12 target: ≥ 0.9× raw ssh, every byte intact (count + SHA-256).
//
//   node scripts/bench/logs.mjs [--lines N]     (default 10,000,000 lines = 1.0 GB; BENCH_LAB_ATTACH=1)
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import {
  WORK, agentProcs, dynsup, freePort, killByEnv, withTimeout, labFor, log, machineCpu, mb, mdTable, onCleanup, onDynsupCleanup, supervisorPid, procSample, ratio, runCleanups, sleep, waitFor, printSection,
} from './lib.mjs';

const LINE = 100;
const PAYLOAD = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz'.slice(0, LINE - 12);

/**
 * Lines i .. i+k-1 (from 0) into `buf`: 10-digit i, a space, the payload, "\n". Returns the bytes written.
 * The one definition of the generator's output: the node runs it (its source is put into gen.mjs) and
 * expectedHash() runs it here.
 */
function fillLines(buf, i, k, pay) {
  let o = 0;
  for (let j = 0; j < k; j++, i++) {
    o += buf.write(String(i).padStart(10, '0'), o, 'latin1');
    buf[o++] = 32;
    o += buf.write(pay, o, 'latin1');
    buf[o++] = 10;
  }
  return o;
}

// The generator, run on the node by `node gen.mjs N` (the lab shares this filesystem), written with
// writeSync in 64 KB chunks.
const GEN = `import { writeSync } from 'node:fs';
${fillLines.toString()}
const n = Number(process.argv[2]);
const pay = ${JSON.stringify(PAYLOAD)};
const per = 655;
const buf = Buffer.alloc(per * ${LINE});
for (let i = 0; i < n; ) {
  const k = Math.min(per, n - i);
  const o = fillLines(buf, i, k, pay);
  i += k;
  let w = 0;
  while (w < o) {
    try { w += writeSync(1, buf, w, o - w); } catch (e) { if (e.code !== 'EAGAIN') throw e; }
  }
}
`;

/** SHA-256 of what the generator prints for n lines (computed here, same function). */
function expectedHash(n) {
  const h = createHash('sha256');
  const per = 6550;
  const buf = Buffer.alloc(per * LINE);
  for (let i = 0; i < n; ) {
    const k = Math.min(per, n - i);
    h.update(buf.subarray(0, fillLines(buf, i, k, PAYLOAD)));
    i += k;
  }
  return h.digest('hex');
}

/** Bytes, lines and SHA-256 of a file. */
async function verify(file) {
  const h = createHash('sha256');
  let lines = 0;
  let bytes = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(chunk);
    bytes += chunk.length;
    for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) lines++;
  }
  return { bytes, lines, sha256: h.digest('hex') };
}

const waitLoop = (go) => `while [ ! -e ${go} ]; do sleep 0.01; done`;

async function rawSsh(lab, dir, n) {
  const go = join(dir, 'go-raw');
  const out = join(dir, 'raw.out');
  rmSync(go, { force: true });
  rmSync(out, { force: true });
  const token = `BENCH_LOGS_RAW_${process.pid}`;
  const remote = `${waitLoop(go)}; ${token}=1 exec node ${join(dir, 'gen.mjs')} ${n}`;
  // bash `times` after ssh exits: the ssh client's own CPU (user, sys) as its parent saw it.
  const ssh = ['ssh', '-n', ...lab.sshOptions, `root@${lab.nodes[0].address}`, remote].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
  const child = spawn('bash', ['-c', `${ssh} > '${out}'; rc=$?; times; exit $rc`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let times = '';
  let err = '';
  child.stdout.on('data', (d) => (times += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((r) => child.once('close', (code) => r(code)));
  const done = onCleanup('raw ssh', async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await killByEnv(`${token}=1`);
  });
  try {
    await sleep(1500); // the login is done and the remote loop waits for the trigger
    const cpu0 = machineCpu();
    const t0 = performance.now();
    writeFileSync(go, '');
    const code = await withTimeout(exited, 600_000, 'raw ssh transfer');
    const ms = performance.now() - t0;
    const cpu1 = machineCpu();
    if (code !== 0) throw new Error(`raw ssh exited ${code}: ${err}`);
    // `times` prints two lines: the shell's own user/sys, then its children's (ssh).
    const m = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(times.trim());
    const clientCpuS = m ? Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4]) : NaN;
    return { ms, clientCpuS, machineCpuS: cpu1.busyS - cpu0.busyS, file: out };
  } finally {
    await done();
  }
}

async function viaDynsup(lab, dir, n, controlPlane = false) {
  const tag = controlPlane ? 'cp' : 'nocp';
  const go = join(dir, `go-dynsup-${tag}`);
  rmSync(go, { force: true });
  const name = `bench-logs-${tag}-${process.pid}`;
  const stateDir = join(dir, `state-${tag}`);
  const [np, mp, ep, pp] = controlPlane ? await Promise.all([freePort(lab.head), freePort(lab.head), freePort(lab.head), freePort()]) : [0, 0, 0, 0];
  rmSync(stateDir, { recursive: true, force: true });
  const file = join(dir, `logs-${tag}.yaml`);
  writeFileSync(file, `name: ${name}
head: { address: ${lab.head} }
stateDir: ${stateDir}
lease: 30s
metrics: { enabled: false }
ui: { enabled: false }
logs: { maxSize: 0 }
controlPlane: ${controlPlane ? `{ nats: { port: ${np}, monitorPort: ${mp} }, etcd: { port: ${ep}, peerPort: ${pp} } }` : '{ nats: { enabled: false }, etcd: { enabled: false } }'}
nodes:
${lab.yamlNodes(1)}
workers:
  w:
    command: "${waitLoop(go)}; exec node ${join(dir, 'gen.mjs')} ${n}"
    restart: { policy: on-failure }
    stop: { grace: 2s }
`);
  const done = onDynsupCleanup(`dynsup logs ${tag}`, name, file, 180_000);
  try {
    const up = await dynsup(['up', '-d', file, '--timeout', '60']);
    if (up.code !== 0) throw new Error(`dynsup up -d failed: ${up.stderr}`);
    const pid = supervisorPid(stateDir);
    await sleep(1000);
    const logFile = join(stateDir, 'logs/w-0.log');
    const want = n * LINE;
    const { daemons, bridges } = await agentProcs(`/dynsup-root/${name}/`);
    const nodePids = [...daemons, ...bridges].map((x) => x.pid);
    const nodeCpu = () => nodePids.reduce((a, p) => a + (procSample(p)?.cpuS ?? 0), 0);
    const n0 = nodeCpu();
    const s0 = procSample(pid);
    const cpu0 = machineCpu();
    let peakRss = s0.rssKB;
    const t0 = performance.now();
    writeFileSync(go, '');
    await waitFor('the whole output in the head log', () => {
      const s = procSample(pid);
      if (s) peakRss = Math.max(peakRss, s.rssKB);
      return existsSync(logFile) && statSync(logFile).size >= want;
    }, 600_000, 10);
    const ms = performance.now() - t0;
    const cpu1 = machineCpu();
    const s1 = procSample(pid);
    const nodeCpuS = nodeCpu() - n0;
    // Until the replica is reported stopped (exit seen, log closed): nothing more may arrive.
    await waitFor('the worker to exit', async () => {
      const r = await dynsup(['status', file, '--json']);
      return JSON.parse(r.stdout).replicas?.[0]?.state === 'stopped';
    }, 60_000, 200).catch((e) => log(`logs: ${e.message}`));
    return { ms, supCpuS: s1.cpuS - s0.cpuS, nodeCpuS, nodeProcs: nodePids.length, hwmKB: s1.hwmKB, peakRssKB: peakRss, startRssKB: s0.rssKB, machineCpuS: cpu1.busyS - cpu0.busyS, file: logFile, done };
  } catch (err) {
    await done();
    throw err;
  }
}

export async function benchLogs({ lab, lines = 10_000_000 }) {
  const dir = join(WORK, 'logs');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'gen.mjs'), GEN);
  const bytes = lines * LINE;
  log(`logs: computing the expected SHA-256 of ${lines} lines`);
  const want = expectedHash(lines);
  const out = { lines, bytes };
  const errors = [];
  try {
    const raw = await rawSsh(lab, dir, lines);
    const v = await verify(raw.file);
    rmSync(raw.file, { force: true });
    out.raw = { ...raw, ...v, intact: v.bytes === bytes && v.lines === lines && v.sha256 === want };
    log(`logs raw ssh: ${(bytes / 1e6 / (raw.ms / 1000)).toFixed(0)} MB/s, intact ${out.raw.intact}`);
  } catch (err) {
    errors.push(`raw ssh: ${err.message.split('\n')[0]}`);
  }
  for (const [key, cp] of [['dynsup', false], ['dynsupCp', true]]) {
    try {
      const d = await viaDynsup(lab, dir, lines, cp);
      const v = await verify(d.file);
      await d.done();
      rmSync(d.file, { force: true });
      out[key] = { ...d, ...v, intact: v.bytes === bytes && v.lines === lines && v.sha256 === want };
      delete out[key].done;
      log(`logs ${key}: ${(bytes / 1e6 / (d.ms / 1000)).toFixed(0)} MB/s, intact ${out[key].intact}, HWM ${mb(d.hwmKB)} MB`);
    } catch (err) {
      errors.push(`${key}: ${err.message.split('\n')[0]}`);
    }
  }
  const gb = bytes / 1e9;
  const mbps = (x) => (x ? (bytes / 1e6 / (x.ms / 1000)).toFixed(0) : 'n/a');
  const rows = [];
  if (out.raw) rows.push(['raw `ssh node cmd > file`', sec2(out.raw.ms), mbps(out.raw), '1.00×', out.raw.intact ? `yes (${out.raw.lines} lines)` : `**NO** (${out.raw.bytes} B, ${out.raw.lines} lines)`, '-', `ssh client ${(out.raw.clientCpuS / gb).toFixed(2)}`, out.raw.machineCpuS.toFixed(1)]);
  const dRow = (x, label) => [label, sec2(x.ms), mbps(x), ratio(out.raw?.ms, x.ms), x.intact ? `yes (${x.lines} lines)` : `**NO** (${x.bytes} B, ${x.lines} lines)`, mb(x.hwmKB), `supervisor ${(x.supCpuS / gb).toFixed(2)}, node agent + bridge ${(x.nodeCpuS / gb).toFixed(2)}`, x.machineCpuS.toFixed(1)];
  if (out.dynsup) rows.push(dRow(out.dynsup, 'dynsup, control plane off (spool → agent → ssh channel → head log)'));
  if (out.dynsupCp) rows.push(dRow(out.dynsupCp, 'dynsup, control plane on (the default: NATS + etcd)'));
  const rel = out.raw && out.dynsup ? out.raw.ms / out.dynsup.ms : NaN;
  const relCp = out.raw && out.dynsupCp ? out.raw.ms / out.dynsupCp.ms : NaN;
  const targets = [
    {
      bench: 'logs',
      what: 'throughput over ssh ≥ 0.9× raw `ssh node cmd > file`',
      value: `${Number.isFinite(rel) ? rel.toFixed(2) : 'n/a'}× control plane off, ${Number.isFinite(relCp) ? relCp.toFixed(2) : 'n/a'}× on (raw ${mbps(out.raw)} MB/s; dynsup ${mbps(out.dynsup)} / ${mbps(out.dynsupCp)} MB/s)`,
      met: Number.isFinite(rel) && rel >= 0.9 && Number.isFinite(relCp) && relCp >= 0.9,
    },
    {
      bench: 'logs',
      what: 'every byte intact (count + SHA-256)',
      value: [out.dynsup, out.dynsupCp].map((x) => (x ? (x.intact ? 'yes' : 'NO') : 'n/a')).join(' / ') + ' (control plane off / on)',
      met: Boolean(out.dynsup?.intact && out.dynsupCp?.intact),
    },
  ];
  const md = [
    mdTable(['path', 'time s', 'MB/s', 'throughput vs raw ssh', 'every line intact', 'supervisor peak RSS MB (VmHWM)', 'CPU s per GB', 'machine CPU s'], rows),
    '',
    `${lines.toLocaleString('en')} lines of 100 bytes (${(bytes / 1e9).toFixed(2)} GB) from \`node gen.mjs\` on lab node ${lab.nodes[0].name}, ` +
      `as root. Both start on the same trigger file after the login; the time runs to the last byte in the file on the head. ` +
      `dynsup: the worker's output goes to its spool file on the node; the node's resident agent reads it and sends it in data frames ` +
      `(with offsets, acknowledged by the head) over the node's one ssh exec channel, and the head writes it to ` +
      `\`<stateDir>/logs/w-0.log\` (\`logs: {maxSize: 0}\`: no rotation, so the whole output is one file to check). "intact" = same ` +
      `byte count, line count and SHA-256 as the generator's output. "machine CPU s" = all CPU the machine spent (generator, ` +
      `sshd, agent, bridge, supervisor or ssh client), for scale.`,
    ...(errors.length ? ['', `**Errors:** ${errors.join('; ')}`] : []),
  ].join('\n');
  return { title: 'Log throughput', md, targets, raw: out };
}

const sec2 = (v) => (v / 1000).toFixed(2);

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf('--lines');
  try {
    const lab = await labFor(1);
    const r = await benchLogs({ lab, lines: i > 0 ? Number(process.argv[i + 1]) : 10_000_000 });
    printSection(r);
  } finally {
    await runCleanups();
  }
}
