/**
 * One source for each default (src/config/defaults.ts): resolution fills fields from it and the schema's
 * descriptions quote it; the README's reference tables are written by hand, so this checks each default
 * they show against it. A default changed in defaults.ts fails here until the README says the same.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadCluster } from '../../src/config/load.js';
import { DEFAULTS } from '../../src/config/defaults.js';
import { parseDuration } from '../../src/config/duration.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');

/** The default cell of the README table row whose key cell is `key`, backticks removed. */
function readmeDefault(key: string): string {
  const rows = readme.split('\n').filter((l) => l.startsWith(`| ${key} |`));
  expect(rows, `README rows for ${key}`).toHaveLength(1);
  return rows[0]!.split(' | ')[1]!.replace(/`/g, '').trim();
}

const { controlPlane: cp, worker: w, node: n } = DEFAULTS;
const ROWS: [key: string, shown: string][] = [
  ['`lease`', DEFAULTS.lease],
  ['`controlPlane.nats.port` / `monitorPort`', `${cp.nats.port} / ${cp.nats.monitorPort}`],
  ['`controlPlane.nats.jetstream`', `${cp.nats.jetstream}`],
  ['`controlPlane.etcd.port` / `peerPort`', `${cp.etcd.port} / ${cp.etcd.peerPort}`],
  ['`controlPlane.nats.workerCredentials`', `${cp.nats.workerCredentials}`],
  ['`controlPlane.etcd.auth`', `${cp.etcd.auth}`],
  ['`controlPlane.etcd.tls`', `${cp.etcd.tls}`],
  ['`metrics.port` / `metrics.enabled`', `${DEFAULTS.metrics.port} / ${DEFAULTS.metrics.enabled}`],
  ['`metrics.gpuInterval`', DEFAULTS.metrics.gpuInterval],
  ['`ui.enabled`', `${DEFAULTS.ui.enabled}`],
  ['`logs.maxSize` / `logs.keep`', `${DEFAULTS.logs.maxSize} / ${DEFAULTS.logs.keep}`],
  ['`nodes.<name>.transport`', n.transport],
  ['`nodes.<name>.gpus`', `${n.gpus}`],
  ['`nodes.<name>.host`, `port`, `user`, `identityFile`, `knownHosts`, `hostKeyCheck`', `—, ${n.port}, you, agent, ${n.knownHosts}, ${n.hostKeyCheck}`],
  ['`replicas`', `${w.replicas}`],
  ['`gpus`', `${w.gpus}`],
  ['`nodesPerReplica`', `${w.nodesPerReplica}`],
  ['`rollout.maxUnavailable`', `${w.rollout.maxUnavailable}`],
  ['`restart.policy`', w.restart.policy],
  ['`restart.initialDelay`, `factor`, `maxDelay`, `jitter`', `${w.restart.initialDelay}, ${w.restart.factor}, ${w.restart.maxDelay}, ${w.restart.jitter}`],
  ['`restart.maxRestarts`, `window`', `${w.restart.maxRestarts}, ${w.restart.window}`],
  ['`restart.resetAfter`', w.restart.resetAfter],
  ['`restart.gpuReleaseTimeout`', w.restart.gpuReleaseTimeout],
  ['`stop.signal`, `stop.grace`', `${w.stop.signal}, ${w.stop.grace}`],
  [
    '`health.interval`, `timeout`, `startPeriod`, `failureThreshold`',
    `${w.health.interval}, ${w.health.timeout}, ${w.health.startPeriod}, ${w.health.failureThreshold}`,
  ],
  ['`exclusive`', `${DEFAULTS.slurm.exclusive}`],
];

describe('defaults', () => {
  it.each(ROWS)('README row %s shows the default of defaults.ts', (key, shown) => {
    expect(readmeDefault(key)).toBe(shown);
  });

  it('a file that sets nothing optional resolves to DEFAULTS', () => {
    const file = join(root, 'test/fixtures/good/minimal.yaml');
    const c = loadCluster(file, { env: { HOME: '/home/dynsup-test', USER: 'test' }, checkLocalPaths: false });
    const g = c.groups[0]!;
    expect(c.leaseMs).toBe(parseDuration(DEFAULTS.lease));
    expect({ nats: c.nats.port, monitor: c.nats.monitorPort, etcd: c.etcd.port, peer: c.etcd.peerPort, metrics: c.metrics.port }).toEqual({
      nats: cp.nats.port,
      monitor: cp.nats.monitorPort,
      etcd: cp.etcd.port,
      peer: cp.etcd.peerPort,
      metrics: DEFAULTS.metrics.port,
    });
    expect(g.restart).toMatchObject({
      policy: w.restart.policy,
      initialDelayMs: parseDuration(w.restart.initialDelay),
      maxDelayMs: parseDuration(w.restart.maxDelay),
      factor: w.restart.factor,
      jitter: w.restart.jitter,
      maxRestarts: w.restart.maxRestarts,
      windowMs: parseDuration(w.restart.window),
      resetAfterMs: parseDuration(w.restart.resetAfter),
      gpuReleaseTimeoutMs: parseDuration(w.restart.gpuReleaseTimeout),
    });
    expect(g.stop).toEqual({ signal: w.stop.signal, graceMs: parseDuration(w.stop.grace) });
    expect({ replicas: g.replicas, gpus: g.gpus, nodesPerReplica: g.nodesPerReplica, maxUnavailable: g.rollout.maxUnavailable }).toEqual({
      replicas: w.replicas,
      gpus: w.gpus,
      nodesPerReplica: w.nodesPerReplica,
      maxUnavailable: w.rollout.maxUnavailable,
    });
  });
});
