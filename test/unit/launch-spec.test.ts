import { describe, expect, it } from 'vitest';
import { loadCluster } from '../../src/config/load.js';
import type { ClusterConfig, ReplicaPlan, WorkerGroup } from '../../src/config/types.js';
import { buildLaunchSpec, expandPlaceholders, workerEnv } from '../../src/supervise/launch-spec.js';
import { etcdUrl, natsUrl } from '../../src/controlplane/urls.js';
import { matchesPattern } from '../../src/util/glob.js';

const cluster = (over: Partial<ClusterConfig> = {}): ClusterConfig => ({
  file: '/c/cluster.yaml',
  name: 'demo',
  headAddress: '10.0.0.1',
  stateDir: '/c/.dynsup/demo',
  leaseMs: 30_000,
  nats: { enabled: true, binary: 'nats-server', args: [], port: 4222, monitorPort: 8222, jetstream: true },
  etcd: { enabled: true, binary: 'etcd', args: [], port: 2379, peerPort: 2380 },
  nodes: [],
  groups: [],
  replicas: [],
  secrets: [],
  ...over,
});
const group = (over: Partial<WorkerGroup> = {}): WorkerGroup => ({
  name: 'decode',
  argv: ['serve'],
  replicas: 2,
  gpus: 0,
  nodes: [],
  env: {},
  restart: { policy: 'always', initialDelayMs: 1000, factor: 2, maxDelayMs: 30_000, jitter: 0.1, maxRestarts: 5, windowMs: 60_000, resetAfterMs: 30_000 },
  stop: { signal: 'SIGTERM', graceMs: 10_000 },
  dependsOn: [],
  unsetEnv: ['SLURM_*', 'PMI_*', 'PMIX_*'],
  ...over,
});
const replica = (over: Partial<ReplicaPlan> = {}): ReplicaPlan => ({ name: 'decode-1', group: 'decode', index: 1, node: 'gpu7', gpuIds: [], ...over });

describe('workerEnv', () => {
  it('is exactly the contract for a GPU-less replica without a port', () => {
    expect(workerEnv(cluster(), group(), replica())).toEqual({
      NATS_SERVER: 'nats://10.0.0.1:4222',
      ETCD_ENDPOINTS: 'http://10.0.0.1:2379',
      CUDA_DEVICE_ORDER: 'PCI_BUS_ID',
      DYNSUP_CLUSTER: 'demo',
      DYNSUP_WORKER: 'decode-1',
      DYNSUP_GROUP: 'decode',
      DYNSUP_REPLICA_INDEX: '1',
      DYNSUP_NODE: 'gpu7',
      CUDA_VISIBLE_DEVICES: '',
    });
  });

  it('with controlPlane.etcd.tls: an https endpoint, the PEMs as Dynamo reads them, and the CA as a file on the node', () => {
    const c = cluster({ etcd: { ...cluster().etcd, tls: true } });
    const etcdTls = { ca: 'CA PEM', clientCert: 'CERT PEM', clientKey: 'KEY PEM' };
    const spec = buildLaunchSpec(c, group({ env: { ETCD_AUTH_CA: '/mine.pem' } }), replica(), undefined, { etcdTls });
    expect(spec.env).toMatchObject({
      ETCD_ENDPOINTS: 'https://10.0.0.1:2379',
      ETCD_AUTH_CA: 'CA PEM',
      ETCD_AUTH_CLIENT_CERT: 'CERT PEM',
      ETCD_AUTH_CLIENT_KEY: 'KEY PEM',
    });
    expect(spec.files).toEqual({ DYNSUP_ETCD_CA_FILE: 'CA PEM' });
    // Without TLS the spec has no files field at all: its hash (adoption) is what it was.
    expect(Object.hasOwn(buildLaunchSpec(cluster(), group(), replica()), 'files')).toBe(false);
  });

  it('sets CUDA_VISIBLE_DEVICES to the placed GPU ids and DYNSUP_PORT to the replica port', () => {
    const env = workerEnv(cluster(), group(), replica({ gpuIds: [2, 3], port: 9301 }));
    expect(env['CUDA_VISIBLE_DEVICES']).toBe('2,3');
    expect(env['DYNSUP_PORT']).toBe('9301');
  });

  it('CUDA_VISIBLE_DEVICES is present and empty (not absent) without GPUs: unset would mean all GPUs', () => {
    const env = workerEnv(cluster(), group(), replica({ gpuIds: [] }));
    expect(Object.hasOwn(env, 'CUDA_VISIBLE_DEVICES')).toBe(true);
    expect(env['CUDA_VISIBLE_DEVICES']).toBe('');
  });

  it('uses the control-plane ports of the cluster', () => {
    const c = cluster({ nats: { ...cluster().nats, port: 14222 }, etcd: { ...cluster().etcd, port: 12379 } });
    expect(workerEnv(c, group(), replica())).toMatchObject({ NATS_SERVER: 'nats://10.0.0.1:14222', ETCD_ENDPOINTS: 'http://10.0.0.1:12379' });
  });

  it('passes the file env through, expanding placeholders, values untouched otherwise', () => {
    const env = workerEnv(
      cluster(),
      group({ env: { URL: 'http://{node}:{port}/x', WHO: '{replica}/{group}/{index}/{gpus}', RAW: "$(id) '; rm -rf ~ # {nope}", EMPTY: '' } }),
      replica({ port: 9001, gpuIds: [4, 5] }),
    );
    expect(env).toMatchObject({ URL: 'http://gpu7:9001/x', WHO: 'decode-1/decode/1/4,5', RAW: "$(id) '; rm -rf ~ # {nope}", EMPTY: '' });
  });

  it('a file env cannot override the DYNSUP_* variables or CUDA_VISIBLE_DEVICES', () => {
    const hostile = {
      DYNSUP_CLUSTER: 'x',
      DYNSUP_WORKER: 'x',
      DYNSUP_GROUP: 'x',
      DYNSUP_REPLICA_INDEX: '99',
      DYNSUP_NODE: 'x',
      CUDA_VISIBLE_DEVICES: '0,1,2,3,4,5,6,7',
    };
    const env = workerEnv(cluster(), group({ env: hostile }), replica({ gpuIds: [3], port: 9001 }));
    expect(env).toMatchObject({
      DYNSUP_CLUSTER: 'demo',
      DYNSUP_WORKER: 'decode-1',
      DYNSUP_GROUP: 'decode',
      DYNSUP_REPLICA_INDEX: '1',
      DYNSUP_NODE: 'gpu7',
      CUDA_VISIBLE_DEVICES: '3',
    });
  });

  it('a file env cannot override DYNSUP_PORT either (the placement decides it)', () => {
    // BUG (launch-spec.ts OWNED): DYNSUP_PORT is set before the file env is copied and is not in OWNED,
    // so `env: { DYNSUP_PORT: 1234 }` replaces the placed port (and breaks the port-clash check's guarantee).
    const env = workerEnv(cluster(), group({ env: { DYNSUP_PORT: '1234' } }), replica({ port: 9001 }));
    expect(env['DYNSUP_PORT']).toBe('9001');
  });
});

