/**
 * Cluster state in etcd, under dynsup/<cluster>/: every replica's status, updated on each transition,
 * and a leader key held with a lease, so a second supervisor for the same cluster is refused and a dead
 * one's claim expires by itself. A leader key counts only while its lease is alive: one put without a
 * lease (by hand, or by anyone on the network when etcd runs without controlPlane.etcd.auth) or with a
 * lease that is gone is stale and taken over. While supervising, the key is watched: someone overwriting
 * or deleting it is logged as an error and the claim put back.
 */
import { hostname } from 'node:os';
import { Etcd3, type IKeyValue, type Lease, type Watcher } from 'etcd3';
import type { EtcdAccess } from '../controlplane/etcd-auth.js';
import { caCredentials } from '../controlplane/etcd-tls.js';
import type { ReplicaStatus } from '../supervise/replica.js';
import { DynsupError, errorMessage } from '../util/errors.js';
import { escapeTerminal } from '../util/terminal-escape.js';
import { pidAlive } from '../util/process.js';

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
  readonly #authenticated: boolean;
  #lease: Lease | undefined;
  /** The id of the lease our leader key is put with ('' while none). */
  #leaseId = '';
  #me: LeaderInfo | undefined;
  #watcher: Watcher | undefined;
  readonly #dirty = new Map<string, ReplicaStatus>();
  #writing = false;
  #closed = false;
  #onError: (msg: string) => void;

  constructor(access: EtcdAccess, cluster: string, onError: (msg: string) => void = () => undefined) {
    this.#client = etcdClient(access, 3000);
    this.#authenticated = Boolean(access.auth);
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
        this.#leaseId = id;
        this.#me = me;
        lease.on('lost', () => void this.#reclaim(me));
        await this.#watch();
        return;
      }
      await lease.revoke().catch(() => undefined);
      const kv = res.responses[0]?.response_range?.kvs[0];
      if (!kv) continue; // gone in between
      const held = parseLeader(kv.value);
      // Only a key with a live lease is a supervisor's claim; anything else is stale: take over.
      const stale = await this.#staleness(kv);
      const gone = held && held.host === hostname() && !pidAlive(held.pid) ? `pid ${held.pid} on this host is gone` : undefined;
      if (stale || gone) {
        this.#onError(`etcd: taking over the stale leader key ${k} (${stale ?? gone}; it named ${describeLeader(held)})`);
        // Only the key as read: a claim made since is left alone (and seen on the next round).
        await this.#client.if(k, 'Mod', '==', kv.mod_revision).then(this.#client.delete().key(k)).commit();
        continue;
      }
      if (!held || Date.now() > deadline) {
        throw new DynsupError(
          'E_ALREADY_RUNNING',
          `cluster ${this.#cluster} is already supervised by ${describeLeader(held)}${held ? ` (since ${new Date(held.startedAt).toISOString()})` : ''}`,
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

  /** Why the leader key `kv` is no supervisor's claim (no lease, or one that is gone), or undefined if its lease is alive. */
  async #staleness(kv: IKeyValue): Promise<string | undefined> {
    if (!kv.lease || kv.lease === '0') return 'it has no lease';
    try {
      const ttl = await this.#client.leaseClient.leaseTimeToLive({ ID: kv.lease });
      return Number(ttl.TTL) > 0 ? undefined : `its lease ${kv.lease} has expired`;
    } catch (err) {
      // etcd answers TTL -1 for a lease it does not know; an error here is etcd's, not the key's.
      this.#onError(`etcd: cannot check the lease of ${keys(this.#cluster).leader}: ${errorMessage(err)}`);
      return undefined;
    }
  }

  /** Watch our leader key: a put with another lease, or a delete, is not ours: say so, and put the claim back. */
  async #watch(): Promise<void> {
    const k = keys(this.#cluster).leader;
    const w = await this.#client.watch().key(k).create();
    this.#watcher = w;
    const foreign = (what: string) => {
      if (this.#closed || !this.#leaseId || !this.#me) return;
      const who = this.#authenticated ? 'by a holder of the root password' : '(etcd runs without controlPlane.etcd.auth: anyone who can reach it can write)';
      this.#onError(`etcd: the leader key ${k} was ${what}, not by this supervisor ${who}: putting the claim back`);
      void this.#client
        .put(k)
        .value(JSON.stringify(this.#me))
        .lease(this.#leaseId)
        .catch((err: unknown) => this.#onError(`etcd: cannot put back the leader key ${k}: ${errorMessage(err)}`));
    };
    w.on('put', (kv: IKeyValue) => {
      if (kv.lease !== this.#leaseId) foreign(`overwritten (now ${describeLeader(parseLeader(kv.value))}, lease ${kv.lease || '0'})`);
    });
    w.on('delete', () => {
      // Our lease running out (etcd unreachable longer than the TTL) deletes the key too: #reclaim's business.
      const id = this.#leaseId;
      void this.#client.leaseClient.leaseTimeToLive({ ID: id }).then(
        (r) => {
          if (Number(r.TTL) > 0 && id === this.#leaseId) foreign('deleted');
        },
        () => undefined,
      );
    });
    w.on('error', () => undefined); // the client reconnects the watch by itself
  }

  /** The lease was lost (etcd down longer than the TTL): claim again once etcd is back. */
  async #reclaim(me: LeaderInfo): Promise<void> {
    this.#leaseId = '';
    while (!this.#closed) {
      try {
        const lease = this.#client.lease(LEADER_TTL_SECONDS, { autoKeepAlive: true });
        const id = await lease.grant();
        this.#leaseId = id;
        await this.#client.put(keys(this.#cluster).leader).value(JSON.stringify(me)).lease(id);
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
    await this.#client
      .delete()
      .key(keys(this.#cluster).replica(name))
      .catch(() => undefined);
  }

  async close(opts: { release: boolean }): Promise<void> {
    await this.#flush();
    this.#closed = true;
    await this.#watcher?.cancel().catch(() => undefined);
    if (opts.release) await this.#lease?.revoke().catch(() => undefined);
    else this.#lease?.release();
    this.#client.close();
  }
}

function parseLeader(value: Buffer): LeaderInfo | null {
  try {
    const v = JSON.parse(value.toString()) as Partial<LeaderInfo> | null;
    return v && typeof v.pid === 'number' && typeof v.host === 'string' ? { pid: v.pid, host: v.host, startedAt: Number(v.startedAt) || 0 } : null;
  } catch {
    return null;
  }
}

function describeLeader(l: LeaderInfo | null): string {
  return l ? `pid ${l.pid} on ${escapeTerminal(l.host)}` : "a value that is no supervisor's";
}

function etcdClient(access: EtcdAccess, dialTimeout: number): Etcd3 {
  return new Etcd3({ hosts: access.endpoint, dialTimeout, ...caCredentials(access.ca), ...(access.auth ? { auth: access.auth } : {}) });
}

/** What etcd knows of a cluster (for `status` when the supervisor does not answer). */
export interface ClusterSnapshot {
  /** The leader key's value, and whether its lease is alive (a supervisor's live claim). */
  readonly leader: (LeaderInfo & { readonly leased: boolean }) | null;
  readonly replicas: ReplicaStatus[];
}

/** Read what etcd knows about a cluster; null when etcd cannot be read (down, or refusing these credentials). */
export async function readClusterState(access: EtcdAccess, cluster: string, timeoutMs = 3000): Promise<ClusterSnapshot | null> {
  const client = etcdClient(access, timeoutMs);
  try {
    const work = (async (): Promise<ClusterSnapshot> => {
      const kv = (await client.get(keys(cluster).leader).exec()).kvs[0];
      const all = await client.getAll().prefix(keys(cluster).replicas).strings();
      const held = kv ? parseLeader(kv.value) : null;
      const leased = kv && kv.lease && kv.lease !== '0' ? Number((await client.leaseClient.leaseTimeToLive({ ID: kv.lease })).TTL) > 0 : false;
      return {
        leader: held ? { ...held, leased } : null,
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
