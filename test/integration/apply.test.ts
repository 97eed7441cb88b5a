/**
 * Day-2 operations on the demo graph (clusters/local.yaml: frontend → decode → prefill): `apply` of a changed
 * file and `restart --rolling`, while a client sends completions through the frontend every 50 ms.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { dynsup, pidsWithEnv, ROOT, waitFor, type StatusJson } from '../helpers/cluster.js';

const dir = mkdtempSync(join(tmpdir(), 'dynsup-apply-'));
const stateDir = join(dir, 'state');
const args = ['--state-dir', stateDir];

/** The demo file, with its cwd made absolute, 4 (unused) GPUs on its node and prefill taking one each. */
function demoFile(name: string, edit: (yaml: string) => string = (y) => y): string {
  let y = readFileSync(join(ROOT, 'clusters/local.yaml'), 'utf8')
    .replace(/^ {2}cwd: \.\..*$/m, `  cwd: ${ROOT}`)
    .replace('head: { transport: local, gpus: 0 }', 'head: { transport: local, gpus: 4 }')
    .replace('command: [node, scripts/demo/prefill.mjs]', 'command: [node, scripts/demo/prefill.mjs]\n    gpus: 1');
  y = edit(y);
  const f = join(dir, name);
  writeFileSync(f, y);
  return f;
}
const v1 = demoFile('v1.yaml');
// decode's command changes (an argument the demo worker ignores), prefill goes 2 → 3, frontend stays.
const v2 = demoFile('v2.yaml', (y) =>
  y
    .replace('command: [node, scripts/demo/decode.mjs]', 'command: [node, scripts/demo/decode.mjs, --engine-config=v2]')
    .replace('replicas: 2 # prefill', 'replicas: 3 # prefill'),
);
// Five prefill replicas of one GPU each on a node of four.
const tooBig = demoFile('too-big.yaml', (y) => y.replace('replicas: 2 # prefill', 'replicas: 5 # prefill'));
// The control plane's section changed: only down/up can do that.
const newNats = demoFile('new-nats.yaml', (y) => y.replace('nats: { port: 4222 }', 'nats: { port: 4223 }'));

async function statusOf(file = v1): Promise<StatusJson> {
  const r = await dynsup(['status', file, ...args, '--json']);
  return JSON.parse(r.stdout) as StatusJson;
}
const pids = (s: StatusJson) => Object.fromEntries(s.replicas.map((r) => [r.name, r.pid]));
const events = () =>
  readFileSync(join(stateDir, 'logs/dynsup.log'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { replica?: string; msg: string });

/** A client sending a completion through the frontend every 50 ms until stopped; counts what failed. */
function prober(): { stop: () => Promise<{ ok: number; failed: string[] }> } {
  let running = true;
  const failed: string[] = [];
  let ok = 0;
  const loop = (async () => {
    while (running) {
      try {
        const res = await fetch('http://127.0.0.1:8000/v1/completions', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'demo', prompt: 'rolling along', max_tokens: 4 }),
          signal: AbortSignal.timeout(15_000),
        });
        const body = await res.text();
        if (res.status === 200) ok++;
        else failed.push(`${res.status} ${body.slice(0, 200)}`);
      } catch (err) {
        failed.push(String(err));
      }
      await sleep(50);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { ok, failed };
    },
  };
}

afterAll(async () => {
  await dynsup(['down', v1, ...args]);
});

