// Bundles the CLI (src/cli/main.ts and what it imports) into one CommonJS file, dist/cli-bundle/main.cjs,
// and writes V8's code cache for it beside it (main.cjs.cache). bin/dynsup.js compiles the bundle with that
// cache, so that a command neither parses hundreds of modules nor compiles the functions it runs: this is
// most of what makes `dynsup status`, `logs -n` and `validate` start within 2x of `node -e 0`
// (scripts/bench/cli.mjs). CommonJS because Node 20 can give a code cache only to a vm.Script; esbuild's
// lazy module wrappers keep a command from running the top level of modules it does not use.
// The connection libraries stay outside (required from node_modules by the code that uses them, so
// commands that need none load none: test/integration/lazy-imports.test.ts). The file is at dist/<dir>/
// depth, like tsc's output, so paths relative to import.meta.url (../../bin/dynsup.js,
// ../../dist/agent/...) resolve the same.
//
//   node scripts/build/cli.mjs [OUTDIR]     (default dist/cli-bundle)
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const outdir = resolve(process.argv[2] ?? join(ROOT, 'dist/cli-bundle'));
const outfile = join(outdir, 'main.cjs');
// A cache left from another bundle must never meet this one (bin/dynsup.js also checks the build id).
mkdirSync(outdir, { recursive: true });
rmSync(`${outfile}.cache`, { force: true });

await build({
  // From the working directory's src/, like tsc (gpu-check.sh's pack builds a commit's src/ elsewhere).
  entryPoints: ['src/cli/main.ts'],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['ssh2', 'nats', 'etcd3', 'pino', 'execa'],
  // No import() may stay in the bundle: a function that V8 restores from a code cache has lost the dynamic
  // import callback (Node 20: ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING), so esbuild turns them into require().
  supported: { 'dynamic-import': false },
  // import.meta does not exist in CommonJS: the bundle's own URL stands in for every module's.
  define: { 'import.meta.url': '__dynsupBundleUrl' },
  // The first line names this build: bin/dynsup.js uses a code cache only if it was made from the same one.
  banner: { js: `/* dynsup-build ${randomBytes(12).toString('hex')} */\nconst __dynsupBundleUrl = require('node:url').pathToFileURL(__filename).href;` },
  legalComments: 'none',
  // Less to read and hash at every start.
  minify: true,
  // main.cjs.map, for `node --enable-source-maps` when a stack trace must name the source.
  sourcemap: 'linked',
  logLevel: 'warning',
  plugins: [
    {
      // zod re-exports its 40-odd message locales (340 kB) as z.locales, which dynsup never uses (its
      // messages are its own; zod's default English one is imported by zod directly): left out, they cost
      // every command nothing.
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

// The code cache holds the functions a run compiled, so it is written after commands that exercise the
// common paths: the usage text, validating the example clusters (config loading, zod, yaml, placement), and
// status and logs of a cluster never started (in a scratch state dir: they exit 1 and say so).
// bin/dynsup.js writes it when DYNSUP_CODE_CACHE_WRITE names the file; each run adds to what the file had.
const bin = join(ROOT, 'bin/dynsup.js');
const env = { ...process.env, DYNSUP_CODE_CACHE_WRITE: `${outfile}.cache`, DYNSUP_CLI_BUNDLE: outfile };
const scratch = mkdtempSync(join(tmpdir(), 'dynsup-build-'));
const local = join(ROOT, 'clusters/local.yaml');
try {
  for (const args of [
    ['--help'],
    ['validate', local],
    ['validate', join(ROOT, 'clusters/deepseek-r1-gangs.yaml'), '--json'],
    ['status', local, '--state-dir', scratch],
    ['logs', local, '-n', '10', '--state-dir', scratch],
  ]) {
    const run = spawnSync(process.execPath, [bin, ...args], { env, stdio: 'ignore' });
    if (run.status === null || run.status > 1) throw new Error(`code cache warm-up: dynsup ${args.join(' ')} ended with ${run.status ?? run.signal}`);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
