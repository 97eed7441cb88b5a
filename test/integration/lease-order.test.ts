/**
 * When the supervisor dies, every agent stops its workers once the lease runs out, and workers deregister
 * from etcd and NATS as they stop, after draining (Dynamo's do). So the control plane must outlive them: its agent keeps
 * NATS and etcd the longest stop grace (+5 s) longer. A worker that asks etcd for its health in its
 * SIGTERM handler must get an answer; then NATS and etcd go too.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dynsup, pidsWithCmdline, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

let c: TempCluster | undefined;
afterAll(async () => {
  if (c) await dynsup(['down', c.file]);
});

describe('supervisor gone: the control plane outlives the workers', () => {
  it('a worker stopping at the end of the lease still reaches etcd; NATS and etcd stop after it', async () => {
    c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w:
    command: "trap 'sleep 1; curl -s -m 3 $ETCD_ENDPOINTS/health > DIR/at-stop.json; exit 0' TERM; echo up; while :; do sleep 0.1; done"
    stop: { grace: 5s }
`,
      { controlPlane: true, name: `lo${Math.random().toString(36).slice(2, 8)}` },
    );
    // A short lease for the test (the file's default is 10s).
    writeFileSync(c.file, readFileSync(c.file, 'utf8').replace('lease: 10s', 'lease: 2s'));
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr).toBe(0);
    const sup = JSON.parse(readFileSync(join(c.dir, 'state/run/supervisor.json'), 'utf8')) as { pid: number };
    process.kill(sup.pid, 'SIGKILL');
    const atStop = join(c.dir, 'at-stop.json');
    await waitFor('the worker stopped by its agent', () => existsSync(atStop) && readFileSync(atStop, 'utf8').length > 0, 60_000, 100);
    expect(JSON.parse(readFileSync(atStop, 'utf8'))).toMatchObject({ health: 'true' });
    // Then the control plane goes by itself as well (its data dirs are under the state dir).
    await waitFor('NATS and etcd gone', async () => (await pidsWithCmdline(join(c!.dir, 'state'))).length === 0, 60_000, 200);
  }, 120_000);
});
