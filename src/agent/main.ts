/**
 * dynsup-agent: the resident node agent, bundled into one file (dist/agent/dynsup-agent.mjs) that the head
 * copies to each node once (cached by hash).
 *
 *   dynsup-agent serve DIR              run the agent for run dir DIR (one per node and cluster)
 *   dynsup-agent connect DIR [--no-spawn] [--lines]
 *                                       bridge stdin/stdout to DIR's agent, starting one if none runs
 *                                       (what an ssh channel or an srun step runs); exit 3 when none runs
 *                                       and --no-spawn was given; --lines: output as base64 lines (srun)
 *   dynsup-agent rsh HOST COMMAND...    Open MPI's remote launcher (plm_rsh_agent) for an mpirun leader: has
 *                                       the agent of the gang's node HOST start COMMAND (an orted), through
 *                                       this node's agent and the head; exits once it runs
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '../util/process.js';
import { AgentDaemon } from './daemon.js';
import { dialAgent } from './dial.js';
import { createConnection } from 'node:net';
import { encodeMessage, FrameDecoder, type LauncherMessage } from './protocol.js';

declare const DYNSUP_AGENT_BUILD: string | undefined;
const BUILD = typeof DYNSUP_AGENT_BUILD === 'string' ? DYNSUP_AGENT_BUILD : 'dev';

async function serve(dir: string): Promise<number> {
  // One agent per run dir: a second one started by a concurrent bridge steps aside.
  const pidFile = join(dir, 'agent.pid');
  try {
    const other = Number(readFileSync(pidFile, 'utf8').trim());
    if (other && other !== process.pid && pidAlive(other) && readFileSync(`/proc/${other}/cmdline`, 'utf8').includes('serve')) return 0;
  } catch {
    /* none */
  }
  const self = fileURLToPath(import.meta.url);
  const daemon = new AgentDaemon({ dir, build: BUILD, launcherCommand: `${process.execPath} ${self} rsh` });
  writeFileSync(pidFile, String(process.pid), { mode: 0o600 });
  process.on('SIGHUP', () => undefined);
  process.on('SIGPIPE', () => undefined);
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void daemon.terminate(`${sig} received`));
  await daemon.run();
  return 0;
}

async function bridge(dir: string, spawnAgent: boolean, lines: boolean): Promise<number> {
  const self = fileURLToPath(import.meta.url);
  const sock = await dialAgent({ dir, spawn: spawnAgent ? [process.execPath, self, 'serve', dir] : null });
  if (!sock) {
    process.stderr.write(`dynsup-agent: no agent runs for ${dir}\n`);
    return 3;
  }
  process.stdin.pipe(sock);
  if (lines) {
    // An srun step's output reaches srun a line at a time (slurmstepd holds a partial line back): base64
    // lines keep the binary frames moving.
    sock.on('data', (chunk: Buffer) => {
      if (!process.stdout.write(`${chunk.toString('base64')}\n`)) {
        sock.pause();
        process.stdout.once('drain', () => sock.resume());
      }
    });
    sock.on('end', () => process.stdout.end());
  } else sock.pipe(process.stdout);
  // The head went away (channel closed): the agent keeps its workers for the lease.
  process.stdin.on('end', () => sock.end());
  process.stdin.on('error', () => sock.destroy());
  process.stdout.on('error', () => sock.destroy());
  await new Promise<void>((r) => sock.once('close', () => r()));
  return 0;
}

/**
 * Called by mpirun as `rsh [options] HOST word...` (ssh's shape: the words are one remote shell line). The
 * request goes to this node's agent, which asks the head, which has HOST's agent run it as a member of the
 * gang: contained, logged and stopped with the gang. Exit 0 once it runs (mpirun only reads our exit status).
 */
async function rsh(args: string[]): Promise<number> {
  const at = args.findIndex((a) => !a.startsWith('-'));
  const host = args[at];
  const command = args.slice(at + 1).join(' ');
  const socket = process.env.DYNSUP_AGENT_SOCKET;
  const replica = process.env.DYNSUP_WORKER;
  if (at < 0 || !host || !command || !socket || !replica) {
    process.stderr.write('dynsup-agent rsh: usage: rsh HOST COMMAND... (run by mpirun under a dynsup agent)\n');
    return 2;
  }
  const sock = createConnection(socket);
  const decoder = new FrameDecoder<LauncherMessage>({ preamble: true });
  const answer = await new Promise<LauncherMessage | Error>((resolve) => {
    sock.once('connect', () => sock.write(encodeMessage({ t: 'launch', replica, host, command })));
    sock.on('data', (chunk: Buffer) => {
      try {
        const f = decoder.push(chunk).find((x) => x.kind === 'msg');
        if (f && f.kind === 'msg') resolve(f.msg);
      } catch (err) {
        resolve(err as Error);
      }
    });
    sock.once('error', (err) => resolve(err));
    sock.once('close', () => resolve(new Error('the agent closed the connection without an answer')));
  });
  sock.destroy();
  if (answer instanceof Error || answer.t !== 'launched' || answer.error) {
    const why = answer instanceof Error ? answer.message : answer.t === 'launched' ? answer.error : 'unexpected answer';
    process.stderr.write(`dynsup-agent rsh: cannot start on ${host}: ${why}\n`);
    return 1;
  }
  return 0;
}

const [mode, dir, ...flags] = process.argv.slice(2);
const run =
  mode === 'serve' && dir
    ? serve(dir)
    : mode === 'connect' && dir
      ? bridge(dir, !flags.includes('--no-spawn'), flags.includes('--lines'))
      : mode === 'rsh'
        ? rsh(process.argv.slice(3))
        : Promise.resolve(-1);
run.then(
  (code) => {
    if (code === -1) {
      process.stderr.write('usage: dynsup-agent serve DIR | connect DIR [--no-spawn] [--lines]\n');
      code = 2;
    }
    process.exit(code);
  },
  (err: Error) => {
    process.stderr.write(`dynsup-agent: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
