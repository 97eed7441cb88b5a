/**
 * The head/agent wire protocol: frames survive any chunking, a login shell's chatter before the preamble is
 * skipped, spec hashes are stable, and a protocol version mismatch is refused by both ends (the real agent
 * bundle, and the head's client against an agent speaking another version); the hello lists what a new
 * head needs to adopt an mpirun's daemon (its `sh -c` command), and state reports never carry it.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  encodeData,
  encodeMessage,
  FrameDecoder,
  PREAMBLE,
  PROTOCOL_VERSION,
  socketPath,
  specHash,
  type AgentMessage,
  type WorkerReport,
  type WorkerSpec,
} from '../../src/agent/protocol.js';
import { AGENT_BUNDLE } from '../../src/transport/agent-bundle.js';
import { LocalPipe } from '../../src/transport/local.js';
import { NodeAgent } from '../../src/transport/node-agent.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'dynsup-proto-'));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const spec: WorkerSpec = {
  argv: ['sh', '-c', 'echo hi'],
  env: { B: '2', A: '1' },
  unsetEnv: ['SLURM_*'],
  stopSignal: 'SIGTERM',
  graceMs: 1000,
  restart: { policy: 'always', initialDelayMs: 100, factor: 2, maxDelayMs: 1000, jitter: 0, maxRestarts: 0, windowMs: 1000, resetAfterMs: 1000 },
};

describe('frames', () => {
  const stream = Buffer.concat([
    Buffer.from('rc-noise\nmore noise\n'),
    PREAMBLE,
    encodeMessage({ t: 'pong' }),
    encodeData('w-0', 12345, Buffer.from('line 1\nline 2\n')),
    encodeMessage({ t: 'event', name: 'w-0', event: { kind: 'started', pid: 42 } }),
    encodeData('décode-1', 2 ** 40, Buffer.alloc(0)),
  ]);

  for (const size of [1, 2, 3, 7, 64, stream.length]) {
    it(`decodes the same frames from chunks of ${size} bytes, noise before the preamble set apart`, () => {
      let noise = '';
      const d = new FrameDecoder<AgentMessage>({ preamble: true, onNoise: (b) => (noise += b.toString()) });
      const frames = [];
      for (let i = 0; i < stream.length; i += size) frames.push(...d.push(stream.subarray(i, i + size)));
      expect(noise).toBe('rc-noise\nmore noise\n');
      expect(frames.map((f) => (f.kind === 'msg' ? f.msg : { name: f.name, offset: f.offset, text: f.bytes.toString() }))).toEqual([
        { t: 'pong' },
        { name: 'w-0', offset: 12345, text: 'line 1\nline 2\n' },
        { t: 'event', name: 'w-0', event: { kind: 'started', pid: 42 } },
        { name: 'décode-1', offset: 2 ** 40, text: '' },
      ]);
    });
  }

  it('refuses a corrupt stream instead of reading garbage as frames', () => {
    const d = new FrameDecoder({ preamble: false });
    expect(() => d.push(Buffer.from([0xff, 0xff, 0xff, 0xff, 1]))).toThrow(/corrupt/);
    const e = new FrameDecoder({ preamble: false });
    expect(() => e.push(Buffer.from([0, 0, 0, 1, 9]))).toThrow(/frame type 9/);
  });
});

describe('specHash', () => {
  it('ignores key order and changes with any field', () => {
    expect(specHash({ ...spec, env: { A: '1', B: '2' } })).toBe(specHash(spec));
    expect(specHash({ ...spec, argv: ['sh', '-c', 'echo ho'] })).not.toBe(specHash(spec));
    expect(specHash({ ...spec, graceMs: 1001 })).not.toBe(specHash(spec));
    expect(specHash({ ...spec, restart: { ...spec.restart, maxRestarts: 1 } })).not.toBe(specHash(spec));
  });
});

describe('socketPath', () => {
  it('keeps short run dirs, hashes long ones into a path a unix socket can bind', () => {
    expect(socketPath('/tmp/x')).toBe('/tmp/x/agent.sock');
    const long = socketPath(`/tmp/${'d'.repeat(200)}`, 1234);
    expect(Buffer.byteLength(long)).toBeLessThanOrEqual(107);
    expect(long).toMatch(/dynsup-1234\/[0-9a-f]{20}\.sock$/);
  });
});

describe('protocol version', () => {
  it('the agent answers a head of another version with an error hello and closes', async () => {
    const dir = tmp();
    const agent = spawn(process.execPath, [AGENT_BUNDLE, 'serve', dir], { stdio: 'ignore' });
    try {
      const sock = await new Promise<ReturnType<typeof connect>>((resolve) => {
        const tryIt = (): void => {
          const s = connect(socketPath(dir));
          s.once('connect', () => resolve(s));
          s.once('error', () => setTimeout(tryIt, 20));
        };
        tryIt();
      });
      const d = new FrameDecoder<AgentMessage>({ preamble: true });
      const got: AgentMessage[] = [];
      const closed = new Promise<void>((r) => sock.once('end', () => r()));
      sock.on('data', (c: Buffer) => got.push(...d.push(c).flatMap((f) => (f.kind === 'msg' ? [f.msg] : []))));
      sock.write(encodeMessage({ t: 'hello', v: PROTOCOL_VERSION + 1, cluster: 'c', node: 'n', leaseMs: 5000 }));
      await closed;
      expect(got[0]).toMatchObject({ t: 'hello', v: PROTOCOL_VERSION, error: expect.stringMatching(/protocol version mismatch/) });
    } finally {
      agent.kill('SIGKILL');
    }
  });

  it('the head refuses to take over an agent that speaks another version, saying so', async () => {
    const dir = tmp();
    // A stand-in for an agent of an older dynsup: preamble, then a hello of version 0 with a worker.
    const server = createServer((s) => {
      s.write(PREAMBLE);
      s.write(encodeMessage({ t: 'hello', v: 0, pid: 4242, build: 'old', cgroup: false, workers: [] }));
    });
    await new Promise<void>((r) => server.listen(socketPath(dir), r));
    try {
      const a = new NodeAgent({ pipe: new LocalPipe('gpu1', dir), cluster: 'c', leaseMs: 5000 });
      await expect(a.connect()).rejects.toThrow(/node gpu1: the running agent \(pid 4242\) speaks protocol 0, this dynsup 1: refusing/);
      await a.close();
    } finally {
      server.close();
    }
  });
});

describe('hello', () => {
  it("lists an sh -c worker's command for a new head to adopt it by; state reports and a worker of another argv do not carry one", async () => {
    const dir = tmp();
    const quiet: WorkerSpec = { ...spec, restart: { ...spec.restart, policy: 'never' } };
    const reports: WorkerReport[] = [];
    const sink = { report: (r: WorkerReport) => void reports.push(r), event: () => undefined, data: async () => undefined };
    const first = new NodeAgent({ pipe: new LocalPipe('n1', dir), cluster: 'c', leaseMs: 20_000 });
    await first.connect();
    const second = new NodeAgent({ pipe: new LocalPipe('n1', dir), cluster: 'c', leaseMs: 20_000 });
    try {
      first.run('daemon', { ...quiet, argv: ['sh', '-c', 'exec sleep 60 # orted --hnp-uri x'] }, sink);
      first.run('plain', { ...quiet, argv: ['sleep', '60'] }, sink);
      const running = (): number => new Set(reports.filter((r) => r.state === 'running').map((r) => r.name)).size;
      while (running() < 2) await new Promise((r) => setTimeout(r, 20));
      expect(reports.filter((r) => 'command' in r)).toEqual([]);
      // A new head (the old one gone, the agent kept its workers): the hello says what runs.
      await first.close();
      await second.connect();
      const listed = Object.fromEntries(second.adoptable.map((w) => [w.name, w]));
      expect(listed.daemon).toMatchObject({ state: 'running', command: 'exec sleep 60 # orted --hnp-uri x' });
      expect(listed.plain!.state).toBe('running');
      expect('command' in listed.plain!).toBe(false);
    } finally {
      await second.shutdown(1000, 5000).catch(() => false);
      await second.close();
      await first.close();
    }
  }, 30_000);
});