describe('URLs for the head address', () => {
  it.each([
    ['10.0.0.1', 'nats://10.0.0.1:4222', 'http://10.0.0.1:2379'],
    ['head.example.com', 'nats://head.example.com:4222', 'http://head.example.com:2379'],
    ['fd00::1', 'nats://[fd00::1]:4222', 'http://[fd00::1]:2379'],
    ['::1', 'nats://[::1]:4222', 'http://[::1]:2379'],
    ['[fd00::1]', 'nats://[fd00::1]:4222', 'http://[fd00::1]:2379'],
  ])('%s', (address, nats, etcd) => {
    const c = cluster({ headAddress: address });
    expect(natsUrl(c)).toBe(nats);
    expect(etcdUrl(c)).toBe(etcd);
    expect(workerEnv(c, group(), replica())).toMatchObject({ NATS_SERVER: nats, ETCD_ENDPOINTS: etcd });
  });

  it('an IPv6 head address from a cluster file is bracketed', () => {
    const c = loadCluster('/tmp/v6.yaml', {
      env: {},
      content: Buffer.from('name: v6\nhead:\n  address: "::1"\nnodes: { n: {} }\nworkers: { w: { command: [x] } }\n'),
    });
    const spec = buildLaunchSpec(c, c.groups[0]!, c.replicas[0]!);
    expect(spec.env['NATS_SERVER']).toBe('nats://[::1]:4222');
    expect(spec.env['ETCD_ENDPOINTS']).toBe('http://[::1]:2379');
  });
});

describe('expandPlaceholders', () => {
  const r = replica({ port: 8001, gpuIds: [0, 6] });
  it('replaces every known placeholder, every time it occurs', () => {
    expect(expandPlaceholders('{port} {index} {replica} {node} {group} {gpus} {port}', r)).toBe('8001 1 decode-1 gpu7 decode 0,6 8001');
  });
  it('leaves unknown placeholders, {port} without a port, and near misses alone', () => {
    expect(expandPlaceholders('{unknown} {PORT} { port } {{port}} $port', r)).toBe('{unknown} {PORT} { port } {8001} $port');
    expect(expandPlaceholders('--port={port}', replica())).toBe('--port={port}');
  });
  it('does not expand again what it inserted', () => {
    const weird = replica({ node: '{port}', name: '{index}' });
    expect(expandPlaceholders('{node}/{replica}', { ...weird, port: 1 })).toBe('{port}/{index}');
  });
});

