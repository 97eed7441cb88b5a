/**
 * One SSH connection to one node, on top of ssh2's Client: connect with host key verification
 * against known_hosts, run commands on channels, learn when the connection dies.
 *
 * This layer knows nothing of workers or leases: the SSH pipe (ssh-pipe.ts) runs the node agent's bridge
 * on one spawned channel, and the agent owns the workers and the lease.
 * It never logs: warnings go to `onWarning` and `SshConnection.warnings`, failures are `SshError`s.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';
import ssh2 from 'ssh2';
import type { ClientChannel, ConnectConfig, ParsedKey, ServerHostKeyAlgorithm } from 'ssh2';
import {
  fingerprintSha256,
  formatKnownHostsLine,
  knownHostsName,
  knownKeyTypes,
  lookupHostKey,
  parseKnownHosts,
  parseSshPublicKeyBlob,
  type HostKeyLookup,
  type KnownHostEntry,
} from './known-hosts.js';
import { shellQuote } from '../../util/shell-quote.js';
import { DynsupError, type ErrorCode } from '../../util/errors.js';

// ssh2 is CommonJS and `utils` is not visible to Node's named-export detection: take both off the default.
const { Client, utils: sshUtils } = ssh2;
type SshClient = InstanceType<typeof Client>;

/** Stable codes (listed with the others in util/errors.ts); the transport and scripts match on them. */
export type SshErrorCode = Extract<ErrorCode, `E_SSH_${string}`>;

export class SshError extends DynsupError<SshErrorCode> {
  /** Node name from the options, as used in the cluster config. */
  readonly node: string;
  /** `user@host:port` */
  readonly target: string;
  constructor(code: SshErrorCode, node: string, target: string, reason: string, cause?: unknown) {
    super(code, `node ${node} (${target}): ${reason}`, cause === undefined ? undefined : { cause });
    this.name = 'SshError';
    this.node = node;
    this.target = target;
  }
}

export type HostKeyCheck = 'strict' | 'accept-new' | 'off';

export interface SshConnectOptions {
  /** Node name, only for messages. */
  readonly node: string;
  readonly host: string;
  /** Default 22. */
  readonly port?: number;
  readonly user: string;
  /**
   * Private key file (OpenSSH or PEM format, unencrypted; `~/` is expanded). When unset, the agent is
   * used if there is one, else the first of ~/.ssh/id_ed25519, id_ecdsa, id_rsa that exists.
   */
  readonly identityFile?: string;
  /** ssh-agent socket, used only without identityFile. Default: $SSH_AUTH_SOCK. '' disables the agent. */
  readonly agent?: string;
  /** Default ~/.ssh/known_hosts. */
  readonly knownHosts?: string;
  /** Default 'strict'. */
  readonly hostKeyCheck?: HostKeyCheck;
  /** accept-new writes hashed (`|1|...`) lines, like `HashKnownHosts yes`. Default false. */
  readonly hashKnownHosts?: boolean;
  /** Milliseconds between keepalives once connected; 0 disables them. Default 15000. */
  readonly keepaliveInterval?: number;
  /** Unanswered keepalives before the connection is declared dead (E_SSH_TIMEOUT). Default 3. */
  readonly keepaliveCountMax?: number;
  /** Milliseconds from TCP connect to logged in. Default 20000. */
  readonly readyTimeout?: number;
  /**
   * Channels (exec/spawn) open at once; more wait in FIFO order. Default 10, OpenSSH's default
   * MaxSessions: above the server's limit a channel is refused outright (E_SSH_CHANNEL).
   * Spawned channels hold their slot until they close.
   */
  readonly maxChannels?: number;
  /** Called for each warning as it happens (also kept in `SshConnection.warnings`). */
  readonly onWarning?: (warning: SshWarning) => void;
}

export interface SshWarning {
  /** `hostkey-unchecked`: hostKeyCheck is off. `hostkey-added`: accept-new recorded a new key. */
  readonly kind: 'hostkey-unchecked' | 'hostkey-added';
  readonly message: string;
}

export interface ExecOptions {
  /** Written to the command's stdin, which is then closed. Without it stdin is closed at once. */
  readonly stdin?: string | Buffer;
  /**
   * Aborting rejects at once with the signal's reason, sends SIGTERM to the remote command and closes
   * the channel. The SIGTERM is best effort (see signalChannel: sshd ignores it on root logins), so a
   * command that does not notice its output going away may keep running on the node.
   */
  readonly signal?: AbortSignal;
}

