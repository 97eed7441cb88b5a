/**
 * Where clients reach the control plane dynsup runs: the NATS and etcd URLs on the head. Here, next to the
 * services, rather than in the launch spec, so that the control plane does not depend on supervise/ (which
 * depends on it).
 */
import type { ClusterConfig } from '../config/types.js';

export function natsUrl(cluster: ClusterConfig, auth?: { user: string; password: string }): string {
  const who = auth ? `${encodeURIComponent(auth.user)}:${encodeURIComponent(auth.password)}@` : '';
  return `nats://${who}${hostPort(cluster.headAddress, cluster.nats.port)}`;
}
/** https with controlPlane.etcd.tls: etcd then serves nothing in clear. */
export function etcdUrl(cluster: ClusterConfig): string {
  return `${cluster.etcd.tls ? 'https' : 'http'}://${hostPort(cluster.headAddress, cluster.etcd.port)}`;
}
function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}
