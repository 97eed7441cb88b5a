/** The agent bundle the head runs locally and copies to nodes (by content hash, once per node). */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// From dist/transport/ (the CLI) and from src/transport/ (tests run from source) alike: built by `npm run build`.
export const AGENT_BUNDLE = fileURLToPath(new URL('../../dist/agent/dynsup-agent.mjs', import.meta.url));

let cached: { bytes: Buffer; hash: string } | undefined;

export function agentBundle(): { bytes: Buffer; hash: string } {
  if (!cached) {
    const bytes = readFileSync(AGENT_BUNDLE);
    cached = { bytes, hash: createHash('sha256').update(bytes).digest('hex').slice(0, 16) };
  }
  return cached;
}
