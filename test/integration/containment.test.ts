/**
 * Containment by the node agent, both ways it can contain a worker: its own cgroup v2 (the head's agent,
 * root here) and the process group plus a sweep of processes carrying the replica's token (forced on the
 * head with DYNSUP_AGENT_CGROUP=off, and what an unprivileged agent on an ssh node uses). The worker leaves a `setsid` grandchild that holds its stdout
 * (a daemon, MPI's orted): the leader's death must be seen at once, and nothing may survive a stop.
 */
import { readFileSync } from 'node:fs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { dynsup, pidsWithCmdline, status, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';
import { startSshd, type Sshd } from '../helpers/sshd.js';

const started: TempCluster[] = [];
afterEach(async () => {
  for (const c of started.splice(0)) await dynsup(['down', c.file]);
});

/** Alive and not a zombie (a killed orphan may wait for a slow init to reap it). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

let sshd: Sshd | undefined;
afterAll(async () => {
  await sshd?.stop();
});

/** The node: the head itself (the agent runs as root: its own cgroups), or an ssh node as the test user. */
async function nodeYaml(mode: 'cgroup' | 'pgroup' | 'ssh'): Promise<string> {
  if (mode !== 'ssh') return '  head: { transport: local }';
  sshd ??= await startSshd({ address: '127.0.0.1' });
  return `  n1: { transport: ssh, host: 127.0.0.1, port: ${sshd.port}, user: ${sshd.user}, identityFile: ${sshd.identityFile}, knownHosts: ${sshd.knownHostsFile}, runDir: ${sshd.workDir}/run }`;
}

for (const mode of ['cgroup', 'pgroup', 'ssh'] as const) {
  describe(`containment: ${mode}${mode === 'ssh' ? ' (an unprivileged agent: process group and token sweep)' : ''}`, () => {
    it('a leader that leaves a setsid grandchild holding its stdout is seen dead at once and restarted; stop leaves nothing', async () => {
      const tag = `${mode}${Math.random().toString(36).slice(2, 8)}`;
      const c = await tempCluster(
        `nodes:
${await nodeYaml(mode)}
workers:
  w:
    command: "setsid sh -c 'sleep 1000; :' ${tag} & echo leader $$; exec sleep 100000"
    restart: { initialDelay: 100ms, jitter: 0 }
    stop: { grace: 2s }
`,
        { name: `c${tag}` },
      );
      started.push(c);
      // The grandchild is `sh -c 'sleep 1000; :' <tag>`, in a session of its own: findable by its command line.
      const env = { ...process.env, ...(mode === 'pgroup' ? { DYNSUP_AGENT_CGROUP: 'off' } : {}) };
      const r = await dynsup(['up', '-d', c.file, '--timeout', '60'], { env });
      expect(r.code, r.stderr).toBe(0);
      const first = (await status(c.file)).replicas[0]!;
      expect(first.containment).toBe(mode === 'ssh' ? 'pgroup' : mode);
      const grand1 = await waitFor('grandchild', async () => (await pidsWithCmdline(tag))[0]);

      process.kill(first.pid!, 'SIGKILL');
      const second = await waitFor('restarted', async () => {
        const x = (await status(c.file)).replicas[0]!;
        return x.restarts === 1 && x.state === 'running' && x.pid !== first.pid ? x : null;
      });
      expect(second.lastExit).toMatchObject({ signal: 'SIGKILL' });
      // The first run's grandchild went with its leader; the new run has its own.
      await waitFor('first grandchild gone', () => !running(grand1));
      const grand2 = await waitFor('new grandchild', async () => (await pidsWithCmdline(tag)).find((p) => p !== grand1));

      const stop = await dynsup(['stop', c.file, 'w']);
      expect(stop.code, stop.stderr).toBe(0);
      expect((await status(c.file)).replicas[0]!.state).toBe('stopped');
      expect(running(second.pid!)).toBe(false);
      await waitFor('second grandchild gone', () => !running(grand2));
      expect((await pidsWithCmdline(tag)).filter(running)).toEqual([]);
    });
  });
}
