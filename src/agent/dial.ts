/**
 * Reaching a node's agent on the node itself: connect to its socket, starting the agent first when none
 * listens. Used by the bridge (`dynsup-agent connect`, what an ssh or srun channel runs) and by the head's
 * local transport.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { socketPath } from './protocol.js';

function tryConnect(path: string): Promise<Socket | null> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', () => resolve(null));
  });
}

export interface DialOptions {
  readonly dir: string;
  /** How to start the agent when none answers (argv: node binary, agent script, args); null: do not. */
  readonly spawn: readonly string[] | null;
  /** How long to wait for a starting agent's socket. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** A connected socket to the agent of `dir`, or null when there is none and none may be started. */
export async function dialAgent(o: DialOptions): Promise<Socket | null> {
  const path = socketPath(o.dir);
  const first = await tryConnect(path);
  if (first || !o.spawn) return first;
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const log = openSync(join(o.dir, 'agent.log'), 'a', 0o600);
  // Detached (own session): the agent outlives the channel that started it, by design.
  const child = spawn(o.spawn[0]!, o.spawn.slice(1), { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  let exited = false;
  child.once('exit', () => (exited = true));
  child.once('error', () => (exited = true));
  child.unref();
  const deadline = Date.now() + (o.timeoutMs ?? 30_000);
  while (Date.now() < deadline && !o.signal?.aborted) {
    const s = await tryConnect(path);
    if (s) return s;
    // It lost a race with another agent starting for the same dir: that one will answer.
    if (exited) await sleep(50);
    await sleep(20);
  }
  throw new Error(`the node agent did not start listening on ${path} (see ${join(o.dir, 'agent.log')})`);
}
