#!/usr/bin/env node
// `--version` answers before anything is loaded; everything else runs the bundled CLI, dist/cli-bundle/main.cjs
// (scripts/build/cli.mjs), compiled with the V8 code cache the build wrote beside it: a command then neither
// parses hundreds of modules nor compiles the functions it runs, and starts within 2x of `node -e 0`.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Script } from 'node:vm';

const argv = process.argv.slice(2);
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 20 || (major === 20 && minor < 19)) {
  // The bundle require()s ES-module packages (execa), which Node does from 20.19 on.
  process.stderr.write(`dynsup: needs Node.js 20.19 or later; this is ${process.version} (${process.execPath})\n`);
  process.exit(1);
} else if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
  process.stdout.write('dynsup 0.1.0\n');
} else {
  // `dynsup status | head -3`: the reader going away is no error of ours; end quietly, as other tools do.
  // A supervisor in the foreground (`up`) goes on supervising and only stops printing.
  process.stdout.on('error', (err) => {
    if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err;
    if (argv[0] !== 'up') process.exit(0);
  });
  // DYNSUP_CLI_BUNDLE: another build's bundle (the build's own warm-up runs, test/integration/cli-code-cache.test.ts).
  const { main, script } = loadBundle(process.env.DYNSUP_CLI_BUNDLE || fileURLToPath(new URL('../dist/cli-bundle/main.cjs', import.meta.url)));
  main(argv).then(
    (code) => {
      const cacheOut = process.env.DYNSUP_CODE_CACHE_WRITE;
      if (cacheOut) writeFileSync(cacheOut, Buffer.concat([stamp(script.buildId), script.createCachedData()]));
      process.exitCode = code;
      // Library handles (gRPC channels, sockets) must not keep a finished command alive; the unref'd
      // timer only fires if something does, after stdout has had time to drain.
      setTimeout(() => process.exit(code), 1000).unref();
    },
    (err) => {
      process.stderr.write(`dynsup: ${err?.stack ?? err}\n`);
      process.exit(1);
    },
  );
}

/**
 * The first 32 bytes of a cache file: the build id of the bundle it was made from. V8 checks a cache
 * against the source's length only; a cache from another build of the same length would run that build's
 * bytecode. The id is in the bundle's first line (scripts/build/cli.mjs), so copies keep it.
 */
function stamp(buildId) {
  return Buffer.from(String(buildId).padEnd(32, ' ').slice(0, 32));
}

/** Compiles the CommonJS bundle as Node's loader would, with the code cache when it is this bundle's. */
function loadBundle(bundle) {
  const source = readFileSync(bundle, 'utf8');
  const buildId = /^\/\* dynsup-build (\S+) \*\//.exec(source)?.[1];
  let cachedData;
  let cache = 'none';
  try {
    const file = readFileSync(`${bundle}.cache`);
    if (buildId && file.subarray(0, 32).equals(stamp(buildId))) cachedData = file.subarray(32);
    else cache = 'from another build';
  } catch {
    // No cache (not built by scripts/build/cli.mjs, or not readable): compile from source, as Node would.
  }
  const script = new Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: bundle,
    cachedData,
    // No importModuleDynamically: the bundle has no import() (scripts/build/cli.mjs says why).
  });
  script.buildId = buildId;
  // For test/integration/cli-code-cache.test.ts and for whoever wonders why a command starts slowly.
  if (cachedData) cache = script.cachedDataRejected ? 'rejected by V8 (another Node version or flags)' : 'used';
  if (process.env.DYNSUP_CODE_CACHE_REPORT) process.stderr.write(`dynsup: code cache ${cache}\n`);
  const module = { exports: {} };
  script.runInThisContext().call(module.exports, module.exports, createRequire(bundle), module, bundle, dirname(bundle));
  return { main: module.exports.main, script };
}
