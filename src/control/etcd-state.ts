/**
 * Cluster state in etcd, under dynsup/<cluster>/: every replica's status, updated on each transition,
 * and a leader key held with a lease, so a second supervisor for the same cluster is refused and a dead
 * one's claim expires by itself.
 */
import { hostname } from 'node:os';
import { Etcd3, type Lease } from 'etcd3';
import type { ReplicaStatus } from '../supervise/replica.js';
import { DynsupError, errorMessage } from '../util/errors.js';
import { pidAlive } from './runtime-files.js';

export interface LeaderInfo {
  readonly pid: number;
  readonly host: string;
  readonly startedAt: number;
}

export const LEADER_TTL_SECONDS = 10;

export const keys = (cluster: string) => ({
  leader: `dynsup/${cluster}/supervisor`,
  replicas: `dynsup/${cluster}/replicas/`,
  replica: (name: string) => `dynsup/${cluster}/replicas/${name}`,
});

export class EtcdState {
  readonly #client: Etcd3;
  readonly #cluster: string;
  #lease: Lease | undefined;
  readonly #dirty = new Map<string, ReplicaStatus>();
  #writing = false;
  #closed = false;
  #onError: (msg: string) => void;

  constructor(endpoint: string, cluster: string, onError: (msg: string) => void = () => undefined) {
    this.#client = new Etcd3({ hosts: endpoint, dialTimeout: 3000 });
    this.#cluster = cluster;
    this.#onError = onError;
  }

  /** Take the leader key, or throw E_ALREADY_RUNNING naming the supervisor that holds it. */
  async acquireLeader(timeoutMs = (LEADER_TTL_SECONDS + 5) * 1000): Promise<void> {
    const k = keys(this.#cluster).leader;
    const me: LeaderInfo = { pid: process.pid, host: hostname(), startedAt: Date.now() };
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lease = this.#client.lease(LEADER_TTL_SECONDS, { autoKeepAlive: true });
      const id = await lease.grant();
      const res = await this.#client
        .if(k, 'Create', '==', 0)
        .then(this.#client.put(k).value(JSON.stringify(me)).lease(id))
        .else(this.#client.get(k))
        .commit();
      if (res.succeeded) {
        this.#lease = lease;
        lease.on('lost', () => void this.#reclaim(me));
        return;
      }
      await lease.revoke().catch(() => undefined);
      const kv = res.responses[0]?.response_range?.kvs[0];
      const held = kv ? (JSON.parse(kv.value.toString()) as LeaderInfo) : null;
      // A supervisor on this host that is gone: its claim is stale, take over now.
      if (held && held.host === hostname() && !pidAlive(held.pid)) {
        await this.#client.delete().key(k);
        continue;
      }
      if (!held || Date.now() > deadline) {
        throw new DynsupError(
          'E_ALREADY_RUNNING',
          `cluster ${this.#cluster} is already supervised by pid ${held?.pid} on ${held?.host} (since ${held ? new Date(held.startedAt).toISOString() : '?'})`,
        );
      }
      // Another host: wait for its lease to run out (it may have just died) before giving up.
      if (held.host !== hostname()) {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      throw new DynsupError('E_ALREADY_RUNNING', `cluster ${this.#cluster} is already supervised by pid ${held.pid} on ${held.host}`);
    }
  }

  /** The lease was lost (etcd down longer than the TTL): claim again once etcd is back. */
  async #reclaim(me: LeaderInfo): Promise<void> {
    while (!this.#closed) {
      try {
        const lease = this.#client.lease(LEADER_TTL_SECONDS, { autoKeepAlive: true });
        await lease.put(keys(this.#cluster).leader).value(JSON.stringify(me));
        this.#lease = lease;
        lease.on('lost', () => void this.#reclaim(me));
        for (const s of this.#last.values()) this.#dirty.set(s.name, s);
        void this.#flush();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  readonly #last = new Map<string, ReplicaStatus>();

  /** Record a replica's status (coalesced: only the latest state of each replica is written). */
  record(status: ReplicaStatus): void {
    this.#last.set(status.name, status);
    this.#dirty.set(status.name, status);
    void this.#flush();
  }

  async #flush(): Promise<void> {
    if (this.#writing || this.#closed) return;
    this.#writing = true;
    try {
      while (this.#dirty.size) {
        const batch = [...this.#dirty.values()];
        this.#dirty.clear();
        await Promise.all(batch.map((s) => this.#client.put(keys(this.#cluster).replica(s.name)).value(JSON.stringify(s))));
      }
    } catch (err) {
      this.#onError(`etcd: cannot record state: ${errorMessage(err)}`);
    } finally {
      this.#writing = false;
    }
  }

  async forget(name: string): Promise<void> {
    this.#last.delete(name);
    await this.#client.delete().key(keys(this.#cluster).replica(name)).catch(() => undefined);
  }

  async close(opts: { release: boolean }): Promise<void> {
    await this.#flush();
    this.#closed = true;
    if (opts.release) await this.#lease?.revoke().catch(() => undefined);
    else this.#lease?.release();
    this.#client.close();
  }
}

/** Read what etcd knows about a cluster (for `status` when the supervisor is gone). */
export async function readClusterState(endpoint: string, cluster: string, timeoutMs = 3000): Promise<{ leader: LeaderInfo | null; replicas: ReplicaStatus[] } | null> {
  const client = new Etcd3({ hosts: endpoint, dialTimeout: timeoutMs });
  try {
    const work = (async () => {
      const leader = await client.get(keys(cluster).leader).string();
      const all = await client.getAll().prefix(keys(cluster).replicas).strings();
      return {
        leader: leader ? (JSON.parse(leader) as LeaderInfo) : null,
        replicas: Object.values(all).map((v) => JSON.parse(v) as ReplicaStatus),
      };
    })();
    return await Promise.race([work, new Promise<null>((r) => setTimeout(() => r(null), timeoutMs))]);
  } catch {
    return null;
  } finally {
    client.close();
  }
}