export interface ExecResult {
  /** Exit status, or null when the command was killed by a signal. */
  readonly code: number | null;
  /** Name of the signal that killed the command (`SIGKILL`), as reported by the remote sshd. */
  readonly signal: NodeJS.Signals | null;
  readonly stdout: Buffer;
  readonly stderr: Buffer;
}

export interface SshConnection {
  readonly node: string;
  /** `user@host:port` */
  readonly target: string;
  /** The host key the server presented. */
  readonly hostKey: { readonly keyType: string; readonly fingerprint: string };
  readonly warnings: readonly SshWarning[];
  /** False once the connection closed, for whatever reason. */
  readonly isOpen: boolean;
  /** Resolves when the connection closes: undefined after `end()`, else an SshError saying why. Never rejects. */
  readonly closed: Promise<Error | undefined>;
  /** Run a command (parsed by the user's login shell) and collect its output. */
  exec(command: string, options?: ExecOptions): Promise<ExecResult>;
  /**
   * Start a command and hand over its channel: the caller reads `channel` (stdout) and `channel.stderr`,
   * writes/ends stdin, and gets 'exit' (code, or null + signal name) then 'close'. The signal only
   * cancels waiting for a channel slot and the channel opening.
   * The caller must consume stdout (a 'data' listener or `resume()`): like any Node stream, the channel
   * emits 'close' only after its output was read, and its channel slot is only freed on 'close'.
   */
  spawn(command: string, options?: { readonly signal?: AbortSignal }): Promise<ClientChannel>;
  /**
   * Atomically replace `path` on the node with `content`, created with `mode` (e.g. 0o600): written to
   * a temp file beside it under umask 077, chmod'ed, then renamed, so readers never see it partial or
   * with wider permissions. The directory must exist.
   */
  writeFile(path: string, content: string | Buffer, mode: number, options?: { readonly signal?: AbortSignal }): Promise<void>;
  on(event: 'close', listener: (err: Error | undefined) => void): this;
  off(event: 'close', listener: (err: Error | undefined) => void): this;
  /** Close gracefully; resolves once closed. Channels still open are torn down by the close. */
  end(): Promise<void>;
}

const DEFAULTS = {
  port: 22,
  hostKeyCheck: 'strict' as HostKeyCheck,
  keepaliveInterval: 15_000,
  keepaliveCountMax: 3,
  readyTimeout: 20_000,
  maxChannels: 10,
};

/** Options with defaults applied and paths resolved. */
interface Resolved {
  readonly node: string;
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly target: string;
  readonly knownHosts: string;
  readonly hostKeyCheck: HostKeyCheck;
  readonly hashKnownHosts: boolean;
  readonly keepaliveInterval: number;
  readonly keepaliveCountMax: number;
  readonly readyTimeout: number;
  readonly maxChannels: number;
  readonly warn: (warning: SshWarning) => void;
  readonly warnings: SshWarning[];
  readonly fail: (code: SshErrorCode, reason: string, cause?: unknown) => SshError;
}

/** How we log in: one private key, or the agent. */
type Auth =
  { readonly kind: 'key'; readonly file: string; readonly key: Buffer; readonly describe: string } | { readonly kind: 'agent'; readonly socket: string };

/**
 * Connect and log in. Rejects with an SshError, or with `signal.reason` when aborted (the half-open
 * connection is destroyed).
 */
export async function connectSsh(options: SshConnectOptions, signal?: AbortSignal): Promise<SshConnection> {
  signal?.throwIfAborted();
  const settings = resolveOptions(options);
  const auth = await resolveAuth(options, settings);
  const entries = settings.hostKeyCheck === 'off' ? [] : await readKnownHosts(settings);
  signal?.throwIfAborted();
  return handshake(settings, auth, entries, signal);
}

function resolveOptions(options: SshConnectOptions): Resolved {
  const port = options.port ?? DEFAULTS.port;
  const hostPart = options.host.includes(':') ? `[${options.host}]` : options.host;
  const target = `${options.user}@${hostPart}:${port}`;
  const warnings: SshWarning[] = [];
  return {
    node: options.node,
    host: options.host,
    port,
    user: options.user,
    target,
    knownHosts: expandHome(options.knownHosts ?? join(homedir(), '.ssh', 'known_hosts')),
    hostKeyCheck: options.hostKeyCheck ?? DEFAULTS.hostKeyCheck,
    hashKnownHosts: options.hashKnownHosts ?? false,
    keepaliveInterval: options.keepaliveInterval ?? DEFAULTS.keepaliveInterval,
    keepaliveCountMax: options.keepaliveCountMax ?? DEFAULTS.keepaliveCountMax,
    readyTimeout: options.readyTimeout ?? DEFAULTS.readyTimeout,
    maxChannels: Math.max(1, options.maxChannels ?? DEFAULTS.maxChannels),
    warnings,
    warn: (w) => {
      warnings.push(w);
      options.onWarning?.(w);
    },
    fail: (code, reason, cause) => new SshError(code, options.node, target, reason, cause),
  };
}

