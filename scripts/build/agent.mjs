// Bundles the resident node agent (src/agent/main.ts and what it imports) into one file the head copies
// to nodes: dist/agent/dynsup-agent.mjs. Node built-ins only; no npm dependency travels.
//
//   node scripts/build/agent.mjs [OUTFILE]     (default dist/agent/dynsup-agent.mjs; paths relative to the cwd)
import { build } from 'esbuild';

await build({
  entryPoints: ['src/agent/main.ts'],
  outfile: process.argv[2] ?? 'dist/agent/dynsup-agent.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  legalComments: 'none',
  logLevel: 'warning',
});
