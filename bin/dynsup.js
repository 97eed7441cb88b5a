#!/usr/bin/env node
import { main } from '../dist/cli/main.js';

main(process.argv.slice(2)).then(
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
