/**
 * What the CLI says is what happened (issue 17): status tells running-but-unauthorised, stopped and never
 * started apart; no warning for what was asked for; "is up" once the last replica is ready; validate --json
 * answers errors in JSON; status --watch into a pipe clears no screen; logs -n interleaves replicas by
 * time and shows a last line not ended yet; logs dynsup is readable; a mistyped command gets a suggestion.
 */
import { spawn } from 'node:child_process';
import { readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { COMMANDS } from '../../src/cli/commands.js';
import { BIN, dynsup, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

const clusters: TempCluster[] = [];
afterAll(async () => {
  for (const c of clusters) await dynsup(['down', c.file]);
});

async function cluster(body: string, opts: Parameters<typeof tempCluster>[1] = {}): Promise<TempCluster> {
  const c = await tempCluster(body, { name: `t${Math.random().toString(36).slice(2, 8)}`, ...opts });
  clusters.push(c);
  return c;
}

const events = (c: TempCluster) =>
  readFileSync(join(c.dir, 'state/logs/dynsup.log'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { level: number; msg: string });

describe('status: running, running but not for these credentials, stopped, never started', () => {
  it('says which, with exit 0, 2, 1 and 1', async () => {
    const c = await cluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`,
      { controlPlane: true },
    );
    let r = await dynsup(['status', c.file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/: never started on this machine \(no state in .*state\)/);
    expect(JSON.parse((await dynsup(['status', c.file, '--json'])).stdout)).toMatchObject({ running: false, state: 'never-started' });

    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr).toBe(0);
    const creds = join(c.dir, 'state/run/credentials.json');
    // From "another machine" without the credentials file: it runs, but may not be asked.
    renameSync(creds, `${creds}.away`);
    try {
      r = await dynsup(['status', c.file, '--head', '127.0.0.1']);
      expect(r.code, r.stdout + r.stderr).toBe(2);
      expect(r.stdout).toMatch(/: supervisor running \(pid \d+ on .*\), but not to be controlled from here: no control credentials at/);
      expect(r.stdout).not.toMatch(/NOT running/);
    } finally {
      renameSync(`${creds}.away`, creds);
    }
    r = await dynsup(['status', c.file, '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ running: true, state: 'running' });

    expect((await dynsup(['down', c.file])).code).toBe(0);
    r = await dynsup(['status', c.file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/: stopped: supervisor NOT running \(pid \d+ last seen/);
    expect(r.stdout).toMatch(/w-0 +head +stopped/);
  }, 120_000);
});

describe('events say what happened, when it happened', () => {
  it('a requested restart and an orderly down warn of nothing; "is up" comes after the last replica is ready', async () => {
    // s is ready (health check) a while after it starts; the cluster is not up before that.
    const c = await cluster(
      `nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
  s:
    command: ["node", "-e", "setTimeout(() => require('http').createServer((q, r) => r.end('ok')).listen({port}, '127.0.0.1'), 1500)"]
    port: PORT
    health: { url: "http://127.0.0.1:{port}/", interval: 200ms }
    dependsOn: [w]
`.replace('PORT', String(20000 + Math.floor(Math.random() * 20000))),
    );
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr).toBe(0);
    const msgs = () => events(c).map((e) => e.msg);
    const upAt = await waitFor('is up', () => {
      const i = msgs().findIndex((m) => / is up: 2 replicas/.test(m));
      return i >= 0 ? i + 1 : 0;
    });
    expect(msgs().findIndex((m) => m === 's-0 ready')).toBeGreaterThanOrEqual(0);
    expect(msgs().findIndex((m) => m === 's-0 ready')).toBeLessThan(upAt - 1);

    const r = await dynsup(['restart', c.file, 'w-0']);
    expect(r.code, r.stderr).toBe(0);
    await waitFor('the restart logged', () => msgs().some((m) => /^w-0 killed by SIGTERM \(restart requested\)$/.test(m)));
    expect((await dynsup(['down', c.file])).code).toBe(0);
    const loud = events(c).filter((e) => e.level >= 40);
    expect(loud).toEqual([]);
    // The supervisor's output behind up -d is readable lines, not JSON.
    const out = readFileSync(join(c.dir, 'state/logs/supervisor.out'), 'utf8');
    expect(out).toMatch(/^\d\d:\d\d:\d\d dynsup \| cluster \S+ is up: 2 replicas/m);
    expect(out).not.toMatch(/"level"/);
    const shown = await dynsup(['logs', c.file, 'dynsup']);
    expect(shown.stdout).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d dynsup \| w-0 killed by SIGTERM \(restart requested\)$/m);
    expect(shown.stdout).not.toMatch(/"level"/);
  }, 120_000);
});

describe('logs', () => {
  it('-n interleaves replicas by time (here and from another machine) and shows a last line not ended yet', async () => {
    const c = await cluster(
      `nodes:
  head: { transport: local }
workers:
  a: { command: "for i in 1 2 3; do echo a$i; sleep 0.4; done; exec sleep 600" }
  b: { command: "sleep 0.2; for i in 1 2 3; do echo b$i; sleep 0.4; done; printf 'b unended'; exec sleep 600" }
`,
      { controlPlane: true },
    );
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr).toBe(0);
    await waitFor('b unended in the log', () => readFileSync(join(c.dir, 'state/logs/b-0.log'), 'utf8').endsWith('b unended'), 20_000);
    const r = await dynsup(['logs', c.file, '-n', '10']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(['a-0 | a1', 'b-0 | b1', 'a-0 | a2', 'b-0 | b2', 'a-0 | a3', 'b-0 | b3', 'b-0 | b unended', ''].join('\n'));
    const one = await dynsup(['logs', c.file, 'b-0', '-n', '2']);
    expect(one.stdout).toBe('b3\nb unended\n');
    // From another machine (history through the supervisor): interleaved the same way.
    const remote = await dynsup(['logs', c.file, '-n', '10', '--head', '127.0.0.1']);
    expect(remote.code, remote.stderr).toBe(0);
    expect(remote.stdout).toBe(['a-0 | a1', 'b-0 | b1', 'a-0 | a2', 'b-0 | b2', 'a-0 | a3', 'b-0 | b3', ''].join('\n'));
  }, 60_000);
});

describe('output', () => {
  it('status --watch into a pipe prints one report after the other, without screen-clearing escapes', async () => {
    const c = await cluster(`nodes:
  head: { transport: local }
workers:
  w: { command: "exec sleep 600" }
`);
    const child = spawn(process.execPath, [BIN, 'status', c.file, '--watch'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor('two reports', () => out.split('never started').length > 2, 20_000);
    } finally {
      child.kill('SIGINT');
    }
    expect(out).not.toMatch(/\u001b/);
  });

  it('validate --json answers a bad file in JSON (exit 2), with file, line, column, field and message', async () => {
    const r = await dynsup(['validate', 'test/fixtures/bad/cluster-name-dot.yaml', '--json']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({
      ok: false,
      code: 'E_CONFIG',
      errors: [{ file: 'test/fixtures/bad/cluster-name-dot.yaml', line: 2, column: 7, path: 'name', message: expect.stringMatching(/no '\.'/) }],
    });
    const missing = await dynsup(['validate', '/nonexistent/c.yaml', '--json']);
    expect(missing.code).toBe(2);
    expect(JSON.parse(missing.stdout)).toMatchObject({
      ok: false,
      errors: [{ file: '/nonexistent/c.yaml', message: 'cannot read cluster file: no such file' }],
    });
  });

  it('a mistyped command gets "did you mean"', async () => {
    const r = await dynsup(['stauts', 'x.yaml']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^dynsup: unknown command 'stauts' \(did you mean 'status'\?\)/);
    expect((await dynsup(['zzzzzz'])).stderr).toMatch(/^dynsup: unknown command 'zzzzzz'\n/);
  });

  it('--help of every command that works from another machine lists --head and --creds', async () => {
    const remote = Object.entries(COMMANDS).filter(([, c]) => 'head' in c.options);
    expect(remote.map(([n]) => n).sort()).toEqual(['apply', 'down', 'logs', 'restart', 'scale', 'start', 'status', 'stop']);
    for (const [name, c] of remote) {
      expect(c.usage, name).toMatch(/\[--head ADDR\] \[--creds FILE\]/);
      const r = await dynsup([name, '--help']);
      expect(r.stdout, name).toContain('--head ADDR');
    }
  });
});
