/**
 * Local control channel: newline-delimited JSON over a Unix socket in <stateDir>/run (mode 0600 directory,
 * so only the owner can talk to the supervisor).
 */
import type { ClusterConfig } from '../config/types.js';
import { createConnection, createServer, type Server } from 'node:net';
import { chmod, rm } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { DynsupError, errorMessage } from '../util/errors.js';

export type ControlRequest =
  | { op: 'status' }
  | { op: 'restart'; target: string; rolling?: boolean }
  /** The client loaded and checked the file; the supervisor plans it against what runs. */
  | { op: 'apply'; cluster: ClusterConfig; dryRun: boolean }
  | { op: 'stop'; target: string }
  | { op: 'start'; target: string }
  | { op: 'scale'; group: string; count: number }
  | { op: 'tail'; target?: string | undefined; lines: number }
  | { op: 'down' };

export type ControlResponse = { ok: true; result?: unknown } | { ok: false; error: string; code?: string };

export type ControlHandler = (req: ControlRequest) => Promise<unknown>;

export async function serveControl(path: string, handler: ControlHandler): Promise<Server> {
  await rm(path, { force: true });
  const server = createServer((sock) => {
    const rl = createInterface({ input: sock });
    // A client that goes away before its answer (a timed-out `up -d` poll, a Ctrl-C'd `status`) makes the
    // answer's write fail with EPIPE; readline re-emits that on the interface, and unhandled it would kill the
    // supervisor. The socket's own handler below ignores it too.
    rl.on('error', () => undefined);
    rl.on('line', (line) => {
      let req: ControlRequest;
      try {
        req = JSON.parse(line) as ControlRequest;
      } catch {
        sock.end(`${JSON.stringify({ ok: false, error: 'bad request' })}\n`);
        return;
      }
      handler(req).then(
        (result) => sock.end(`${JSON.stringify({ ok: true, result })}\n`),
        (err) => sock.end(`${JSON.stringify({ ok: false, error: errorMessage(err), code: (err as DynsupError).code })}\n`),
      );
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  await chmod(path, 0o600);
  server.unref();
  return server;
}

export async function requestControl(path: string, req: ControlRequest, timeoutMs = 30_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new DynsupError('E_TIMEOUT', `no answer from the supervisor within ${timeoutMs / 1000}s`));
    }, timeoutMs);
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(new DynsupError('E_NOT_RUNNING', `cannot reach the supervisor at ${path}: ${err.message}`));
    });
    const rl = createInterface({ input: sock });
    rl.on('error', () => undefined); // the socket's own error handler reports it
    rl.once('line', (line) => {
      clearTimeout(timer);
      sock.destroy();
      const res = JSON.parse(line) as ControlResponse;
      if (res.ok) resolve(res.result);
      else reject(new DynsupError((res.code as never) ?? 'E_INTERNAL', res.error));
    });
    sock.write(`${JSON.stringify(req)}\n`);
  });
}
