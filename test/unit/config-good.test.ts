/**
 * Valid cluster files (test/fixtures/good): each loads, and resolves to exactly these values.
 * Hostile-looking but quoted values (shell metacharacters, `$(...)`, spaces) are data and must come
 * through byte for byte; nothing in a file may run at load time.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadCluster } from '../../src/config/load.js';
import type { ClusterConfig, WorkerGroup } from '../../src/config/types.js';
import { makeRedactor } from '../../src/logs/events.js';
import { buildLaunchSpec } from '../../src/supervise/launch-spec.js';
import { etcdUrl, natsUrl } from '../../src/controlplane/urls.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const goodDir = join(root, 'test/fixtures/good');
const good = (name: string) => join(goodDir, name);

const ENV = Object.freeze({
  HOME: '/home/dynsup-test',
  GPUS: '4',
  N: '3',
  ONE: '1',
  HF_TOKEN: 'hf_abcdefSECRET123',
  EMPTY_VAR: '',
  FALLBACK: 'fb',
  MY_API_KEY: 'sk-live-abcdef123',
});
const load = (name: string, env: Record<string, string | undefined> = ENV) => loadCluster(good(name), { env });
const group = (c: ClusterConfig, name: string): WorkerGroup => {
  const g = c.groups.find((x) => x.name === name);
  if (!g) throw new Error(`no group ${name}`);
  return g;
};

const DEFAULT_RESTART = {
  policy: 'always',
  initialDelayMs: 1000,
  factor: 2,
  maxDelayMs: 30_000,
  jitter: 0.1,
  maxRestarts: 5,
  windowMs: 60_000,
  resetAfterMs: 30_000,
  gpuReleaseTimeoutMs: 60_000,
};

const tmp = mkdtempSync(join(tmpdir(), 'dynsup-good-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('good cluster files', () => {
  it.each(readdirSync(goodDir).filter((f) => /\.ya?ml$/.test(f)))('%s loads', (name) => {
    expect(() => load(name)).not.toThrow();
  });

  it('minimal.yaml: every default', () => {
    const c = load('minimal.yaml');
    expect(c).toEqual({
      file: good('minimal.yaml'),
      name: 'minimal',
      headAddress: '127.0.0.1',
      stateDir: join(goodDir, '.dynsup/minimal'),
      leaseMs: 30_000,
      nats: { enabled: true, binary: 'nats-server', args: [], port: 4222, monitorPort: 8222, jetstream: true, workerCredentials: false },
      etcd: { enabled: true, binary: 'etcd', args: [], port: 2379, peerPort: 2380, auth: false, tls: false },
      metrics: { enabled: true, port: 9464, gpuIntervalMs: 5000 },
      ui: { enabled: true },
      logs: { maxBytes: 100 * 2 ** 20, keep: 5 },
      nodes: [{ name: 'local', transport: 'local', gpus: 0, address: '127.0.0.1', setup: [], runDir: undefined, ssh: undefined }],
      groups: [
        {
          name: 'w',
          argv: ['sh', '-c', 'echo hello'],
          replicas: 1,
          gpus: 0,
          nodes: [],
          env: {},
          cwd: undefined,
          port: undefined,
          rollout: { maxUnavailable: 1 },
          restart: DEFAULT_RESTART,
          stop: { signal: 'SIGTERM', graceMs: 10_000 },
          dependsOn: [],
          health: undefined,
          unsetEnv: ['SLURM_*', 'PMI_*', 'PMIX_*'],
          nodesPerReplica: 1,
          launch: 'single',
          ranksPerNode: 1,
          mpiArgs: [],
        },
      ],
      replicas: [{ name: 'w-0', group: 'w', index: 0, node: 'local', gpuIds: [], port: undefined }],
      secrets: [],
    });
  });

  it('--state-dir overrides the file and is made absolute', () => {
    const c = loadCluster(good('minimal.yaml'), { env: ENV, stateDir: 'rel/state' });
    expect(c.stateDir).toBe(resolve('rel/state'));
  });

  describe('paths with spaces.yaml', () => {
    const c = load('paths with spaces.yaml');

    it('keeps spaces inside arguments and resolves stateDir against the file', () => {
      expect(c.file).toBe(good('paths with spaces.yaml'));
      expect(c.stateDir).toBe(join(goodDir, 'state dir/with spaces'));
      expect(group(c, 'serve').argv).toEqual(['/opt/my tools/bin/serve', '--model', '/models/Llama 3 8B/', '--log', '{replica} output.log']);
      expect(group(c, 'helper').argv).toEqual(['sh', '-c', `ls -l "my dir" 'other dir'`]);
      expect(group(c, 'helper').cwd).toBe(join(goodDir, 'work dir'));
    });

    it('resolves a relative cwd with a placeholder against the file too', () => {
      // BUG (load.ts, `cwd: ... /[{]/.test(cwd) ? cwd : abs(cwd)`): a cwd containing `{` is left relative,
      // so it ends up relative to wherever the agent runs instead of the cluster file's directory.
      expect(group(c, 'serve').cwd).toBe(join(goodDir, 'work dir/{replica}'));
      const spec = buildLaunchSpec(c, group(c, 'serve'), c.replicas[0]!);
      expect(spec.cwd).toBe(join(goodDir, 'work dir/serve-0'));
      expect(spec.argv.at(-1)).toBe('serve-0 output.log');
    });
  });

  describe('shell-meta.yaml', () => {
    const pwned = '/tmp/dynsup-pwned';
    const existedBefore = existsSync(pwned);
    const c = load('shell-meta.yaml');

    it('keeps quoted shell metacharacters as data, byte for byte', () => {
      expect(group(c, 'str').argv).toEqual(['sh', '-c', `echo '$(touch /tmp/dynsup-pwned)' && printf '%s\n' "$HOME" '; rm -rf ~ #'`]);
      expect(group(c, 'str').env).toEqual({
        SUBST: '$(touch /tmp/dynsup-pwned)',
        BACKTICK: '`touch /tmp/dynsup-pwned`',
        QUOTE: "'; rm -rf ~ #",
        DOLLAR_LITERAL: 'price: $5 and ${NOT_A_VAR}',
        BARE: '$HOME/bin:$PATH',
        SEMI: 'a;b|c&d>e<f',
        NEWLINE: 'line1\nline2',
        GLOB: '*',
        NUM: '8080',
        FLOAT: '0.5',
        BOOL: 'true',
      });
      expect(group(c, 'argv').argv).toEqual(['sh', '-c', 'echo "$1"', '--', '$(touch /tmp/dynsup-pwned)', "'; rm -rf ~ #", '$x']);
    });

    it('ran nothing while loading', () => {
      if (!existedBefore) expect(existsSync(pwned)).toBe(false);
    });
  });

  describe('interpolation.yaml', () => {
    const c = load('interpolation.yaml');
    const w = group(c, 'w');

    it('substitutes ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?m}, nested defaults and $$', () => {
      expect(c.name).toBe('interp');
      expect(c.headAddress).toBe('127.0.0.1');
      expect(w.argv).toEqual(['serve', '--token-file', '/run/token', '--literal=${HOME}', '$HOME']);
      expect(w.env).toEqual({
        HF_TOKEN: 'hf_abcdefSECRET123',
        QUOTED_NUM: '3',
        EMPTY_OK: '',
        DASH_NO_COLON: '',
        COLON_DEFAULT: 'fallback',
        MIXED: 'prefix-3-suffix',
        NESTED: 'fb',
        SET_OR_MSG: 'fb',
      });
    });

    it('types an unquoted ${N} like the number it yields', () => {
      expect(c.nodes[0]!.gpus).toBe(4);
      expect(w.replicas).toBe(3);
      expect(c.replicas.map((r) => [r.name, r.gpuIds])).toEqual([
        ['w-0', [0]],
        ['w-1', [1]],
        ['w-2', [2]],
      ]);
    });

    it('records HF_TOKEN as a secret and the redactor hides it', () => {
      expect(c.secrets).toContain('hf_abcdefSECRET123');
      const redact = makeRedactor(c.secrets);
      expect(redact('HF_TOKEN=hf_abcdefSECRET123 next')).toBe('HF_TOKEN=*** next');
      const jsonLine = JSON.stringify({ msg: `env ${JSON.stringify(w.env)}` });
      expect(redact(jsonLine)).not.toContain('hf_abcdefSECRET123');
      expect(JSON.parse(redact(jsonLine)).msg).toContain('***');
    });

    it('an unset variable without a default is an error naming it', () => {
      const { HF_TOKEN: _unused, ...rest } = ENV;
      expect(() => load('interpolation.yaml', rest)).toThrow(/interpolation\.yaml:14:17: workers\.w\.env\.HF_TOKEN: variable HF_TOKEN is not set/);
    });
  });

  it('numeric-defaults.yaml: an unquoted ${VAR:-2} default is a number, like ${VAR}', () => {
    // BUG (source.ts interpolateDocument: `used.length && node.type === Scalar.PLAIN ? retype(value) : value`):
    // when the default is used no variable is recorded as used, so `replicas: ${REPLICAS:-2}` stays the string "2".
    // The nested `${WORKER_GPUS:-${ONE}}` fails the same way, because interpolate() drops the nested `used`.
    const c = load('numeric-defaults.yaml');
    expect(c.nodes[0]!.gpus).toBe(4);
    const w = group(c, 'w');
    expect([w.replicas, w.port, w.gpus]).toEqual([2, 9000, 1]);
    expect(c.replicas.map((r) => r.port)).toEqual([9000, 9001]);
  });

  it('nested-default-secret.yaml: a secret substituted through a nested default is still a secret', () => {
    // BUG (interpolate.ts expand: `if (op === '-') return interpolate(rest ?? '', env).value;` drops the
    // nested result's `used`), so MY_API_KEY never reaches `substituted` and is never redacted.
    const c = load('nested-default-secret.yaml');
    expect(group(c, 'w').argv).toEqual(['sh', '-c', 'serve --api-key sk-live-abcdef123']);
    expect(c.secrets).toContain('sk-live-abcdef123');
  });

  it('secrets: env entries that look secret count even when written literally; short ones do not', () => {
    const text = [
      'name: s',
      'head: { address: 127.0.0.1 }',
      'nodes: { n: {} }',
      'workers:',
      '  w:',
      '    command: [x]',
      '    env: { API_KEY: literal-key-1234, DB_PASSWORD: "p\\"w\\\\d", PLAIN: not-a-secret, MY_TOKEN: abc }',
    ].join('\n');
    const c = loadCluster('/tmp/s.yaml', { env: {}, content: Buffer.from(text) });
    expect(new Set(c.secrets)).toEqual(new Set(['literal-key-1234', 'p"w\\d']));
    const redact = makeRedactor(c.secrets);
    const line = JSON.stringify({ msg: 'p"w\\d and literal-key-1234', env: { DB_PASSWORD: 'p"w\\d' } });
    const out = redact(line);
    expect(out).not.toContain('literal-key-1234');
    expect(out).not.toContain(JSON.stringify('p"w\\d').slice(1, -1));
    expect(JSON.parse(out)).toEqual({ msg: '*** and ***', env: { DB_PASSWORD: '***' } });
  });

  it('makeRedactor replaces the longest secret first and ignores secrets under 4 characters', () => {
    const redact = makeRedactor(['abcd', 'abcdef', 'xyz', 'a.b*c']);
    expect(redact('abcdef abcd xyz a.b*c axbxc')).toBe('*** *** xyz *** axbxc');
    expect(makeRedactor([])('anything')).toBe('anything');
  });

  describe('defaults-merge.yaml', () => {
    const c = load('defaults-merge.yaml');

    it('merges restart and stop field by field over defaults', () => {
      expect(group(c, 'a-group').restart).toEqual({
        ...DEFAULT_RESTART,
        policy: 'on-failure',
        initialDelayMs: 2000,
        maxDelayMs: 300_000,
        jitter: 0,
        maxRestarts: 3,
      });
      expect(group(c, 'b-group').restart).toEqual({
        ...DEFAULT_RESTART,
        policy: 'on-failure',
        initialDelayMs: 2000,
        maxDelayMs: 60_000,
        jitter: 0,
        maxRestarts: 3,
      });
      expect(group(c, 'c-group').restart).toEqual({
        policy: 'never',
        initialDelayMs: 2000,
        factor: 3,
        maxDelayMs: 60_000,
        jitter: 0,
        maxRestarts: 3,
        windowMs: 120_000,
        resetAfterMs: 90_000,
        gpuReleaseTimeoutMs: 60_000,
      });
      expect(group(c, 'a-group').stop).toEqual({ signal: 'SIGTERM', graceMs: 20_000 });
      expect(group(c, 'b-group').stop).toEqual({ signal: 'SIGINT', graceMs: 20_000 });
      expect(group(c, 'c-group').stop).toEqual({ signal: 'SIGTERM', graceMs: 1500 });
    });

    it('merges env key by key; command, nodes, port, unsetEnv come from defaults unless set', () => {
      expect(group(c, 'a-group').env).toEqual({ SHARED: 'from-defaults', OVERRIDDEN: 'from-group', OWN: '1' });
      expect(group(c, 'b-group').env).toEqual({ SHARED: 'from-defaults', OVERRIDDEN: 'from-defaults' });
      expect(group(c, 'a-group').argv).toEqual(['serve', '--port', '{port}']);
      expect(group(c, 'b-group').argv).toEqual(['serve', '--port', '{port}']);
      expect(group(c, 'c-group').argv).toEqual(['other']);
      expect(group(c, 'a-group').nodes).toEqual(['b', 'a']);
      expect(group(c, 'b-group').nodes).toEqual(['a']);
      expect(group(c, 'a-group').port).toBe(9000);
      for (const g of c.groups) expect(g.unsetEnv).toEqual(['SLURM_*', 'MY_*']);
    });

    it('takes health whole from defaults or from the group (not merged)', () => {
      expect(group(c, 'a-group').health).toEqual({
        url: 'http://{node}:{port}/health',
        intervalMs: 500,
        timeoutMs: 2000,
        startPeriodMs: 0,
        failureThreshold: 3,
      });
      expect(group(c, 'c-group').health).toEqual({ url: 'http://x/{replica}', intervalMs: 1000, timeoutMs: 250, startPeriodMs: 60_000, failureThreshold: 7 });
    });

    it('resolves nodes: ssh options, paths relative to the file, addresses', () => {
      expect(c.nodes).toEqual([
        { name: 'a', transport: 'local', gpus: 2, address: '10.1.2.3', setup: [], runDir: undefined, ssh: undefined },
        {
          name: 'b',
          transport: 'ssh',
          gpus: 2,
          address: 'b.example',
          setup: [],
          runDir: undefined,
          ssh: {
            host: 'b.example',
            port: 2222,
            user: 'svc',
            identityFile: join(goodDir, 'keys/id_ed25519'),
            knownHosts: join(homedir(), '.ssh/known_hosts'),
            hostKeyCheck: 'accept-new',
            maxSessions: 10,
          },
        },
      ]);
    });

    it('places replicas by preference list with ports base + index', () => {
      expect(c.replicas).toEqual([
        { name: 'a-group-0', group: 'a-group', index: 0, node: 'b', gpuIds: [], port: 9000 },
        { name: 'b-group-0', group: 'b-group', index: 0, node: 'a', gpuIds: [0], port: 9100 },
        { name: 'b-group-1', group: 'b-group', index: 1, node: 'a', gpuIds: [1], port: 9101 },
        { name: 'c-group-0', group: 'c-group', index: 0, node: 'b', gpuIds: [], port: 9200 },
      ]);
    });
  });

  it('durations.yaml: numbers are seconds, strings take units, KILL becomes SIGKILL', () => {
    const c = load('durations.yaml');
    const w = group(c, 'w');
    expect(c.leaseMs).toBe(45_000);
    expect(w.restart).toEqual({ ...DEFAULT_RESTART, initialDelayMs: 250, maxDelayMs: 120_000, windowMs: 3_600_000, resetAfterMs: 1500 });
    expect(w.stop).toEqual({ signal: 'SIGKILL', graceMs: 0 });
    expect(w.health).toEqual({ url: 'http://127.0.0.1/health', intervalMs: 1500, timeoutMs: 100, startPeriodMs: 0, failureThreshold: 3 });
  });

  it('ipv6-head.yaml: bracketed URLs, control-plane settings, a worker may reuse a head port on another node', () => {
    const c = load('ipv6-head.yaml');
    expect(c.headAddress).toBe('fd00::1');
    expect(natsUrl(c)).toBe('nats://[fd00::1]:4333');
    expect(etcdUrl(c)).toBe('http://[fd00::1]:2479');
    expect(c.nats).toEqual({
      enabled: true,
      binary: 'nats-server',
      args: ['--debug'],
      port: 4333,
      monitorPort: 8333,
      jetstream: false,
      workerCredentials: false,
    });
    expect(c.etcd).toEqual({ enabled: true, binary: '/opt/etcd/bin/etcd', args: [], port: 2479, peerPort: 2480, auth: false, tls: false });
    expect(c.nodes.map((n) => [n.name, n.address])).toEqual([
      ['head', 'fd00::1'],
      ['gpu1', 'fd00::2'],
    ]);
    expect(c.replicas).toEqual([
      { name: 'decode-0', group: 'decode', index: 0, node: 'gpu1', gpuIds: [0, 1, 2, 3], port: 4333 },
      { name: 'decode-1', group: 'decode', index: 1, node: 'gpu1', gpuIds: [4, 5, 6, 7], port: 4334 },
      { name: 'decode-2', group: 'decode', index: 2, node: 'head', gpuIds: [0, 1, 2, 3], port: 4335 },
    ]);
  });

  it('bom-crlf.yaml: a BOM and CRLF line endings change nothing', () => {
    const c = load('bom-crlf.yaml');
    expect(c.name).toBe('crlf');
    expect(group(c, 'w').argv).toEqual(['sh', '-c', 'echo hi']);
    expect(group(c, 'w').env).toEqual({ A: 'x y' });
  });

  it('dynsup validate prints ok and exits 0 without creating the state dir', () => {
    const stateDir = join(tmp, 'state');
    const r = spawnSync(process.execPath, [join(root, 'bin/dynsup.js'), 'validate', good('paths with spaces.yaml'), '--state-dir', stateDir], {
      cwd: tmp,
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: ENV.HOME },
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`${good('paths with spaces.yaml')}: ok — cluster spaces: 2 groups, 2 replicas on 1 node(s), 0 GPUs`);
    expect(r.stdout).toMatch(/serve-0\s+local\s+-\s+-/);
    expect(existsSync(stateDir)).toBe(false);
    expect(existsSync(join(goodDir, 'state dir'))).toBe(false);
  });
});