function expandHome(p: string): string {
  if (p === '~') return homedir();
  return resolvePath(p.startsWith('~/') ? join(homedir(), p.slice(2)) : p);
}

// ---------------------------------------------------------------------------------------------
// Identity

const DEFAULT_IDENTITIES = ['id_ed25519', 'id_ecdsa', 'id_rsa'];

async function resolveAuth(options: SshConnectOptions, settings: Resolved): Promise<Auth> {
  if (options.identityFile !== undefined) return loadIdentity(expandHome(options.identityFile), settings);
  const socket = options.agent ?? process.env['SSH_AUTH_SOCK'] ?? '';
  if (socket !== '') return { kind: 'agent', socket };
  // Same fallback as ssh(1), so "ssh works from my shell" also holds here.
  for (const name of DEFAULT_IDENTITIES) {
    const file = join(homedir(), '.ssh', name);
    try {
      return await loadIdentity(file, settings);
    } catch (err) {
      if (!(err instanceof SshError && (err.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT')) throw err;
    }
  }
  throw settings.fail(
    'E_SSH_IDENTITY',
    `no identity to log in with: no identityFile set, no ssh-agent (SSH_AUTH_SOCK unset), and none of ~/.ssh/{${DEFAULT_IDENTITIES.join(',')}} exists`,
  );
}

async function loadIdentity(file: string, settings: Resolved): Promise<Auth> {
  let key: Buffer;
  try {
    key = await readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw settings.fail('E_SSH_IDENTITY', `cannot read identity file ${file} (${code})`, err);
  }
  // Parse here, not in ssh2's connect(): it would throw a bare Error from inside the Client.
  const parsed = sshUtils.parseKey(key);
  if (parsed instanceof Error) {
    const encrypted = /encrypted|passphrase/i.test(parsed.message);
    const reason = encrypted
      ? `identity file ${file} is passphrase-protected; load it into ssh-agent (ssh-add) and leave identityFile unset`
      : `identity file ${file} is not a usable private key (${parsed.message})`;
    throw settings.fail('E_SSH_IDENTITY', reason, parsed);
  }
  const first: ParsedKey | undefined = Array.isArray(parsed) ? (parsed[0] as ParsedKey | undefined) : parsed;
  if (first === undefined || !first.isPrivateKey()) {
    throw settings.fail('E_SSH_IDENTITY', `identity file ${file} holds no private key (a .pub file?)`);
  }
  return { kind: 'key', file, key, describe: `${first.type} ${fingerprintSha256(first.getPublicSSH())}` };
}

// ---------------------------------------------------------------------------------------------
// Host keys

async function readKnownHostsText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

async function readKnownHosts(settings: Resolved): Promise<KnownHostEntry[]> {
  try {
    return parseKnownHosts(await readKnownHostsText(settings.knownHosts), settings.knownHosts);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw settings.fail('E_SSH_HOSTKEY_UNKNOWN', `cannot read known_hosts file ${settings.knownHosts} (${code})`, err);
  }
}

/** Host key algorithms each known_hosts key type can be used with, best first. */
const ALGOS_FOR_KEY_TYPE: Readonly<Record<string, readonly ServerHostKeyAlgorithm[]>> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};
/** ssh2's own default order (ed25519 is there on every Node >= 20). */
const DEFAULT_HOST_KEY_ALGOS: readonly ServerHostKeyAlgorithm[] = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'rsa-sha2-512',
  'rsa-sha2-256',
  'ssh-rsa',
];

/**
 * Ask for the key types known_hosts already has for this host first, as ssh(1) does. Without this,
 * a host recorded with only its ECDSA key (old OpenSSH default) would present ed25519 and be refused
 * as a mismatch.
 */
function preferredHostKeyAlgos(entries: readonly KnownHostEntry[], settings: Resolved): ServerHostKeyAlgorithm[] | undefined {
  const preferred = knownKeyTypes(entries, settings.host, settings.port).flatMap((t) => ALGOS_FOR_KEY_TYPE[t] ?? []);
  if (preferred.length === 0) return undefined;
  return [...preferred, ...DEFAULT_HOST_KEY_ALGOS.filter((a) => !preferred.includes(a))];
}

/** accept-new appends are serialized per file, so parallel connects to one host add one line. */
const knownHostsLocks = new Map<string, Promise<unknown>>();

function withFileLock<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const prev = knownHostsLocks.get(file) ?? Promise.resolve();
  const next = prev.then(fn, fn);
  const tail = next.catch(() => undefined);
  knownHostsLocks.set(file, tail);
  void tail.then(() => {
    if (knownHostsLocks.get(file) === tail) knownHostsLocks.delete(file);
  });
  return next;
}

