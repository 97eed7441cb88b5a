/**
 * renderSpec writes the file node-agent.sh sources. Sourcing it with a real shell must reproduce the argv and
 * the environment exactly, for any value, and run nothing.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AGENT_PATH, exitFromStatus, parseAgentLine, renderSpec } from '../../src/transport/agent.js';
import type { LaunchSpec } from '../../src/transport/types.js';

const dir = mkdtempSync(join(tmpdir(), 'dynsup-spec-'));
const pwned = join(dir, 'pwned');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PATH = '/usr/local/bin:/usr/bin:/bin';
const shells = ['sh', 'dash', 'bash'].filter((s) => spawnSync('sh', ['-c', `command -v ${s}`]).status === 0);

const hostile: readonly string[] = [
  '',
  ' ',
  'plain',
  'two  words',
  `$(touch ${pwned})`,
  `\`touch ${pwned}\``,
  `'; touch ${pwned}; echo '`,
  "'; rm -rf ~ #",
  "it's",
  "'",
  "''",
  '"',
  '\\',
  '\\\'',
  'trailing backslash\\',
  '$HOME ${HOME} $0 $$ $? $@ $* $1',
  '*',
  '~',
  '~/x',
  '-n',
  '-e',
  '--',
  'a=b',
  'line1\nline2',
  '\n',
  'tab\there',
  'cr\rhere',
  'esc\u001b[31mred',
  'unicode ✓ €',
  '!!',
  '{a,b}',
  '[abc]',
  '#not a comment',
  '; & | < > ( ) { }',
  'x'.repeat(10_000),
];

const spec = (over: Partial<LaunchSpec> = {}): LaunchSpec => ({
  replica: 'w-0',
  argv: ['serve', ...hostile],
  env: Object.fromEntries(hostile.map((v, i) => [`V_${i}`, v])),
  unsetEnv: ['SLURM_*', 'PMI_*'],
  cwd: `/tmp/with space/it's $(here)`,
  graceSeconds: 10,
  stopSignal: 'SIGTERM',
  ...over,
});

function writeSpec(text: string): string {
  const p = join(dir, `spec-${Math.random().toString(36).slice(2)}`);
  writeFileSync(p, text);
  return p;
}

/** Source the spec in `shell`, run a_env, and print: argc, argv..., then the exported environment, NUL-separated. */
function source(shell: string, specFile: string): { argv: string[]; env: Map<string, string> } {
  const r = spawnSync(shell, ['-c', '. "$1"; a_env; printf "%s\\0" "$#" "$@"; exec env -0', 'sh', specFile], {
    cwd: dir,
    env: { PATH },
    maxBuffer: 64 << 20,
    // stdin not a socket: bash would otherwise take us for sshd and read ~/.bashrc.
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  expect(r.status, r.stderr.toString()).toBe(0);
  const parts = r.stdout.toString('utf8').split('\0');
  const n = Number(parts[0]);
  const argv = parts.slice(1, 1 + n);
  const env = new Map<string, string>();
  for (const entry of parts.slice(1 + n)) {
    if (!entry) continue;
    const eq = entry.indexOf('=');
    env.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  return { argv, env };
}

describe('renderSpec sourced by a real shell', () => {
  it('found a shell', () => expect(shells.length).toBeGreaterThan(0));

  describe.each(shells)('%s', (shell) => {
    it('reproduces argv and env exactly and runs nothing', () => {
      const s = spec();
      const out = source(shell, writeSpec(renderSpec(s, { mode: 'pipe', leaseSeconds: 30 })));
      expect(out.argv).toEqual(s.argv);
      for (const [k, v] of Object.entries(s.env)) expect(out.env.get(k), k).toBe(v);
      const extra = [...out.env.keys()].filter((k) => !(k in s.env) && !['PATH', 'PWD', 'OLDPWD', 'SHLVL', '_'].includes(k));
      expect(extra).toEqual([]);
      expect(existsSync(pwned)).toBe(false);
    });

    it('sets the agent settings, quoted where needed', () => {
      const s = spec({ graceSeconds: 2.2, stopSignal: 'SIGINT', unsetEnv: ['SLURM_*', 'PMI_*', 'X?'] });
      const f = writeSpec(renderSpec(s, { mode: 'spool', leaseSeconds: 0.2, watchPid: 4242 }));
      const r = spawnSync(shell, ['-c', '. "$1"; printf "%s\\0" "$A_MODE" "$A_LEASE" "$A_GRACE" "$A_SIG" "$A_WATCH_PID" "$A_UNSET" "$A_CWD"', 'sh', f], {
        cwd: dir,
        env: { PATH },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      expect(r.status, r.stderr.toString()).toBe(0);
      expect(r.stdout.toString().split('\0').slice(0, -1)).toEqual(['spool', '1', '3', 'INT', '4242', 'SLURM_* PMI_* X?', s.cwd]);
      expect(existsSync(pwned)).toBe(false);
    });

    it('renders an empty env, empty cwd and no watch pid', () => {
      const s = spec({ argv: ['true'], env: {}, cwd: undefined, unsetEnv: [] });
      const text = renderSpec(s, { mode: 'pipe', leaseSeconds: 5 });
      expect(text).toContain("A_CWD=''");
      expect(text).toContain('A_WATCH_PID=\n');
      const out = source(shell, writeSpec(text));
      expect(out.argv).toEqual(['true']);
    });
  });

  it('refuses an environment variable name that is not a shell name', () => {
    for (const k of ['BAD-NAME', '1X', 'A B', 'X;touch p', '', 'A=B', 'a\nb']) {
      expect(() => renderSpec(spec({ env: { [k]: 'v' } }), { mode: 'pipe', leaseSeconds: 1 }), k).toThrow(TypeError);
    }
  });

  it('refuses a NUL in an argument or value rather than cutting it', () => {
    expect(() => renderSpec(spec({ argv: ['a\0b'] }), { mode: 'pipe', leaseSeconds: 1 })).toThrow(TypeError);
    expect(() => renderSpec(spec({ env: { A: 'a\0b' } }), { mode: 'pipe', leaseSeconds: 1 })).toThrow(TypeError);
  });
});

describe('node-agent.sh runs the spec', () => {
  function runAgent(s: LaunchSpec, parentEnv: Record<string, string> = {}) {
    const runDir = mkdtempSync(join(dir, 'run-'));
    writeFileSync(join(runDir, 'heartbeat'), '');
    writeFileSync(join(runDir, `${s.replica}.spec`), renderSpec(s, { mode: 'pipe', leaseSeconds: 30 }));
    return spawnSync('sh', [AGENT_PATH, runDir, s.replica], {
      env: { PATH, ...parentEnv },
      timeout: 15_000,
      maxBuffer: 64 << 20,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  it('starts the worker with exactly the argv and env, after removing unsetEnv matches', () => {
    const cwd = mkdtempSync(join(dir, 'cwd with space '));
    const s = spec({
      argv: ['sh', '-c', 'printf "%s\\0" "$PWD" "$#" "$@"; exec env -0', 'sh', ...hostile],
      cwd,
    });
    const r = runAgent(s, { SLURM_JOB_ID: '7', PMI_RANK: '0', KEEP_ME: 'yes' });
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(r.stderr.toString()).toMatch(/^dynsup-agent pid \d+\n/);
    expect(r.stderr.toString()).toContain('dynsup-agent exit 0');
    const parts = r.stdout.toString('utf8').split('\0');
    expect(parts[0]).toBe(cwd);
    const n = Number(parts[1]);
    expect(parts.slice(2, 2 + n)).toEqual(hostile);
    const env = new Map(parts.slice(2 + n).filter(Boolean).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)] as const));
    for (const [k, v] of Object.entries(s.env)) expect(env.get(k), k).toBe(v);
    expect(env.get('KEEP_ME')).toBe('yes');
    expect(env.has('SLURM_JOB_ID')).toBe(false);
    expect(env.has('PMI_RANK')).toBe(false);
    expect(existsSync(pwned)).toBe(false);
  });

  it('reports the worker exit status', () => {
    const r = runAgent(spec({ argv: ['sh', '-c', 'exit 3'], env: {}, cwd: undefined }));
    expect(r.status).toBe(3);
    expect(r.stderr.toString()).toContain('dynsup-agent exit 3');
  });

  it('a worker env var named like an agent setting does not change what the agent does', () => {
    // BUG (agent.ts renderSpec + share/node-agent.sh): a_env exports the worker's variables into the agent's
    // own shell before it uses A_CWD, A_SIG, A_GRACE, A_WATCH_PID, A_LEASE, hb, rundir and name. The schema
    // accepts these names (ENV_NAME_RE), so `env: { A_CWD: /elsewhere }` moves the worker, and e.g. `hb`
    // points the lease watchdog at another file. Fix: apply a_env (and cd) only in the subshell that execs
    // the worker, e.g. `( a_env; cd ...; exec setsid "$@" ) &`, or reject such names in the schema.
    const cwd = mkdtempSync(join(dir, 'cwd-'));
    const r = runAgent(spec({ argv: ['sh', '-c', 'pwd'], env: { A_CWD: join(dir, 'does-not-exist') }, cwd }));
    expect(r.stderr.toString()).not.toContain('cannot cd');
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(r.stdout.toString()).toBe(`${cwd}\n`);
  });
});

describe('agent control lines', () => {
  it.each([
    ['dynsup-agent pid 1234', { kind: 'pid', pid: 1234 }],
    ['dynsup-agent exit 0', { kind: 'exit', rc: 0 }],
    ['  dynsup-agent exit 137\r', { kind: 'exit', rc: 137 }],
    ['dynsup-agent size 1048576', { kind: 'size', bytes: 1048576 }],
    ['dynsup-agent error: no spec /x', { kind: 'error', message: 'no spec /x' }],
    ['worker output dynsup-agent pid 1', null],
    ['', null],
  ] as const)('%j', (line, want) => {
    expect(parseAgentLine(line)).toEqual(want);
  });

  it.each([
    [0, { code: 0, signal: null }],
    [1, { code: 1, signal: null }],
    [128, { code: 128, signal: null }],
    [137, { code: null, signal: 'SIGKILL' }],
    [143, { code: null, signal: 'SIGTERM' }],
    [130, { code: null, signal: 'SIGINT' }],
    [255, { code: 255, signal: null }],
  ] as const)('status %i', (rc, want) => {
    expect(exitFromStatus(rc)).toEqual(want);
  });
});

describe('node-agent.sh lease', () => {
  /** Start an agent (spool mode, lease 2 s) around `sleep 60`; returns its run dir and a wait for its exit. */
  function startAgent(heartbeat: string) {
    const runDir = mkdtempSync(join(dir, 'lease-'));
    writeFileSync(join(runDir, 'heartbeat'), heartbeat);
    const s: LaunchSpec = { replica: 'w-0', argv: ['sleep', '60'], env: {}, unsetEnv: [], graceSeconds: 1, stopSignal: 'SIGTERM' };
    writeFileSync(join(runDir, 'w-0.spec'), renderSpec(s, { mode: 'spool', leaseSeconds: 2 }));
    const child = spawn('sh', [AGENT_PATH, runDir, 'w-0'], { env: { PATH }, stdio: 'ignore' });
    const exited = new Promise<number>((r) => child.once('exit', () => r(Date.now())));
    return { runDir, child, exited };
  }

  it('stops the worker when the heartbeat stops changing for the lease, and says so', async () => {
    const { runDir, exited } = startAgent('1');
    const t0 = Date.now();
    const t = await exited;
    expect(t - t0).toBeGreaterThanOrEqual(2000);
    expect(t - t0).toBeLessThan(8000);
    expect(readFileSync(join(runDir, 'agent.log'), 'utf8')).toMatch(/w-0: lease expired \(heartbeat unchanged for 3s\)/);
  }, 15_000);

  it('keeps the worker while the heartbeat keeps changing, whatever its mtime says', async () => {
    const { runDir, child, exited } = startAgent('1');
    let n = 1;
    let gone = false;
    void exited.then(() => (gone = true));
    const hb = join(runDir, 'heartbeat');
    for (let i = 0; i < 10; i++) {
      writeFileSync(hb, String(++n));
      utimesSync(hb, new Date(0), new Date(0)); // a skewed clock: the content is what counts
      await sleep(500);
    }
    expect(gone).toBe(false);
    child.kill('SIGTERM');
    await exited;
  }, 15_000);
});
