/**
 * Who may act through the web view: holders of the cluster's control key, the secret the CLI signs its
 * control requests with (credentials.json's controlKey, control-auth.ts); not the NATS password, which
 * workers hold with controlPlane.nats.workerCredentials. The page sends it in one header (a browser on
 * plain HTTP to another host has no WebCrypto to sign with); this is the one check.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Credentials } from '../controlplane/credentials.js';

/** The request header carrying the secret. */
export const CONTROL_SECRET_HEADER = 'x-dynsup-secret';

export type ControlAuthorization = { readonly ok: true } | { readonly ok: false; readonly status: 401 | 403; readonly reason: string };

export function authorizeControl(presented: string | readonly string[] | undefined, creds: Credentials): ControlAuthorization {
  const value = Array.isArray(presented) ? presented[0] : presented;
  if (typeof value !== 'string' || value === '') {
    return {
      ok: false,
      status: 401,
      reason: "read-only: no credentials given (enter the cluster's control secret: controlKey in <stateDir>/run/credentials.json)",
    };
  }
  // Compared as digests: equal lengths, and no early exit that tells how much of a guess was right.
  const digest = (s: string) => createHash('sha256').update(s).digest();
  if (!timingSafeEqual(digest(value), digest(creds.controlKey))) {
    return { ok: false, status: 403, reason: "refused: wrong credentials (not the secret in this cluster's credentials.json)" };
  }
  return { ok: true };
}