describe('apply and rolling restarts on the demo cluster', () => {
  it('apply: --dry-run changes nothing, an unplaceable or control-plane change exits 2 changing nothing, then the change is rolled out while completions keep working', async () => {
    const up = await dynsup(['up', '-d', v1, ...args, '--timeout', '90']);
    expect(up.code, up.stderr).toBe(0);
    const before = await statusOf();
    expect(before.replicas.map((r) => r.name).sort()).toEqual(['decode-0', 'decode-1', 'frontend-0', 'prefill-0', 'prefill-1']);

    // --dry-run: the plan, and nothing changed.
    const dry = await dynsup(['apply', v2, ...args, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('decode: changed (command); replace decode-0, decode-1 rolling, 1 at a time');
    expect(dry.stdout).toContain('prefill: 2 → 3 replicas; start prefill-2; keep prefill-0, prefill-1');
    expect(dry.stdout).toContain('frontend: unchanged; keep frontend-0');
    expect(dry.stdout).toContain('dry run: nothing changed');
    expect(pids(await statusOf())).toEqual(pids(before));
    // From another machine: over NATS with --head and --creds (the file is read and checked there).
    const remote = await dynsup(['apply', v2, '--dry-run', '--head', '127.0.0.1', '--creds', join(stateDir, 'run/credentials.json')]);
    expect(remote.code, remote.stderr).toBe(0);
    expect(remote.stdout).toBe(dry.stdout);

    // GPUs short: exit 2, the reason, nothing changed.
    const big = await dynsup(['apply', tooBig, ...args]);
    expect(big.code).toBe(2);
    expect(big.stderr).toMatch(/not enough GPUs/);
    // The control plane: refused by the supervisor, exit 2, nothing changed.
    const cp = await dynsup(['apply', newNats, ...args]);
    expect(cp.code).toBe(2);
    expect(cp.stderr).toContain('controlPlane.nats changed: the control plane and how nodes are reached change only with');
    expect(pids(await statusOf())).toEqual(pids(before));

    // The real thing, probed through the frontend every 50 ms.
    const probe = prober();
    const applied = await dynsup(['apply', v2, ...args]);
    const seen = await probe.stop();
    expect(applied.code, applied.stderr).toBe(0);
    expect(applied.stdout).toContain('applied');
    expect(seen.failed).toEqual([]);
    expect(seen.ok).toBeGreaterThan(5);

    const after = await statusOf();
    const a = pids(after);
    const b = pids(before);
    // Unchanged replicas keep their processes; the changed group got new ones; prefill-2 is new.
    expect([a['frontend-0'], a['prefill-0'], a['prefill-1']]).toEqual([b['frontend-0'], b['prefill-0'], b['prefill-1']]);
    expect(a['decode-0']).not.toBe(b['decode-0']);
    expect(a['decode-1']).not.toBe(b['decode-1']);
    expect(after.replicas.find((r) => r.name === 'prefill-2')).toMatchObject({ gpus: [2] });
    for (const r of after.replicas) expect(r.state, r.name).toBe('ready');
    // The new command runs.
    const decodes = (await pidsWithEnv('DYNSUP_GROUP=decode')).map((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8'));
    expect(decodes.filter((c) => c.includes('--engine-config=v2'))).toHaveLength(2);
    // One at a time: decode-1 was stopped only after the new decode-0 was ready.
    const ev = events().map((e) => e.msg);
    const stopped0 = ev.findIndex((m) => m.startsWith('decode-0 stopped: replaced'));
    const ready0 = ev.findIndex((m, i) => i > stopped0 && m === 'decode-0 ready');
    const stopped1 = ev.findIndex((m) => m.startsWith('decode-1 stopped: replaced'));
    expect(stopped0).toBeGreaterThan(-1);
    expect(ready0).toBeGreaterThan(stopped0);
    expect(stopped1).toBeGreaterThan(ready0);

    // Applying the same file again changes nothing.
    const again = await dynsup(['apply', v2, ...args]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('decode: unchanged; keep decode-0, decode-1');
    expect(pids(await statusOf())).toEqual(a);
  });

  it('restart --rolling: a completion loop through the frontend sees no failed request', async () => {
    const before = await statusOf();
    const probe = prober();
    const r = await dynsup(['restart', v1, 'decode', '--rolling', ...args]);
    const seen = await probe.stop();
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('restarted (rolling) decode-0, decode-1\n');
    expect(seen.failed).toEqual([]);
    expect(seen.ok).toBeGreaterThan(5);
    const after = await waitFor('decode ready', async () => {
      const s = await statusOf();
      return s.replicas.filter((x) => x.group === 'decode').every((x) => x.state === 'ready') ? s : null;
    });
    const a = pids(after);
    const b = pids(before);
    expect(a['decode-0']).not.toBe(b['decode-0']);
    expect(a['decode-1']).not.toBe(b['decode-1']);
    expect(a['frontend-0']).toBe(b['frontend-0']);
    // An operator's restart is not a crash.
    expect(after.replicas.filter((x) => x.group === 'decode').map((x) => x.restarts)).toEqual(
      before.replicas.filter((x) => x.group === 'decode').map((x) => x.restarts),
    );
  });
});
