// Shared helpers for the benchmarks in scripts/bench/: processes, polling with deadlines, /proc sampling,
// the netns lab (same lock and script as test/helpers/lab.ts), percentiles and markdown tables.
// Plain Node ESM, no dependencies.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };
export const ROOT = resolve(import.meta.dirname, '../..');
// BENCH_DYNSUP_BIN: bench another checkout's CLI (e.g. a prototype in a scratch copy, or a private build of
// one commit that a concurrent `npm run build` in this checkout cannot change mid-run) with the same scripts;
// BENCH_COMMIT names what that build is, for the report.
export const BIN = process.env.BENCH_DYNSUP_BIN ?? join(ROOT, 'bin/dynsup.js');
export const LAB_SH = join(ROOT, 'scripts/testbed/lab.sh');
export const WORK = process.env.BENCH_WORK ?? '/tmp/dynsup-bench';
export const TOOLS = process.env.BENCH_TOOLS ?? '/tmp/dynsup-bench-tools';
export const LAB_DIR = join(WORK, 'lab');
export const LAB_HEAD = '10.99.0.1';
export const CLK_TCK = 100; // getconf CLK_TCK on Linux/x86-64 and arm64

export const log = (...a) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${a.join(' ')}\n`);

// ---------------------------------------------------------------------------------------------------------
// Cleanup: every bench registers what it started; run on normal exit, on error and on SIGINT/SIGTERM.
const cleanups = [];
/** Register an async cleanup; returns a function that runs it now (once) and unregisters it. */
export function onCleanup(what, fn) {
  const entry = { what, fn, done: false };
  cleanups.push(entry);
  return async () => {
    if (entry.done) return;
    entry.done = true;
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
    await fn();
  };
}
export async function runCleanups() {
  while (cleanups.length) {
    const e = cleanups.pop();
    if (e.done) continue;
    e.done = true;
    try {
      await e.fn();
    } catch (err) {
      log(`cleanup ${e.what} failed: ${err?.message ?? err}`);
    }
  }
}
let signalled = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (signalled) process.exit(130);
    signalled = true;
    log(`${sig}: cleaning up (again to exit at once)`);
    void runCleanups().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------------------
// Processes.

/** Run argv; resolves {code, stdout, stderr, ms}; never rejects (unless it cannot be spawned). */
export function run(file, args = [], opts = {}) {
  return new Promise((res) => {
    const t0 = performance.now();
    execFile(file, args, { maxBuffer: 256 << 20, timeout: opts.timeoutMs ?? 300_000, env: opts.env ?? process.env, cwd: opts.cwd ?? ROOT }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      res({ code, stdout: String(stdout), stderr: String(stderr), ms: performance.now() - t0, killed: Boolean(err?.killed) });
    });
  });
}
export const sh = (cmd, opts) => run('bash', ['-c', cmd], opts);

/** Like run, but throws with the output when the exit code is not 0. */
export async function must(file, args, opts) {
  const r = await run(file, args, opts);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}${r.killed ? ' (timed out)' : ''}\n${r.stderr}${r.stdout}`.slice(0, 4000));
  return r;
}
export const mustSh = (cmd, opts) => must('bash', ['-c', cmd], opts);

export const dynsup = (args, opts = {}) => run(process.execPath, [BIN, ...args], { timeoutMs: 180_000, ...opts });

/** Poll fn until truthy or the deadline (or the signal aborts): throws naming `what`. */
export async function waitFor(what, fn, timeoutMs = 30_000, intervalMs = 20, signal = undefined) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    if (signal?.aborted) throw new Error(`stopped waiting for ${what}`);
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message ?? last}` : ''}`);
    await sleep(intervalMs);
  }
}

