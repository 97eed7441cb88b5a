/**
 * `dynsup apply` on the ssh transport: the demo graph (frontend → decode → prefill) on a 3-node lab,
 * each group on its own node, changed while a client sends completions through the frontend every 50 ms.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, freePort, type StatusJson } from '../helpers/cluster.js';
import { startLab, type Lab } from '../helpers/lab.js';

let lab: Lab;
let dir = '';
let v1 = '';
beforeAll(async () => {
  lab = await startLab(3);
}, 120_000);
afterAll(async () => {
  if (v1) await dynsup(['down', v1]);
  await lab?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function write(name: string, edit: (y: string) => string = (y) => y): Promise<string> {
  const [n, m, e, p, mp] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(lab.head)]);
  const ssh = (x: (typeof lab.nodes)[number]) =>
    `{ transport: ssh, host: ${x.address}, user: ${lab.user}, identityFile: ${lab.key}, knownHosts: ${lab.knownHosts} }`;
  const yaml = `name: sapply
head: { address: ${lab.head} }
stateDir: ${dir}/state
lease: 10s
metrics: { port: ${mp} }
controlPlane:
  nats: { port: ${n}, monitorPort: ${m} }
  etcd: { port: ${e}, peerPort: ${p} }
nodes:
${lab.nodes.map((x) => `  ${x.name}: ${ssh(x)}`).join('\n')}
defaults:
  cwd: ${lab.share}
  restart: { initialDelay: 500ms, maxDelay: 10s }
  stop: { grace: 5s }
  health: { url: "http://{host}:{port}/health" }
workers:
  prefill:
    command: [node, scripts/demo/prefill.mjs]
    replicas: 2
    port: 9200
    nodes: [lab1]
  decode:
    command: [node, scripts/demo/decode.mjs]
    replicas: 2
    port: 9300
    nodes: [lab2]
    dependsOn: [prefill]
  frontend:
    command: [node, scripts/demo/frontend.mjs]
    port: 8000
    nodes: [lab3]
    dependsOn: [decode]
    health: { url: "http://{host}:{port}/health", failureThreshold: 10 }
`;
  const f = join(dir, name);
  writeFileSync(f, edit(yaml));
  return f;
}

describe('apply over ssh', () => {
  it('dry run and an unplaceable plan change nothing; then the unchanged group keeps its pids, the changed one is replaced one at a time while completions keep working, the scaled one grows', async () => {
    dir = await lab.userDir('dynsup-apply-ssh-');
    v1 = await write('v1.yaml');
    // The control plane ports are fixed by v1; v2 takes them from it.
    const v1Text = readFileSync(v1, 'utf8');
    const v2 = join(dir, 'v2.yaml');
    writeFileSync(
      v2,
      v1Text
        .replace('command: [node, scripts/demo/decode.mjs]', 'command: [node, scripts/demo/decode.mjs, --engine-config=v2]')
        .replace(/(prefill:\n {4}command: \[node, scripts\/demo\/prefill\.mjs\]\n {4}replicas:) 2/, '$1 3'),
    );
    const up = await dynsup(['up', '-d', v1, '--timeout', '120']);
    expect(up.code, up.stderr).toBe(0);
    const st = async (): Promise<StatusJson> => JSON.parse((await dynsup(['status', v1, '--json'])).stdout) as StatusJson;
    const pids = (s: StatusJson) => Object.fromEntries(s.replicas.map((r) => [r.name, r.pid]));
    const before = await st();

    const dry = await dynsup(['apply', v2, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('decode: changed (command); replace decode-0, decode-1 rolling, 1 at a time');
    expect(dry.stdout).toContain('prefill: 2 → 3 replicas; start prefill-2; keep prefill-0, prefill-1');
    expect(pids(await st())).toEqual(pids(before));

    // GPUs short (prefill wants one per replica, lab1 has none): exit 2, nothing changed.
    const short = join(dir, 'short.yaml');
    writeFileSync(short, v1Text.replace('command: [node, scripts/demo/prefill.mjs]', 'command: [node, scripts/demo/prefill.mjs]\n    gpus: 1'));
    const big = await dynsup(['apply', short]);
    expect(big.code).toBe(2);
    expect(big.stderr).toMatch(/not enough GPUs/);
    expect(pids(await st())).toEqual(pids(before));

    const frontend = `http://${lab.node('lab3').address}:8000/v1/completions`;
    let probing = true;
    let ok = 0;
    const failed: string[] = [];
    const probe = (async () => {
      while (probing) {
        try {
          const res = await fetch(frontend, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: 'demo', prompt: 'over ssh', max_tokens: 4 }),
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
    const applied = await dynsup(['apply', v2]);
    probing = false;
    await probe;
    expect(applied.code, applied.stderr).toBe(0);
    expect(failed).toEqual([]);
    expect(ok).toBeGreaterThan(5);

    const after = await st();
    const a = pids(after);
    const b = pids(before);
    expect([a['frontend-0'], a['prefill-0'], a['prefill-1']]).toEqual([b['frontend-0'], b['prefill-0'], b['prefill-1']]);
    expect(a['decode-0']).not.toBe(b['decode-0']);
    expect(a['decode-1']).not.toBe(b['decode-1']);
    expect(after.replicas.find((r) => r.name === 'prefill-2')).toMatchObject({ node: 'lab1', state: 'ready' });
    // One at a time, by the event log.
    const ev = readFileSync(join(dir, 'state/logs/dynsup.log'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
    const stopped0 = ev.findIndex((m) => m.startsWith('decode-0 stopped: replaced'));
    const ready0 = ev.findIndex((m, i) => i > stopped0 && m === 'decode-0 ready');
    const stopped1 = ev.findIndex((m) => m.startsWith('decode-1 stopped: replaced'));
    expect(stopped0).toBeGreaterThan(-1);
    expect(ready0).toBeGreaterThan(stopped0);
    expect(stopped1).toBeGreaterThan(ready0);
    // The new command runs on lab2.
    const ps = await lab.ssh('lab2', 'ps -eo args');
    expect(ps.stdout.match(/decode\.mjs --engine-config=v2/g)).toHaveLength(2);
  });
});
