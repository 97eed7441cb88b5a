/**
 * dynsup-agent: the resident node agent, bundled into one file (dist/agent/dynsup-agent.mjs) that the head
 * copies to each node once (cached by hash).
 *
 *   dynsup-agent serve DIR              run the agent for run dir DIR (one per node and cluster)
 *   dynsup-agent connect DIR [--no-spawn] [--lines]
 *                                       bridge stdin/stdout to DIR's agent, starting one if none runs
 *                                       (what an ssh channel or an srun step runs); exit 3 when none runs
 *                                       and --no-spawn was given; --lines: output as base64 lines (srun)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '../control/runtime-files.js';
import { AgentDaemon } from './daemon.js';
import { dialAgent } from './dial.js';

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
  const daemon = new AgentDaemon({ dir, build: BUILD });
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

const [mode, dir, ...flags] = process.argv.slice(2);
const run =
  mode === 'serve' && dir ? serve(dir) : mode === 'connect' && dir ? bridge(dir, !flags.includes('--no-spawn'), flags.includes('--lines')) : Promise.resolve(-1);
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