describe('buildLaunchSpec', () => {
  it('expands placeholders in argv, env and cwd, and carries stop settings', () => {
    const g = group({
      argv: ['sh', '-c', 'serve --port {port} --name "{replica}"', '{gpus}'],
      env: { LOG: '/logs/{replica}.log' },
      cwd: '/work dir/{group}/{index}',
      stop: { signal: 'SIGINT', graceMs: 1500 },
      unsetEnv: ['SLURM_*'],
    });
    const spec = buildLaunchSpec(cluster(), g, replica({ port: 9001, gpuIds: [2, 3] }));
    expect(spec).toEqual({
      argv: ['sh', '-c', 'serve --port 9001 --name "decode-1"', '2,3'],
      env: {
        NATS_SERVER: 'nats://10.0.0.1:4222',
        ETCD_ENDPOINTS: 'http://10.0.0.1:2379',
        CUDA_DEVICE_ORDER: 'PCI_BUS_ID',
        DYNSUP_PORT: '9001',
        LOG: '/logs/decode-1.log',
        DYNSUP_CLUSTER: 'demo',
        DYNSUP_WORKER: 'decode-1',
        DYNSUP_GROUP: 'decode',
        DYNSUP_REPLICA_INDEX: '1',
        DYNSUP_NODE: 'gpu7',
        CUDA_VISIBLE_DEVICES: '2,3',
      },
      unsetEnv: ['SLURM_*'],
      cwd: '/work dir/decode/1',
      graceMs: 1500,
      stopSignal: 'SIGINT',
      restart: g.restart,
      // A GPU replica: its agent waits for the last run's processes to leave these GPUs before a restart.
      gpuRelease: { gpus: [2, 3], timeoutMs: 60_000 },
    });
  });

  it('leaves cwd out when the group has none, and carries the grace in ms', () => {
    const spec = buildLaunchSpec(cluster(), group({ stop: { signal: 'SIGTERM', graceMs: 0 } }), replica());
    expect('cwd' in spec).toBe(false);
    expect(spec.graceMs).toBe(0);
    expect(buildLaunchSpec(cluster(), group({ stop: { signal: 'SIGTERM', graceMs: 10_001 } }), replica()).graceMs).toBe(10_001);
  });

  it('does not modify the group', () => {
    const g = group({ argv: ['{port}'], env: { A: '{port}' } });
    buildLaunchSpec(cluster(), g, replica({ port: 1 }));
    expect(g.argv).toEqual(['{port}']);
    expect(g.env).toEqual({ A: '{port}' });
  });
});

describe('matchesPattern', () => {
  it.each([
    ['SLURM_JOB_ID', 'SLURM_*', true],
    ['SLURM_', 'SLURM_*', true],
    ['XSLURM_JOB', 'SLURM_*', false],
    ['SLURM', 'SLURM_*', false],
    ['PMI_RANK', 'PMI_*', true],
    ['PMIX_RANK', 'PMI_*', false],
    ['A1', 'A?', true],
    ['A12', 'A?', false],
    ['HOME', 'HOME', true],
    ['HOMEX', 'HOME', false],
    ['ANYTHING', '*', true],
    ['A_B', 'A.B', false],
    ['AxB', 'A.B', false],
    ['A$', 'A$', true],
  ])('%s ~ %s → %s', (name, pattern, want) => {
    expect(matchesPattern(name, pattern)).toBe(want);
  });
});

describe('named ports and hooks', () => {
  const r = replica({ port: 9301, ports: { system: 9091, kv: 20081 } });
  const gr = group({ port: 9300, ports: { system: 9090, kv: 20080 }, env: { KV: '{ports.kv}', DYNSUP_PORT_KV: '1' } });

  it('DYNSUP_PORT_<NAME> per named port (a file env cannot override it), {ports.name} in env and argv', () => {
    const env = workerEnv(cluster(), gr, r);
    expect(env).toMatchObject({ DYNSUP_PORT: '9301', DYNSUP_PORT_SYSTEM: '9091', DYNSUP_PORT_KV: '20081', KV: '20081' });
    expect(buildLaunchSpec(cluster(), { ...gr, argv: ['serve', '--system-port={ports.system}', '--x={ports.nope}'] }, r).argv).toEqual([
      'serve',
      '--system-port=9091',
      '--x={ports.nope}',
    ]);
  });

  it('hooks are in the spec, placeholders expanded, only when set (a spec without them hashes as before)', () => {
    const spec = buildLaunchSpec(cluster(), group({ hooks: { preStart: 'rm -f /dev/shm/moe_{replica}_*', postStop: undefined } }), replica());
    expect(spec.preStart).toBe('rm -f /dev/shm/moe_decode-1_*');
    expect('postStop' in spec).toBe(false);
    expect('preStart' in buildLaunchSpec(cluster(), group(), replica())).toBe(false);
  });
});
