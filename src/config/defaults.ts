/**
 * The default of every cluster-file field that has one, written as a user would write it in the file.
 * The one copy: resolution (resolve-*.ts) fills missing fields from here, the schema (schema.ts) shows
 * them in its descriptions and as JSON Schema `default`s, and a unit test checks the README's reference
 * tables against them (test/unit/defaults.test.ts), so a default changes in one place.
 */
export const DEFAULTS = {
  lease: '30s',
  controlPlane: {
    nats: { enabled: true, binary: 'nats-server', port: 4222, monitorPort: 8222, jetstream: true, workerCredentials: false },
    etcd: { enabled: true, binary: 'etcd', port: 2379, peerPort: 2380, auth: false, tls: false },
  },
  metrics: { enabled: true, port: 9464, gpuInterval: '5s' },
  ui: { enabled: true },
  logs: { maxSize: '100MiB', keep: 5 },
  node: { transport: 'local', gpus: 0, port: 22, knownHosts: '~/.ssh/known_hosts', hostKeyCheck: 'strict', maxSessions: 10 },
  worker: {
    replicas: 1,
    gpus: 0,
    nodesPerReplica: 1,
    rollout: { maxUnavailable: 1 },
    restart: {
      policy: 'always',
      initialDelay: '1s',
      factor: 2,
      maxDelay: '30s',
      jitter: 0.1,
      maxRestarts: 5,
      window: '60s',
      resetAfter: '30s',
      gpuReleaseTimeout: '60s',
    },
    stop: { signal: 'SIGTERM', grace: '10s' },
    health: { interval: '1s', timeout: '2s', startPeriod: 0, failureThreshold: 3 },
  },
  slurm: { exclusive: true },
} as const;
