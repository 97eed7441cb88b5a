#!/usr/bin/env node
// dynsup demo FRONTEND: a tiny OpenAI-style HTTP API over the disaggregated graph.
//
//   GET  /health          200 only when at least one decode worker is registered in etcd
//   GET  /v1/models       the one model served ("demo", or $DEMO_MODEL)
//   POST /v1/completions  {model, prompt, max_tokens} -> OpenAI text_completion object
//
// A completion lists the decode workers registered in etcd (dynsup-demo/<cluster>/decode/),
// NATS-requests one of them on its registered subject (round-robin, 5s timeout) and, if that
// worker fails (crashed but lease not yet expired, timeout), retries once on another one.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { runWorker, discover, rotation, requestJson, readJson, sendJson, tokenize, log } from './lib.mjs';

const MODEL = process.env.DEMO_MODEL || 'demo';
const DECODE_TIMEOUT_MS = 5000;
const MAX_TOKENS_LIMIT = 1024;
const STARTED = Math.floor(Date.now() / 1000);

const role = 'frontend';
const nextDecodes = rotation();

/** OpenAI-style error body. */
function apiError(res, status, message, type, code = null) {
  sendJson(res, status, { error: { message, type, param: null, code } });
}

/** Validates the request body; returns {prompt, maxTokens, model} or an error message. */
function parseCompletion(body) {
  if (!body || typeof body !== 'object') return { error: 'request body must be a JSON object' };
  let { prompt } = body;
  // OpenAI also accepts a list of prompts; the demo serves exactly one.
  if (Array.isArray(prompt) && prompt.length === 1) prompt = prompt[0];
  if (typeof prompt !== 'string' || tokenize(prompt).length === 0) return { error: '"prompt" must be a non-empty string' };
  const maxTokens = body.max_tokens ?? 16;
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > MAX_TOKENS_LIMIT) {
    return { error: `"max_tokens" must be an integer in 1..${MAX_TOKENS_LIMIT}` };
  }
  return { prompt, maxTokens, model: body.model ?? MODEL };
}

/** Maps a decode worker's {error:{code}} to the HTTP status the client should see. */
const STATUS_BY_CODE = { bad_request: 400, no_prefill_worker: 503, prefill_unavailable: 503, etcd_unavailable: 503 };

async function completions(ctx, req, res) {
  const t0 = performance.now();
  const body = await readJson(req);
  const p = parseCompletion(body);
  if (p.error) return apiError(res, 400, p.error, 'invalid_request_error');
  if (p.model !== MODEL) return apiError(res, 404, `model "${p.model}" not found; this cluster serves "${MODEL}"`, 'invalid_request_error', 'model_not_found');
  if (!ctx.ready) return apiError(res, 503, 'frontend is not connected to the control plane', 'service_unavailable');

  let decodes;
  try {
    decodes = await discover(ctx.etcd, ctx.env.prefix('decode'));
  } catch (err) {
    log('completion rejected: etcd unavailable', { error: err.message, status: 503 });
    return apiError(res, 503, err.message, 'service_unavailable', err.code);
  }
  if (decodes.length === 0) {
    log('completion rejected: no decode worker registered', { status: 503 });
    return apiError(res, 503, 'no decode worker registered in etcd', 'service_unavailable', 'no_decode_worker');
  }

  let out = null;
  const failures = [];
  for (const d of nextDecodes(decodes).slice(0, 2)) {
    try {
      out = await requestJson(ctx.nc, d.subject, { prompt: p.prompt, max_tokens: p.maxTokens }, DECODE_TIMEOUT_MS);
      break;
    } catch (err) {
      failures.push(`${d.worker}: ${err.message}`);
      log(err.remote ? 'decode worker returned an error' : 'decode worker failed', {
        decode_worker: d.worker,
        error: err.message,
        code: err.code ?? null,
      });
      // A request error, or no prefill worker at all, would fail the same way on any decode worker.
      if (err.remote && STATUS_BY_CODE[err.code]) {
        return apiError(res, STATUS_BY_CODE[err.code], err.message, err.code === 'bad_request' ? 'invalid_request_error' : 'service_unavailable', err.code);
      }
    }
  }
  if (!out) return apiError(res, 502, `decode failed: ${failures.join('; ')}`, 'upstream_error', 'decode_unavailable');

  const created = Math.floor(Date.now() / 1000);
  const ms = Math.round(performance.now() - t0);
  log('completion', { decode_worker: out.decode_worker, prefill_worker: out.prefill_worker, ...out.usage, ms });
  sendJson(res, 200, {
    id: `cmpl-${randomBytes(12).toString('hex')}`,
    object: 'text_completion',
    created,
    model: MODEL,
    choices: [{ index: 0, text: out.text, logprobs: null, finish_reason: 'length' }],
    usage: out.usage,
    dynsup: { frontend: ctx.env.worker, decode_worker: out.decode_worker, prefill_worker: out.prefill_worker },
  });
}

await runWorker({
  role,
  defaultPort: 8000,
  async healthy(ctx) {
    const decodes = await discover(ctx.etcd, ctx.env.prefix('decode'));
    const prefills = await discover(ctx.etcd, ctx.env.prefix('prefill'));
    return {
      ok: decodes.length > 0,
      reason: 'no decode worker registered in etcd',
      decode_workers: decodes.map((d) => d.worker),
      prefill_workers: prefills.map((d) => d.worker),
    };
  },
  route(req, res, url, ctx) {
    if (url.pathname === '/v1/models') {
      if (req.method !== 'GET') return apiError(res, 405, 'use GET', 'invalid_request_error');
      return sendJson(res, 200, { object: 'list', data: [{ id: MODEL, object: 'model', created: STARTED, owned_by: 'dynsup' }] });
    }
    if (url.pathname === '/v1/completions') {
      if (req.method !== 'POST') return apiError(res, 405, 'use POST', 'invalid_request_error');
      // Tracked so that SIGTERM lets in-flight completions finish before NATS is drained.
      const p = completions(ctx, req, res);
      ctx.inflight.add(p);
      p.finally(() => ctx.inflight.delete(p)).catch(() => {});
      return p;
    }
    return apiError(res, 404, `no route ${req.method} ${url.pathname}`, 'invalid_request_error');
  },
  beforeDrain(ctx) {
    // Stop taking HTTP connections; in-flight completions are awaited by runWorker.
    if (ctx.server.listening) ctx.server.close();
    ctx.server.closeIdleConnections();
  },
});