/** Resolves like p, or rejects after ms (the timer never keeps the process alive once p settled). */
export function withTimeout(p, ms, what) {
  let timer;
  const t = new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

function isZombie(pid) {
  try {
    return /^\d+ \(.*\) [ZX]/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** Live pids whose environment contains `needle` (a token only this run's processes carry). */
export async function pidsWithEnv(needle) {
  const out = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const env = await readFile(`/proc/${e}/environ`).catch(() => null);
    if (env && env.includes(needle) && !isZombie(Number(e))) out.push(Number(e));
  }
  return out;
}

/** SIGKILL (by pid) every process carrying the env token, until none is left. */
export async function killByEnv(needle, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = await pidsWithEnv(needle);
    if (!pids.length) return 0;
    for (const p of pids) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    if (Date.now() > deadline) throw new Error(`processes with ${needle} still alive: ${pids.join(' ')}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------------------------
// /proc sampling.

/** CPU seconds (utime+stime) and memory of one process; null if it is gone. */
export function procSample(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return {
      cpuS: (Number(f[11]) + Number(f[12])) / CLK_TCK,
      childCpuS: (Number(f[13]) + Number(f[14])) / CLK_TCK,
      rssKB: kb('VmRSS'),
      hwmKB: kb('VmHWM'),
      threads: Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? NaN),
    };
  } catch {
    return null;
  }
}

/** Whole-machine CPU jiffies from /proc/stat: {busy, total} (seconds of all cores). */
export function machineCpu() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = line.reduce((a, b) => a + b, 0);
  const idle = line[3] + (line[4] ?? 0);
  return { busyS: (total - idle) / CLK_TCK, totalS: total / CLK_TCK };
}

/** Sum of CPU seconds of every process whose environment carries the token (node-side cost). */
export async function cpuOfEnv(needle) {
  let s = 0;
  for (const pid of await pidsWithEnv(needle)) s += procSample(pid)?.cpuS ?? 0;
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Statistics and formatting.

export function percentile(values, p) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}
export const median = (v) => percentile(v, 50);
export const ms = (v) => (Number.isFinite(v) ? (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) : 'n/a');
export const sec = (msv) => (Number.isFinite(msv) ? (msv / 1000).toFixed(2) : 'n/a');
export const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : 'n/a');
export const mb = (kb) => (Number.isFinite(kb) ? (kb / 1024).toFixed(1) : 'n/a');

export function mdTable(header, rows) {
  const esc = (c) => String(c).replaceAll('|', '\\|');
  return [`| ${header.map(esc).join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`)].join('\n');
}

/** One line per target, for the console and the report: "MET    bench: what: value" / "MISSED ...". */
export function targetLines(targets = []) {
  return targets.map((t) => `${t.met ? 'MET   ' : 'MISSED'} ${t.bench}: ${t.what}: ${t.value}`);
}

/** What a bench run on its own prints: its section, then a met/missed line per target. */
export function printSection(r) {
  console.log(`## ${r.title}\n\n${r.md}\n`);
  for (const l of targetLines(r.targets)) console.log(l);
  console.log('');
}

export function freePort(host = '127.0.0.1') {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

export function machineInfo() {
  const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model ?? 'unknown';
  let os = 'Linux';
  try {
    os = /^PRETTY_NAME="?([^"\n]*)/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? os;
  } catch { /* keep */ }
  let kernel = '';
  try {
    kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch { /* keep */ }
  return { nproc: cpus().length, model, ramGiB: totalmem() / 2 ** 30, os, kernel, node: process.version };
}

// ---------------------------------------------------------------------------------------------------------
// Tools the baselines need.

/** apt-get install the Debian packages whose binary is missing; says so on stderr. Returns what it installed. */
export async function ensureApt(pkgs) {
  const missing = pkgs.filter(([bin]) => !existsSync(bin)).map(([, pkg]) => pkg);
  if (!missing.length) return [];
  log(`installing Debian package(s) ${missing.join(', ')} with apt-get (missing on this machine)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  await must('apt-get', ['update', '-qq'], { env, timeoutMs: 300_000 });
  await must('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env, timeoutMs: 300_000 });
  return missing;
}

/** pm2 in a private prefix (never a project dependency). Returns the path of its CLI. */
export async function ensurePm2() {
  const prefix = join(TOOLS, 'pm2');
  const bin = join(prefix, 'node_modules/.bin/pm2');
  if (existsSync(bin)) return { bin, installed: false };
  mkdirSync(prefix, { recursive: true });
  log(`installing pm2 with npm install --prefix ${prefix} (not a project dependency)`);
  await must('npm', ['install', '--prefix', prefix, 'pm2@5', '--no-audit', '--no-fund', '--loglevel=error'], { timeoutMs: 300_000, cwd: prefix });
  return { bin, installed: true };
}

// ---------------------------------------------------------------------------------------------------------
// The lab (scripts/testbed/lab.sh): same session lock as test/helpers/lab.ts, so a vitest run and a bench never
// share or tear down each other's lab.

function holdLock(file, waitMs) {
  return new Promise((resolveLock, reject) => {
    const child = spawn('flock', ['-x', '-w', String(Math.ceil(waitMs / 1000)), file, 'sh', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const exited = new Promise((r) => child.once('close', () => r()));
    child.stderr.on('data', (d) => (err += d));
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('locked')) resolveLock(async () => {
        child.stdin.end();
        await exited;
      });
    });
    child.once('error', reject);
    child.once('close', (code) => {
      if (!out.includes('locked')) reject(new Error(`could not lock ${file} within ${waitMs} ms (a test run holds the lab?) code=${code} ${err}`));
    });
  });
}

/**
 * Bring up a lab of n nodes (waits up to lockWaitMs for a lab a test run is using). The lab is torn down
 * by lab.stop() or by runCleanups().
 */
export async function startLab(n, lockWaitMs = 15 * 60_000) {
  log(`lab: waiting for the lab lock (a test run may hold it)`);
  const release = await holdLock('/run/dynsup-lab.session.lock', lockWaitMs);
  const down = async () => {
    const r = await run('bash', [LAB_SH, 'down', '--dir', LAB_DIR], { timeoutMs: 180_000 });
    if (r.code !== 0) log(`lab down failed: ${r.stderr}`);
  };
  const t0 = performance.now();
  try {
    // --root-login: the benchmarks measure this machine's real root login (rc files and all) on purpose,
    // beside the clean-login user; the lab authorizes only its test user otherwise.
    await must('bash', [LAB_SH, 'up', String(n), '--dir', LAB_DIR, '--root-login'], { timeoutMs: 300_000, env: { ...process.env, LC_ALL: 'C' } });
  } catch (err) {
    await down();
    await release();
    throw err;
  }
  log(`lab: ${n} nodes up in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const stop = onCleanup('lab', async () => {
    await down();
    await release();
  });
  return describeLab(stop);
}

function describeLab(stop) {
  const nodes = JSON.parse(readFileSync(join(LAB_DIR, 'nodes.json'), 'utf8'));
  const key = join(LAB_DIR, 'id_ed25519');
  const knownHosts = join(LAB_DIR, 'known_hosts');
  const sshOptions = [
    '-F', '/dev/null', '-i', key, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes',
    '-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'GlobalKnownHostsFile=/dev/null',
    '-o', 'StrictHostKeyChecking=yes', '-o', 'ConnectTimeout=5', '-o', 'LogLevel=ERROR',
  ];
  return {
    n: nodes.length,
    nodes,
    key,
    knownHosts,
    sshOptions,
    head: LAB_HEAD,
    ssh: (node, command, opts, user = 'root') => run('ssh', ['-n', ...sshOptions, `${user}@${node.address}`, command], opts),
    /**
     * YAML node lines for a dynsup cluster file (the first k nodes). Placement packs replicas onto the first
     * node with room, so give each node `gpus` GPUs and each replica 1 to get `gpus` replicas per node.
     */
    yamlNodes: (k, user = 'root', gpus = 1) =>
      nodes.slice(0, k).map((x) => `  ${x.name}: { transport: ssh, host: ${x.address}, user: ${user}, identityFile: ${key}, knownHosts: ${knownHosts}, gpus: ${gpus} }`).join('\n'),
    stop,
  };
}

/**
 * The lab for one bench run on its own: BENCH_LAB_ATTACH=1 uses a lab that is already up in LAB_DIR (held by
 * another process of yours; nothing is locked or torn down here), otherwise startLab(n).
 */
export async function labFor(n) {
  if (process.env.BENCH_LAB_ATTACH !== '1') return startLab(n);
  const lab = describeLab(async () => undefined);
  if (lab.n < n) throw new Error(`BENCH_LAB_ATTACH: the lab in ${LAB_DIR} has ${lab.n} nodes, need ${n}`);
  return lab;
}

/**
 * A user whose login shell is /bin/sh with no rc files, for "clean login" runs: on this machine root's
 * ~/.bashrc runs `pyenv init -` (~0.1 CPU-s, and `pyenv rehash` takes a lock in /root/.pyenv/shims that every
 * lab node shares, so concurrent logins on all nodes queue on it). Created for the run if missing (and
 * removed at cleanup, home included); its password field is '*' (no password, not locked: sshd without PAM
 * refuses '!'). It has a home of its own (empty: no rc or profile files): dynsup keeps its node agent in the
 * login's ~/.cache/dynsup, as on any real node.
 */
export async function ensureCleanUser(name = 'dsbench') {
  // The lab's sshd reads LAB_DIR/authorized_keys.USER, with the user's rights: a readable copy of the lab's key.
  if (existsSync(join(LAB_DIR, 'id_ed25519.pub'))) {
    copyFileSync(join(LAB_DIR, 'id_ed25519.pub'), join(LAB_DIR, `authorized_keys.${name}`));
    chmodSync(join(LAB_DIR, `authorized_keys.${name}`), 0o644);
  }
  const home = `/home/${name}`;
  const have = await run('id', ['-u', name]);
  if (have.code === 0) {
    // An existing user (a run that was interrupted before its cleanup): make sure its home is usable.
    const dir = (await run('getent', ['passwd', name])).stdout.split(':')[5] ?? '';
    const ok = await run('su', ['-s', '/bin/sh', name, '-c', 'mkdir -p "$HOME/.cache" && test -w "$HOME/.cache"']);
    if (ok.code !== 0) {
      log(`user ${name} exists but its home ${dir || '(none)'} is not writable: giving it ${home}`);
      await must('usermod', ['--home', home, name]);
      mkdirSync(home, { recursive: true, mode: 0o700 });
      await must('chown', [`${name}:`, home]);
    }
    return { name, created: false };
  }
  log(`creating user ${name} (shell /bin/sh, empty home ${home}, no password) for the clean-login runs; removed at the end`);
  const skel = join(WORK, 'empty-skel');
  mkdirSync(skel, { recursive: true });
  await must('useradd', ['--system', '--create-home', '--skel', skel, '--home-dir', home, '--shell', '/bin/sh', '-p', '*', name]);
  onCleanup(`user ${name}`, async () => {
    await killByUser(name);
    await run('userdel', ['--remove', name]);
  });
  return { name, created: true };
}

/** SIGKILL every process of a user (by pid), e.g. leftovers of a clean-login run. */
export async function killByUser(name) {
  const uid = Number((await run('id', ['-u', name])).stdout.trim());
  if (!Number.isInteger(uid) || uid <= 0) return;
  for (let i = 0; i < 20; i++) {
    const pids = [];
    for (const e of await readdir('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      const st = await readFile(`/proc/${e}/status`, 'utf8').catch(() => '');
      if (new RegExp(`^Uid:\\s+${uid}\\s`, 'm').test(st) && !isZombie(Number(e))) pids.push(Number(e));
    }
    if (!pids.length) return;
    for (const p of pids) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    await sleep(100);
  }
}

/** Hash under which dynsup caches its agent bundle on a node (~/.cache/dynsup/agent-HASH.mjs): see agent-bundle.ts. */
export function agentBundleHash() {
  const bundle = join(BIN, '../../dist/agent/dynsup-agent.mjs');
  return createHash('sha256').update(readFileSync(bundle)).digest('hex').slice(0, 16);
}

/**
 * Live (non-zombie) processes whose cmdline (NUL-joined argv) contains every needle: [{pid, ppid, cmd, cpuS}],
 * cpuS = utime+stime of the process itself (children's not included).
 */
export async function procsByCmdline(needles) {
  const out = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const cmd = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (!cmd || !needles.every((n) => cmd.includes(n))) continue;
    const p = procStat(Number(e));
    if (p) out.push({ pid: Number(e), cmd: cmd.split('\0').filter(Boolean).join(' '), ...p });
  }
  return out;
}

/** {ppid, cpuS} of a live, non-zombie process from /proc/PID/stat; null otherwise. */
export function procStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (f[0] === 'Z' || f[0] === 'X') return null;
    return { ppid: Number(f[1]), cpuS: (Number(f[11]) + Number(f[12])) / CLK_TCK };
  } catch {
    return null;
  }
}

/**
 * The node agent daemons (`node .../agent-HASH.mjs serve RUNDIR`, or dist/agent/dynsup-agent.mjs for the
 * local transport) whose run dir contains `runDirNeedle`, and the bridges (`... connect RUNDIR`) that the
 * head's ssh exec channels run: the node-side processes of a cluster.
 */
export async function agentProcs(runDirNeedle) {
  const isAgent = (p) => /(?:dynsup-agent|\/dynsup\/agent-[0-9a-f]+)\.mjs /.test(p.cmd);
  const daemons = (await procsByCmdline(['serve', runDirNeedle])).filter(isAgent);
  const bridges = (await procsByCmdline(['connect', runDirNeedle])).filter(isAgent);
  return { daemons, bridges };
}

/** Pid of the supervisor of the cluster whose state dir this is (from its lock file). */
export function supervisorPid(stateDir) {
  return JSON.parse(readFileSync(join(stateDir, 'run/supervisor.json'), 'utf8')).pid;
}

/**
 * Register the teardown of a bench cluster: `dynsup down`, then anything still carrying its name (workers by
 * their environment; node agents and bridges by the run dir in their argv, which names the cluster).
 */
export function onDynsupCleanup(what, name, file, timeoutMs) {
  return onCleanup(what, async () => {
    const down = await dynsup(['down', file], { timeoutMs });
    if (down.code !== 0) log(`${what}: dynsup down exited ${down.code}: ${short(down.stderr)}`);
    await killByEnv(`DYNSUP_CLUSTER=${name}`);
    // The run dir is /tmp/dynsup-USER/NAME/NODE (ssh) or <stateDir>/run/nodes/NODE (local; stateDir state-NAME).
    const { daemons, bridges } = await agentProcs(`${name}/`);
    const left = [...daemons, ...bridges];
    if (left.length) log(`${what}: ${left.length} node agent process(es) still running after down: killing ${left.map((p) => p.pid).join(' ')}`);
    for (const p of left) try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
  });
}

/** The supervisor's own error events (level ≥ 50 in <stateDir>/logs/dynsup.log), joined; '' if none. */
export function supervisorErrors(stateDir, max = 300) {
  try {
    const msgs = readFileSync(join(stateDir, 'logs/dynsup.log'), 'utf8').trim().split('\n').flatMap((l) => {
      try {
        const e = JSON.parse(l);
        return e.level >= 50 ? [String(e.msg).replace(/\s+/g, ' ')] : [];
      } catch {
        return [];
      }
    });
    const text = msgs.join(' / ');
    return text.length > max ? `${text.slice(0, max)}…` : text;
  } catch {
    return '';
  }
}

/** First line of an error, at most max characters. */
export const short = (err, max = 300) => {
  const t = String(err?.message ?? err).split('\n')[0];
  return t.length > max ? `${t.slice(0, max)}…` : t;
};

/** Files in a directory (empty list when it does not exist). */
export function ls(dir) {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
