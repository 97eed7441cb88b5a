#!/usr/bin/env node
// dynsup demo PREFILL worker.
//
// Serves NATS subjects dynsup-demo.<cluster>.prefill (queue group "prefill": any one replica
// answers) and dynsup-demo.<cluster>.prefill.<worker> (this replica only; decode workers use it
// after discovering prefill workers in etcd). Request {prompt}; reply
// {kv, tokens, prefill_worker, prefill_ms}.
//
// The "KV cache" is a hash chain over the prompt's tokens: entry i depends on tokens 0..i, like a
// real KV cache, and is deterministic, so the same prompt always decodes to the same text whichever
// replica served it. Hashing is iterated to cost real CPU time (~5-20 ms per request), so that load
// and queueing are visible, without making the demo slow.

import { performance } from 'node:perf_hooks';
import { runWorker, serveSubject, tokenize, sha256, codedError, log } from './lib.mjs';

/** Total hash rounds per request, spread over the tokens (at least one round per token). */
const WORK = 4096;

function computeKv(prompt) {
  const tokens = tokenize(prompt);
  const rounds = Math.max(1, Math.floor(WORK / Math.max(1, tokens.length)));
  let h = sha256('dynsup-demo-kv');
  const kv = tokens.map((tok) => {
    h = sha256(Buffer.concat([h, Buffer.from(tok)]));
    for (let r = 1; r < rounds; r++) h = sha256(h);
    return h.toString('hex', 0, 8);
  });
  return { kv, tokens: tokens.length };
}

const role = 'prefill';

await runWorker({
  role,
  defaultPort: 9200,
  subject: (env) => env.subject(role, env.worker),
  setup(ctx) {
    const { env } = ctx;
    const handle = (req, subject) => {
      if (!req || typeof req.prompt !== 'string') throw codedError('prefill request needs {prompt: string}', 'bad_request');
      const t0 = performance.now();
      const { kv, tokens } = computeKv(req.prompt);
      const ms = Math.round((performance.now() - t0) * 10) / 10;
      log('prefill', { subject, tokens, ms });
      return { kv, tokens, prefill_worker: env.worker, prefill_ms: ms };
    };
    serveSubject(ctx, env.subject(role), role, handle); // shared, queue group: one replica answers
    serveSubject(ctx, ctx.subject, null, handle); // this replica only
  },
});