/** Record an unknown key; re-checks under the lock, since another connect may have written meanwhile. */
function addKnownHost(settings: Resolved, keyType: string, keyBase64: string): Promise<HostKeyLookup | 'added'> {
  return withFileLock(settings.knownHosts, async () => {
    const text = await readKnownHostsText(settings.knownHosts);
    const again = lookupHostKey(parseKnownHosts(text, settings.knownHosts), settings.host, settings.port, keyType, keyBase64);
    if (again.status !== 'unknown') return again;
    const line = formatKnownHostsLine(settings.host, settings.port, keyType, keyBase64, { hashed: settings.hashKnownHosts });
    await mkdir(dirname(settings.knownHosts), { recursive: true, mode: 0o700 });
    // A last line without its newline would otherwise get our entry glued onto it.
    const sep = text !== '' && !text.endsWith('\n') ? '\n' : '';
    await appendFile(settings.knownHosts, `${sep}${line}\n`);
    return 'added';
  });
}

function where(entry: KnownHostEntry): string {
  return `${entry.file}:${entry.line}`;
}

function describeKey(keyType: string, keyBase64: string): string {
  return `${keyType} ${fingerprintSha256(keyBase64)}`;
}

/** Decide on the presented key. Resolves undefined to accept, or the SshError to refuse with. */
async function verifyHostKey(settings: Resolved, entries: readonly KnownHostEntry[], blob: Buffer): Promise<SshError | undefined> {
  let keyType: string;
  let keyBase64: string;
  try {
    ({ keyType, keyBase64 } = parseSshPublicKeyBlob(blob));
  } catch (err) {
    return settings.fail('E_SSH_HOSTKEY_MISMATCH', `server sent a malformed host key (${(err as Error).message})`, err);
  }
  const presented = describeKey(keyType, keyBase64);
  if (settings.hostKeyCheck === 'off') {
    settings.warn({
      kind: 'hostkey-unchecked',
      message: `node ${settings.node} (${settings.target}): host key checking is off; accepted ${presented} unverified`,
    });
    return undefined;
  }
  let lookup: HostKeyLookup | 'added' = lookupHostKey(entries, settings.host, settings.port, keyType, keyBase64);
  if (lookup.status === 'unknown' && settings.hostKeyCheck === 'accept-new') {
    try {
      lookup = await addKnownHost(settings, keyType, keyBase64);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      return settings.fail('E_SSH_HOSTKEY_UNKNOWN', `host key ${presented} is new and could not be added to ${settings.knownHosts} (${code})`, err);
    }
    if (lookup === 'added') {
      settings.warn({
        kind: 'hostkey-added',
        message: `node ${settings.node} (${settings.target}): added host key ${presented} to ${settings.knownHosts} (accept-new)`,
      });
      return undefined;
    }
  }
  return hostKeyVerdict(settings, lookup, presented);
}

