// Bundles the resident node agent (src/agent/main.ts and what it imports) into one file the head copies
// to nodes: dist/agent/dynsup-agent.mjs. Node built-ins only; no npm dependency travels.
import { build } from 'esbuild';

await build({
  entryPoints: ['src/agent/main.ts'],
  outfile: 'dist/agent/dynsup-agent.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  legalComments: 'none',
  logLevel: 'warning',
});
