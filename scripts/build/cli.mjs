// Bundles the CLI (src/cli/main.ts and what it imports) into dist/cli-bundle/: main.js and chunks that
// commands import when they run. Loading a few bundled files instead of hundreds of modules (zod, yaml and
// ours) is most of what makes `dynsup status`, `logs -n` and `validate` start within 2x of `node -e 0`
// (scripts/bench/cli.mjs). The connection libraries stay outside (imported from node_modules by the chunks
// that use them, so commands that need none load none: test/integration/lazy-imports.test.ts). Every file
// is at dist/<dir>/ depth, like tsc's output, so paths relative to import.meta.url (../../bin/dynsup.js,
// ../../dist/agent/...) resolve the same.
//
//   node scripts/build/cli.mjs [OUTDIR]     (default dist/cli-bundle)
import { build } from 'esbuild';

await build({
  entryPoints: { main: 'src/cli/main.ts' },
  outdir: process.argv[2] ?? 'dist/cli-bundle',
  bundle: true,
  splitting: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['ssh2', 'nats', 'etcd3', 'pino', 'execa'],
  chunkNames: '[name]-[hash]',
  // Bundled CommonJS packages (yaml) require() Node built-ins: give each file a real require.
  banner: { js: "import { createRequire as __dynsupRequire } from 'node:module'; const require = __dynsupRequire(import.meta.url);" },
  legalComments: 'none',
  // Less to parse at every start.
  minify: true,
  sourcemap: 'linked',
  logLevel: 'warning',
  plugins: [
    {
      // zod re-exports its 40-odd message locales (340 kB) as z.locales, which dynsup never uses (its
      // messages are its own; zod's default English one is imported by zod directly): left out, they cost
      // every command no parsing.
      name: 'zod-without-locales',
      setup(b) {
        b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (a) =>
          /zod[\\/]v4[\\/](classic|core)[\\/]/.test(a.importer) ? { path: 'zod-locales', namespace: 'empty' } : undefined,
        );
        b.onLoad({ filter: /.*/, namespace: 'empty' }, () => ({ contents: 'export {};', loader: 'js' }));
      },
    },
  ],
});