function hostKeyVerdict(settings: Resolved, lookup: HostKeyLookup, presented: string): SshError | undefined {
  const name = knownHostsName(settings.host, settings.port);
  switch (lookup.status) {
    case 'ok':
      return undefined;
    case 'revoked':
      return settings.fail('E_SSH_HOSTKEY_REVOKED', `host key ${presented} is marked @revoked in ${lookup.entry ? where(lookup.entry) : settings.knownHosts}`);
    case 'mismatch': {
      const recorded = lookup.known.map((e) => `${where(e)} has ${describeKey(e.keyType, e.keyBlob.toString('base64'))}`).join('; ');
      return settings.fail(
        'E_SSH_HOSTKEY_MISMATCH',
        `host key mismatch: server sent ${presented} but ${recorded} ` +
          `(someone may be intercepting the connection, or the host was reinstalled: then remove the old key with ssh-keygen -R '${name}' -f ${settings.knownHosts})`,
      );
    }
    case 'unknown':
      return settings.fail('E_SSH_HOSTKEY_UNKNOWN', `host key not in ${settings.knownHosts} (${presented})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake

/** ssh2 reports some errors and then carries on with the next auth method; those are not failures. */
function isRecoverable(err: SshLibError): boolean {
  return err.level === 'agent' || (err.level === 'client-authentication' && /^Error (while )?signing/.test(err.message));
}

/** ssh2 errors carry `level` (where it failed) and sometimes a numeric disconnect `code`. */
type SshLibError = Error & { level?: string; code?: string | number };

const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);
const SOCKET_REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused',
  EHOSTUNREACH: 'no route to host',
  ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'host name not found',
  EAI_AGAIN: 'host name lookup failed (temporary)',
};
/** SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE (RFC 4253 11.1): e.g. sshd's MaxAuthTries. */
const DISCONNECT_NO_MORE_AUTH = 14;

function describeAuth(auth: Auth, settings: Resolved, notes: readonly string[]): string {
  const tried =
    auth.kind === 'key'
      ? `server refused key ${auth.file} (${auth.describe}) for user ${settings.user}`
      : `server accepted no key from ssh-agent ${auth.socket} for user ${settings.user}`;
  return `authentication failed: ${tried}${notes.length > 0 ? ` (${notes.join('; ')})` : ''}`;
}

function mapConnectError(err: SshLibError, settings: Resolved, auth: Auth, authNotes: readonly string[]): SshError {
  const code = typeof err.code === 'string' ? err.code : undefined;
  switch (err.level) {
    case 'client-socket':
      if (code !== undefined && UNREACHABLE_CODES.has(code)) {
        return settings.fail('E_SSH_UNREACHABLE', `cannot reach ${settings.host}:${settings.port}: ${SOCKET_REASONS[code] ?? err.message} (${code})`, err);
      }
      if (code === 'ETIMEDOUT') return settings.fail('E_SSH_TIMEOUT', `TCP connect to ${settings.host}:${settings.port} timed out`, err);
      return settings.fail('E_SSH_CLOSED', `connection failed during login: ${err.message}`, err);
    case 'client-dns':
      return settings.fail('E_SSH_UNREACHABLE', `cannot resolve ${settings.host}: ${err.message}`, err);
    case 'client-timeout':
      return settings.fail(
        'E_SSH_TIMEOUT',
        `not logged in within ${settings.readyTimeout / 1000}s (readyTimeout): the server accepted TCP but did not complete SSH`,
        err,
      );
    case 'client-authentication':
      return settings.fail('E_SSH_AUTH', describeAuth(auth, settings, authNotes), err);
    case 'handshake':
      return settings.fail('E_SSH_CLOSED', `SSH handshake failed: ${err.message}`, err);
    case 'protocol':
      return settings.fail('E_SSH_CLOSED', `connection closed before the SSH handshake (${err.message}; is sshd listening on port ${settings.port}?)`, err);
  }
  if (typeof err.code === 'number') {
    // A disconnect message from the server.
    if (err.code === DISCONNECT_NO_MORE_AUTH || /auth/i.test(err.message)) {
      return settings.fail('E_SSH_AUTH', describeAuth(auth, settings, [...authNotes, `server said: ${err.message}`]), err);
    }
    return settings.fail('E_SSH_CLOSED', `server disconnected during login: ${err.message}`, err);
  }
  return settings.fail('E_SSH_CLOSED', `connection failed during login: ${err.message}`, err);
}

function buildConfig(settings: Resolved, auth: Auth, entries: readonly KnownHostEntry[], hostVerifier: ConnectConfig['hostVerifier']): ConnectConfig {
  const config: ConnectConfig = {
    host: settings.host,
    port: settings.port,
    username: settings.user,
    readyTimeout: settings.readyTimeout,
    keepaliveInterval: settings.keepaliveInterval,
    keepaliveCountMax: settings.keepaliveCountMax,
    hostVerifier,
  };
  if (auth.kind === 'key') config.privateKey = auth.key;
  else config.agent = auth.socket;
  const algos = preferredHostKeyAlgos(entries, settings);
  if (algos !== undefined) config.algorithms = { serverHostKey: algos };
  return config;
}

function handshake(settings: Resolved, auth: Auth, entries: readonly KnownHostEntry[], signal: AbortSignal | undefined): Promise<SshConnection> {
  return new Promise<SshConnection>((resolve, reject) => {
    const client = new Client();
    let settled = false;
    let hostKeyError: SshError | undefined;
    let hostKey: { keyType: string; fingerprint: string } | undefined;
    const authNotes: string[] = [];

    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      fn();
    };
    const failWith = (err: unknown): void =>
      settle(() => {
        reject(err);
        client.destroy();
      });
    const onAbort = (): void => failWith(signal?.reason);

    // Must stay a plain (non-async) function returning undefined: ssh2 treats any return value other
    // than undefined as the verdict, and a Promise is truthy, i.e. "accept". ssh2 calls it again on
    // every re-key, for the life of the connection. The verdict is always given asynchronously, as
    // ssh2's async path expects.
    let accepted: Buffer | undefined;
    const hostVerifier = (blob: Buffer, verify: (ok: boolean) => void): void => {
      if (accepted !== undefined) {
        // Re-key: the server must keep the key we checked; no second look at known_hosts, no new warning.
        const same = accepted.equals(blob);
        process.nextTick(() => verify(same));
        return;
      }
      if (settled) {
        // Aborted or failed meanwhile: do not let accept-new write for a connection nobody wants.
        process.nextTick(() => verify(false));
        return;
      }
      try {
        const { keyType, keyBase64 } = parseSshPublicKeyBlob(blob);
        hostKey = { keyType, fingerprint: fingerprintSha256(keyBase64) };
      } catch {
        // verifyHostKey reports the malformed key
      }
      verifyHostKey(settings, entries, blob).then(
        (refusal) => {
          hostKeyError = refusal;
          if (refusal === undefined) accepted = Buffer.from(blob);
          verify(refusal === undefined);
        },
        (err: unknown) => {
          hostKeyError = settings.fail('E_SSH_HOSTKEY_UNKNOWN', `host key check failed: ${String(err)}`, err);
          verify(false);
        },
      );
    };

    // The 'error' listener stays for the client's lifetime: an EventEmitter 'error' without one throws.
    client.on('error', (err: SshLibError) => {
      if (settled) return;
      if (isRecoverable(err)) {
        authNotes.push(err.message);
        return;
      }
      failWith(hostKeyError ?? mapConnectError(err, settings, auth, authNotes));
    });
    client.on('close', () => {
      failWith(hostKeyError ?? settings.fail('E_SSH_CLOSED', 'connection closed during login'));
    });
    client.once('ready', () => {
      settle(() => resolve(new Connection(client, settings, hostKey ?? { keyType: 'unknown', fingerprint: '' })));
    });

    if (signal !== undefined) {
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
    }
    try {
      client.connect(buildConfig(settings, auth, entries, hostVerifier));
    } catch (err) {
      failWith(settings.fail('E_SSH_CLOSED', `cannot start connection: ${(err as Error).message}`, err));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Channel slots

interface Waiter {
  readonly grant: () => void;
  readonly fail: (err: Error) => void;
}

/**
 * FIFO counting semaphore; waiting can be abandoned through a signal, and ends with an error when
 * the connection dies (slots held by unread channels might otherwise never come back).
 */
class Slots {
  private free: number;
  private readonly waiters: Waiter[] = [];
  private dead: Error | undefined;
  constructor(size: number) {
    this.free = size;
  }

  acquire(signal: AbortSignal | undefined): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.dead !== undefined) return Promise.reject(this.dead);
    if (this.free > 0) {
      this.free--;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.releaser());
        },
        fail: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal?.reason);
      };
      this.waiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Fail every waiter and every later acquire with `err`. */
  close(err: Error): void {
    this.dead = err;
    for (const w of this.waiters.splice(0)) w.fail(err);
  }

  /** A release function that only counts once, however often it is called. */
  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.waiters.shift();
      if (next !== undefined) next.grant();
      else this.free++;
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Connection

/** The parts of ssh2's channel internals that signalChannel needs (not in its typings). */
interface ChannelInternals {
  readonly type?: string;
  readonly outgoing?: { readonly id?: number; readonly state?: string };
  readonly _client?: { readonly _protocol?: { signal?: (id: number, name: string) => void } };
}

/**
 * Ask the server to signal the command running on a session channel (`TERM`, `KILL`; a `SIG` prefix
 * is dropped). OpenSSH's sshd delivers it with killpg() to the command's process group -- except for
 * root logins, where it refuses ("session signalling requires privilege separation": sshd runs root
 * sessions without its privsep child). So this is best effort; to reliably stop something, kill it by
 * pid/pgid on the node (dynsup's workers are stopped by their node agent, never through this). Returns
 * false if the request could not be sent (channel closing or closed); true says nothing about delivery
 * (no reply is asked for).
 *
 * Why not channel.signal(): ssh2 silently drops the request once we sent EOF on the channel, which
 * exec() always does at once, although SSH allows channel requests after EOF (RFC 4254 5.3). So the
 * request goes to ssh2's protocol object directly; the shape is checked, so an ssh2 upgrade that
 * changes it makes this return false rather than throw.
 */
export function signalChannel(channel: ClientChannel, name: string): boolean {
  const c = channel as unknown as ChannelInternals;
  const state = c.outgoing?.state;
  const id = c.outgoing?.id;
  const protocol = c._client?._protocol;
  if (c.type !== 'session' || (state !== 'open' && state !== 'eof') || typeof id !== 'number' || typeof protocol?.signal !== 'function') {
    return false;
  }
  protocol.signal(id, name.replace(/^SIG/, ''));
  return true;
}

class Connection implements SshConnection {
  readonly node: string;
  readonly target: string;
  readonly hostKey: { readonly keyType: string; readonly fingerprint: string };
  readonly warnings: readonly SshWarning[];
  readonly closed: Promise<Error | undefined>;

  private readonly client: SshClient;
  private readonly settings: Resolved;
  private readonly slots: Slots;
  private readonly listeners = new Set<(err: Error | undefined) => void>();
  /** Exit status of each exec channel, recorded from the moment it opens (see execRequest). */
  private readonly exits = new WeakMap<ClientChannel, { code: number | null; signal: NodeJS.Signals | null }>();
  private open = true;
  private endedByUs = false;
  private lastError: SshLibError | undefined;
  private closeError: Error | undefined;
  private resolveClosed!: (err: Error | undefined) => void;

  constructor(client: SshClient, settings: Resolved, hostKey: { keyType: string; fingerprint: string }) {
    this.client = client;
    this.settings = settings;
    this.node = settings.node;
    this.target = settings.target;
    this.hostKey = hostKey;
    this.warnings = settings.warnings;
    this.slots = new Slots(settings.maxChannels);
    this.closed = new Promise((r) => (this.resolveClosed = r));
    client.on('error', (err: SshLibError) => (this.lastError = err));
    client.on('close', () => this.onClose());
  }

  get isOpen(): boolean {
    return this.open;
  }

  on(event: 'close', listener: (err: Error | undefined) => void): this {
    if (event === 'close') this.listeners.add(listener);
    return this;
  }

  off(event: 'close', listener: (err: Error | undefined) => void): this {
    if (event === 'close') this.listeners.delete(listener);
    return this;
  }

  private onClose(): void {
    if (!this.open) return;
    this.open = false;
    this.closeError = this.endedByUs ? undefined : this.deathError();
    this.slots.close(this.closedError());
    this.resolveClosed(this.closeError);
    for (const l of [...this.listeners]) l(this.closeError);
    this.listeners.clear();
  }

  private deathError(): SshError {
    const err = this.lastError;
    if (err?.level === 'client-timeout') {
      const s = this.settings.keepaliveInterval / 1000;
      return this.settings.fail('E_SSH_TIMEOUT', `connection lost: ${this.settings.keepaliveCountMax} keepalives (every ${s}s) went unanswered`, err);
    }
    return this.settings.fail('E_SSH_CLOSED', err ? `connection closed: ${err.message}` : 'connection closed by the remote side', err);
  }

  /** The error for using a dead connection: why it died, or a plain "closed" after end(). */
  private closedError(): Error {
    return this.closeError ?? this.settings.fail('E_SSH_CLOSED', 'connection was closed (end() called)');
  }

  end(): Promise<void> {
    if (this.open) {
      this.endedByUs = true;
      this.client.end();
      // end() is a polite DISCONNECT; a peer that never closes its side must not hang us.
      const force = setTimeout(() => this.client.destroy(), 5_000);
      force.unref();
      void this.closed.then(() => clearTimeout(force));
    }
    return this.closed.then(() => undefined);
  }

  /** Wait for a slot, then open a session channel running `command`. The slot is freed when it closes. */
  private async openChannel(command: string, signal: AbortSignal | undefined): Promise<ClientChannel> {
    if (!this.open) throw this.closedError();
    const release = await this.slots.acquire(signal);
    try {
      return await this.execRequest(command, signal, (channel) => channel.once('close', release));
    } catch (err) {
      release();
      throw err;
    }
  }

  /**
   * `opened` runs in ssh2's callback, before the promise settles: a short command's output, exit status
   * and close can arrive in the same read as the channel confirmation, and are emitted before an
   * `await` would resume. Its exit status is recorded here for collect().
   */
  private execRequest(command: string, signal: AbortSignal | undefined, opened: (channel: ClientChannel) => void): Promise<ClientChannel> {
    return new Promise<ClientChannel>((resolve, reject) => {
      signal?.throwIfAborted();
      if (!this.open) return reject(this.closedError());
      let abandoned = false;
      const onAbort = (): void => {
        abandoned = true;
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (err: Error | undefined, channel: ClientChannel | undefined): void => {
        signal?.removeEventListener('abort', onAbort);
        if (abandoned) {
          channel?.close(); // too late for the caller; do not leave it running
          return;
        }
        if (err !== undefined || channel === undefined) return reject(this.channelError(err));
        channel.once('exit', (code: number | null, sig?: string) => {
          this.exits.set(channel, { code: code ?? null, signal: (sig as NodeJS.Signals | undefined) ?? null });
        });
        opened(channel);
        resolve(channel);
      };
      try {
        this.client.exec(command, (err, channel) => done(err ?? undefined, channel));
      } catch (err) {
        done(err as Error, undefined); // ssh2 throws 'Not connected' synchronously
      }
    });
  }

  private channelError(err: Error | undefined): Error {
    // 'Not connected': ssh2 saw the socket go before we saw its 'close'.
    if (!this.open || err?.message === 'Not connected') return this.closedError();
    const msg = err?.message ?? 'no channel';
    const hint = /open fail/i.test(msg) ? ' (sshd MaxSessions reached? lower maxChannels or raise MaxSessions)' : '';
    return this.settings.fail('E_SSH_CHANNEL', `server refused to run a command: ${msg}${hint}`, err);
  }

  async exec(command: string, options: ExecOptions = {}): Promise<ExecResult> {
    const channel = await this.openChannel(command, options.signal);
    return this.collect(channel, options);
  }

  private collect(channel: ClientChannel, options: ExecOptions): Promise<ExecResult> {
    return new Promise<ExecResult>((resolve, reject) => {
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      let finished = false;
      const signal = options.signal;

      const finish = (fn: () => void): void => {
        if (finished) return;
        finished = true;
        signal?.removeEventListener('abort', onAbort);
        this.off('close', onConnClose);
        fn();
      };
      const onAbort = (): void =>
        finish(() => {
          signalChannel(channel, 'TERM');
          channel.close();
          reject(signal?.reason);
        });
      // Channels are also closed by ssh2 when the connection dies, but say why rather than "no exit status".
      const onConnClose = (): void => finish(() => reject(this.closedError()));

      channel.on('data', (d: Buffer) => stdout.push(d));
      channel.stderr.on('data', (d: Buffer) => stderr.push(d));
      channel.on('close', () => {
        const exit = this.exits.get(channel);
        if (exit === undefined) {
          finish(() => reject(this.open ? this.settings.fail('E_SSH_CHANNEL', 'command channel closed without an exit status') : this.closedError()));
          return;
        }
        const e = exit;
        finish(() => resolve({ code: e.code, signal: e.signal, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr) }));
      });
      this.on('close', onConnClose);
      if (signal !== undefined) {
        if (signal.aborted) return onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
      }
      // Always send EOF: a command reading stdin must not wait for input that never comes.
      if (options.stdin !== undefined) channel.end(options.stdin);
      else channel.end();
    });
  }

  spawn(command: string, options: { readonly signal?: AbortSignal } = {}): Promise<ClientChannel> {
    return this.openChannel(command, options.signal);
  }

  async writeFile(path: string, content: string | Buffer, mode: number, options: { readonly signal?: AbortSignal } = {}): Promise<void> {
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new RangeError(`writeFile: bad mode ${mode}`);
    // exec + cat rather than SFTP: works where the sftp subsystem is disabled, and gives an atomic
    // rename with the mode set before the name appears. Run under sh explicitly: the login shell may
    // not be POSIX (csh, fish). umask 077 keeps the temp file private until chmod (specs hold tokens).
    const quotedPath = shellQuote(path);
    const script =
      `umask 077; t=${quotedPath}.dynsup-tmp.$$; ` +
      `if cat >"$t" && chmod ${mode.toString(8).padStart(4, '0')} "$t" && mv -f "$t" ${quotedPath}; then exit 0; fi; ` +
      `rm -f "$t"; exit 1`;
    const signal = options.signal;
    const result = await this.exec(`sh -c ${shellQuote(script)}`, signal === undefined ? { stdin: content } : { stdin: content, signal });
    if (result.code !== 0) {
      const why = result.stderr.toString('utf8').trim() || `exit ${result.code ?? result.signal}`;
      throw this.settings.fail('E_SSH_REMOTE', `cannot write ${path}: ${why}`);
    }
  }
}
