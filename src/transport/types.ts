import type { Readable, Writable } from 'node:stream';
import type { TransportKind } from '../config/types.js';
export type { ExitInfo } from '../agent/protocol.js';
export type { TransportKind };

/** A byte stream to a node's agent, whatever carries it. */
export interface AgentStream {
  readonly input: Readable;
  readonly output: Writable;
  /** Bytes the carrier printed before the agent's preamble (a login shell's chatter), for error messages. */
  noise?: () => string;
  destroy(): void;
}

/**
 * A way to reach one node's resident agent: every transport is "a byte pipe to the node's agent". The
 * protocol on top (node-agent.ts) is the same for all of them.
 */
export interface AgentPipe {
  readonly kind: TransportKind;
  readonly node: string;
  /**
   * Open a stream to the node's agent. `spawn`: start an agent when none runs (false for `down` after a
   * crash: nothing is started just to be stopped). Resolves null when none runs and spawn is false.
   * Rejects with a DynsupError naming the node.
   */
  open(opts: { readonly spawn: boolean; readonly signal?: AbortSignal | undefined }): Promise<AgentStream | null>;
  /** Remove the node's run dir (no agent runs there any more: what a crashed cluster left). */
  removeRunDir(signal?: AbortSignal): Promise<void>;
  /** Close whatever connection the pipe keeps (ssh). Workers are not touched. */
  close(): Promise<void>;
}
