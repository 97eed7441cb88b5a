/**
 * `transport: local`: the node is the head itself. The pipe is a direct connection to the agent's socket;
 * the agent (same bundle as on remote nodes) is started detached when none runs, so local workers get the
 * same lease, containment and re-adoption as remote ones.
 */
import { rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { dialAgent } from '../agent/dial.js';
import { DynsupError, errorMessage } from '../util/errors.js';
import { AGENT_BUNDLE } from './agent-bundle.js';
import type { AgentPipe, AgentStream } from './types.js';

export class LocalPipe implements AgentPipe {
  readonly kind = 'local' as const;
  readonly node: string;
  readonly runDir: string;

  constructor(node: string, runDir: string) {
    this.node = node;
    this.runDir = runDir;
  }

  async open(opts: { spawn: boolean; signal?: AbortSignal | undefined }): Promise<AgentStream | null> {
    let sock: Socket | null;
    try {
      sock = await dialAgent({
        dir: this.runDir,
        spawn: opts.spawn ? [process.execPath, AGENT_BUNDLE, 'serve', this.runDir] : null,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
    } catch (err) {
      throw new DynsupError('E_NODE', `node ${this.node}: ${errorMessage(err)}`, { cause: err });
    }
    if (!sock) return null;
    const s = sock;
    return { input: s, output: s, destroy: () => s.destroy() };
  }

  async removeRunDir(): Promise<void> {
    await rm(this.runDir, { recursive: true, force: true });
  }

  async close(): Promise<void> {}
}
