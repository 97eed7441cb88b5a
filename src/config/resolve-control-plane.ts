/**
 * Resolution step: the services dynsup runs on the head (NATS, etcd), its metrics server and web view,
 * and its own log rotation, filled from DEFAULTS.
 */
import { DEFAULTS } from './defaults.js';
import type { Resolution } from './resolve-context.js';
import type { ClusterConfig } from './types.js';

export type HeadServices = Pick<ClusterConfig, 'nats' | 'etcd' | 'metrics' | 'ui' | 'logs'>;

export function resolveHeadServices(r: Resolution): HeadServices {
  const { raw } = r;
  const controlPlane = raw.controlPlane ?? {};
  const NATS = DEFAULTS.controlPlane.nats;
  const ETCD = DEFAULTS.controlPlane.etcd;
  return {
    nats: {
      enabled: controlPlane.nats?.enabled ?? NATS.enabled,
      binary: controlPlane.nats?.binary ?? NATS.binary,
      args: controlPlane.nats?.args ?? [],
      port: controlPlane.nats?.port ?? NATS.port,
      monitorPort: controlPlane.nats?.monitorPort ?? NATS.monitorPort,
      jetstream: controlPlane.nats?.jetstream ?? NATS.jetstream,
      workerCredentials: controlPlane.nats?.workerCredentials ?? NATS.workerCredentials,
    },
    etcd: {
      enabled: controlPlane.etcd?.enabled ?? ETCD.enabled,
      binary: controlPlane.etcd?.binary ?? ETCD.binary,
      args: controlPlane.etcd?.args ?? [],
      port: controlPlane.etcd?.port ?? ETCD.port,
      peerPort: controlPlane.etcd?.peerPort ?? ETCD.peerPort,
      auth: controlPlane.etcd?.auth ?? ETCD.auth,
      tls: etcdTls(r),
    },
    metrics: {
      enabled: raw.metrics?.enabled ?? DEFAULTS.metrics.enabled,
      port: raw.metrics?.port ?? DEFAULTS.metrics.port,
      gpuIntervalMs: r.durationMs(raw.metrics?.gpuInterval, DEFAULTS.metrics.gpuInterval),
    },
    ui: { enabled: raw.ui?.enabled ?? DEFAULTS.ui.enabled },
    logs: { maxBytes: parseSize(raw.logs?.maxSize ?? DEFAULTS.logs.maxSize), keep: raw.logs?.keep ?? DEFAULTS.logs.keep },
  };
}

/**
 * controlPlane.etcd.tls: only for the etcd dynsup starts (its CA is made here); an etcd of your own has its
 * own certificates, and nothing would use this one's.
 */
function etcdTls(r: Resolution): boolean {
  const etcd = r.raw.controlPlane?.etcd;
  const tls = etcd?.tls ?? DEFAULTS.controlPlane.etcd.tls;
  if (tls && etcd?.enabled === false) {
    r.add(
      ['controlPlane', 'etcd', 'tls'],
      'tls is for the etcd dynsup starts (controlPlane.etcd.enabled is false here): dynsup does not connect to an etcd of your own over TLS',
    );
  }
  return tls;
}

const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40 };

/** `100MB`, `1GiB`, `4096` → bytes (the schema has checked the form). */
export function parseSize(v: number | string): number {
  if (typeof v === 'number') return v;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v)!;
  return Math.round(Number(m[1]) * (SIZE_UNITS[(m[2] || 'b').toLowerCase()] ?? 1));
}
