#!/usr/bin/env node
// dynsup demo DECODE worker.
//
// Serves NATS subjects dynsup-demo.<cluster>.decode (queue group "decode") and
// dynsup-demo.<cluster>.decode.<worker> (this replica only; what the frontend uses after discovery).
// Request {prompt, max_tokens}. For each request it:
//   1. lists the prefill workers registered in etcd (dynsup-demo/<cluster>/prefill/),
//   2. NATS-requests one of them, on its registered subject, for the prompt's "KV cache"
//      (round-robin; a failed prefill worker is retried once on another one),
//   3. "generates" max_tokens pseudo-words deterministically from the KV.
// Reply {text, decode_worker, prefill_worker, usage}, or {error:{message, code}} (e.g. code
// "no_prefill_worker" when none is registered).

import { performance } from 'node:perf_hooks';
import { runWorker, serveSubject, discover, rotation, requestJson, sha256, codedError, log } from './lib.mjs';

/** Per-attempt timeout for the prefill request; two attempts stay inside the frontend's 5s. */
const PREFILL_TIMEOUT_MS = 2000;
const MAX_TOKENS_LIMIT = 1024;

// The demo "vocabulary": generated text is a deterministic walk over these.
const WORDS = (
  'the a of to and in is that for on with as by at from cache token layer head block page prefill ' +
  'decode node worker cluster lease key value stream batch model weight tensor kernel rank shard ' +
  'queue route graph signal health replica port state grace restart ready fast slow warm cold ' +
  'bright quiet river stone cloud ember harbor lantern meadow orbit pixel quartz signal thunder'
).split(' ');

/** Deterministic text from the KV: a hash chain seeded by the whole KV, one word per step. */
function generate(kv, n) {
  let h = sha256(`dynsup-demo-decode:${kv.join(',')}`);
  const words = [];
  for (let i = 0; i < n; i++) {
    h = sha256(h);
    words.push(WORDS[h.readUInt32BE(0) % WORDS.length]);
  }
  return ` ${words.join(' ')}`; // completions continue the prompt, hence the leading space
}

const role = 'decode';
const nextPrefills = rotation();

/** Finds prefill workers in etcd and gets the KV from one of them (retrying once on another). */
async function prefill(ctx, prompt) {
  const prefills = await discover(ctx.etcd, ctx.env.prefix('prefill'));
  if (prefills.length === 0) throw codedError('no prefill worker registered in etcd', 'no_prefill_worker');
  let lastErr;
  const tried = [];
  for (const p of nextPrefills(prefills).slice(0, 2)) {
    tried.push(p.worker);
    try {
      return await requestJson(ctx.nc, p.subject, { prompt }, PREFILL_TIMEOUT_MS);
    } catch (err) {
      if (err.remote) throw err; // the worker answered with an error: another one would too
      lastErr = err; // timeout / no responders: it may have just died (its lease not yet expired)
      log('prefill worker failed', { prefill_worker: p.worker, error: err.message });
    }
  }
  throw codedError(`prefill failed on ${tried.join(', ')}: ${lastErr.message}`, 'prefill_unavailable');
}

await runWorker({
  role,
  defaultPort: 9300,
  subject: (env) => env.subject(role, env.worker),
  setup(ctx) {
    const handle = async (req, subject) => {
      const t0 = performance.now();
      if (!req || typeof req.prompt !== 'string') throw codedError('decode request needs {prompt: string}', 'bad_request');
      const maxTokens = req.max_tokens ?? 16;
      if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > MAX_TOKENS_LIMIT) {
        throw codedError(`max_tokens must be an integer in 1..${MAX_TOKENS_LIMIT}`, 'bad_request');
      }
      const pre = await prefill(ctx, req.prompt);
      const text = generate(pre.kv, maxTokens);
      const usage = { prompt_tokens: pre.tokens, completion_tokens: maxTokens, total_tokens: pre.tokens + maxTokens };
      const ms = Math.round(performance.now() - t0);
      log('decode', { subject, prefill_worker: pre.prefill_worker, ...usage, ms });
      return { text, decode_worker: ctx.env.worker, prefill_worker: pre.prefill_worker, usage };
    };
    serveSubject(ctx, ctx.env.subject(role), role, handle); // shared, queue group
    serveSubject(ctx, ctx.subject, null, handle); // this replica only
  },
});
