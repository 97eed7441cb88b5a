#!/usr/bin/env node
// `--version` answers before anything is loaded; everything else runs the bundled CLI (scripts/build/cli.mjs:
// a few files instead of hundreds of modules, so that commands start within 2x of `node -e 0`).
const argv = process.argv.slice(2);
if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
  process.stdout.write('dynsup 0.1.0\n');
} else {
  const { main } = await import('../dist/cli-bundle/main.js');
  main(argv).then(
    (code) => {
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
