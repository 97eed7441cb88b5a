/**
 * OpenSSH known_hosts parsing and host key matching. Pure: no file or network access, so it is
 * table-testable and the connection layer decides what to read and when.
 *
 * Matching follows OpenSSH (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT", hostfile.c / match.c):
 *  - the host is looked up as `host` for port 22 and as `[host]:port` otherwise, lowercased;
 *  - a plain host field is a comma list of patterns with `*` and `?`; a line matches when some
 *    pattern matches and no `!`-negated pattern does (a negated match vetoes the whole line);
 *  - a hashed host field `|1|salt|hash` matches when HMAC-SHA1(salt, host string) equals hash;
 *  - `@revoked` lines name keys that must never be accepted for the hosts they match;
 *  - `@cert-authority` lines are CA keys; we do not do certificates, so they never match;
 *  - comments, blank and malformed lines are skipped (as ssh does: one bad line must not make
 *    the whole file unusable).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** How a line names its hosts. */
export type HostField =
  { readonly kind: 'patterns'; readonly patterns: readonly HostPattern[] } | { readonly kind: 'hashed'; readonly salt: Buffer; readonly hash: Buffer };

export interface HostPattern {
  /** Lowercased glob (`*`, `?`), matched against `host` or `[host]:port`. */
  readonly pattern: string;
  readonly negated: boolean;
}

export type KnownHostMarker = 'revoked' | 'cert-authority';

export interface KnownHostEntry {
  /** File the line came from and its 1-based line number: for messages like `known_hosts:3`. */
  readonly file: string;
  readonly line: number;
  readonly marker: KnownHostMarker | undefined;
  readonly hosts: HostField;
  /** Key type as written on the line (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, ...). */
  readonly keyType: string;
  /** The key blob (SSH wire format), decoded from the line's base64. */
  readonly keyBlob: Buffer;
  readonly comment: string;
}

/**
 * Result of checking a presented host key:
 *  - `ok`: a plain line for this host has exactly this key;
 *  - `revoked`: an `@revoked` line for this host has this key (wins over `ok`);
 *  - `mismatch`: the host has plain lines, but none with this key — whatever their key type.
 *    OpenSSH only calls a same-type difference "changed" and treats other-type keys as new; we are
 *    stricter because `accept-new` would otherwise let an attacker who offers a different key type
 *    past a known host. The connection prefers the known key types when negotiating, so a genuine
 *    server never lands here unless it really stopped offering the recorded key;
 *  - `unknown`: no plain line matches the host at all.
 */
export type HostKeyStatus = 'ok' | 'unknown' | 'mismatch' | 'revoked';

export interface HostKeyLookup {
  readonly status: HostKeyStatus;
  /** The line that decided `ok` or `revoked`. */
  readonly entry: KnownHostEntry | undefined;
  /** All plain (unmarked) lines for this host: the conflicting ones when `mismatch`. */
  readonly known: readonly KnownHostEntry[];
}

const HASH_MAGIC = '|1|';
const DEFAULT_SSH_PORT = 22;

/** Parse a known_hosts file's text. `file` is only recorded on entries for messages. */
export function parseKnownHosts(text: string, file: string): KnownHostEntry[] {
  const entries: KnownHostEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const entry = parseLine(lines[i] ?? '', file, i + 1);
    if (entry !== undefined) entries.push(entry);
  }
  return entries;
}

function parseLine(raw: string, file: string, line: number): KnownHostEntry | undefined {
  const text = raw.trim();
  if (text === '' || text.startsWith('#')) return undefined;
  const fields = text.split(/[ \t]+/);
  let marker: KnownHostMarker | undefined;
  const first = fields[0] ?? '';
  if (first.startsWith('@')) {
    if (first === '@revoked') marker = 'revoked';
    else if (first === '@cert-authority') marker = 'cert-authority';
    else return undefined; // unknown marker: ssh skips the line, so do we
    fields.shift();
  }
  const [hostText, keyType, keyBase64, ...rest] = fields;
  if (hostText === undefined || keyType === undefined || keyBase64 === undefined) return undefined;
  const hosts = parseHostField(hostText);
  const keyBlob = decodeKeyBlob(keyType, keyBase64);
  if (hosts === undefined || keyBlob === undefined) return undefined;
  return { file, line, marker, hosts, keyType, keyBlob, comment: rest.join(' ') };
}

function parseHostField(text: string): HostField | undefined {
  if (text.startsWith(HASH_MAGIC)) {
    const [salt64, hash64, ...extra] = text.slice(HASH_MAGIC.length).split('|');
    if (salt64 === undefined || hash64 === undefined || extra.length > 0) return undefined;
    const salt = strictBase64(salt64);
    const hash = strictBase64(hash64);
    // SHA-1 output is 20 bytes; anything else can never match, so it is a malformed line.
    if (salt === undefined || hash === undefined || hash.length !== 20) return undefined;
    return { kind: 'hashed', salt, hash };
  }
  const patterns: HostPattern[] = [];
  for (const part of text.split(',')) {
    const negated = part.startsWith('!');
    const pattern = (negated ? part.slice(1) : part).toLowerCase();
    if (pattern !== '') patterns.push({ pattern, negated });
  }
  return patterns.length > 0 ? { kind: 'patterns', patterns } : undefined;
}

/** Decode base64 only if it is canonical-ish base64 (Buffer.from silently drops junk characters). */
function strictBase64(text: string): Buffer | undefined {
  if (text === '' || !/^[A-Za-z0-9+/]+={0,2}$/.test(text)) return undefined;
  const buf = Buffer.from(text, 'base64');
  return buf.length > 0 ? buf : undefined;
}

/** The blob must decode and carry the same type name as the line says (ssh rejects such lines too). */
function decodeKeyBlob(keyType: string, keyBase64: string): Buffer | undefined {
  const blob = strictBase64(keyBase64);
  if (blob === undefined) return undefined;
  try {
    return parseSshPublicKeyBlob(blob).keyType === keyType ? blob : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Read the key type from an SSH wire-format public key blob (RFC 4253 6.6: `string type, ...`).
 * This is what ssh2's `hostVerifier` receives when `hostHash` is unset. Throws on a truncated blob.
 */
export function parseSshPublicKeyBlob(blob: Buffer): { keyType: string; keyBase64: string } {
  if (blob.length < 4) throw new Error('SSH public key blob too short');
  const len = blob.readUInt32BE(0);
  if (len === 0 || len > 64 || 4 + len > blob.length) throw new Error('SSH public key blob has a bad type length');
  const keyType = blob.subarray(4, 4 + len).toString('latin1');
  if (!/^[\x21-\x7e]+$/.test(keyType)) throw new Error('SSH public key blob has a non-printable type');
  return { keyType, keyBase64: blob.toString('base64') };
}

/** `SHA256:<base64 without padding>`, the fingerprint `ssh-keygen -l` and ssh's prompts show. */
export function fingerprintSha256(key: Buffer | string): string {
  const blob = typeof key === 'string' ? Buffer.from(key, 'base64') : key;
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

/**
 * The string ssh looks a host up under: lowercased `host` on port 22, `[host]:port` otherwise.
 * Brackets already around an IPv6 literal (`[::1]`) are removed first.
 */
export function knownHostsName(host: string, port: number = DEFAULT_SSH_PORT): string {
  let h = host.toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  return port === DEFAULT_SSH_PORT ? h : `[${h}]:${port}`;
}

/** Does this line's host field name the host? */
export function entryMatchesHost(entry: KnownHostEntry, name: string): boolean {
  const hosts = entry.hosts;
  if (hosts.kind === 'hashed') {
    const mac = createHmac('sha1', hosts.salt).update(name).digest();
    return timingSafeEqual(mac, hosts.hash);
  }
  let matched = false;
  for (const p of hosts.patterns) {
    if (!globMatch(p.pattern, name)) continue;
    if (p.negated) return false; // a negated hit vetoes the line, whatever else matched
    matched = true;
  }
  return matched;
}

/** OpenSSH match_pattern: `*` any run of characters (dots included), `?` exactly one. */
export function globMatch(pattern: string, text: string): boolean {
  // Iterative wildcard match with single backtrack point: linear-ish, no regex compilation.
  let p = 0;
  let t = 0;
  let star = -1;
  let mark = 0;
  while (t < text.length) {
    const pc = pattern[p];
    if (pc === '?' || (pc !== undefined && pc !== '*' && pc === text[t])) {
      p++;
      t++;
    } else if (pc === '*') {
      star = p++;
      mark = t;
    } else if (star >= 0) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (pattern[p] === '*') p++;
  return p === pattern.length;
}

function sameKey(entry: KnownHostEntry, keyType: string, blob: Buffer): boolean {
  return entry.keyType === keyType && entry.keyBlob.equals(blob);
}

/** Check a presented key and say which lines decided it (for error messages). */
export function lookupHostKey(entries: readonly KnownHostEntry[], host: string, port: number, keyType: string, keyBase64: string): HostKeyLookup {
  const name = knownHostsName(host, port);
  const blob = Buffer.from(keyBase64, 'base64');
  const forHost = entries.filter((e) => e.marker !== 'cert-authority' && entryMatchesHost(e, name));
  const known = forHost.filter((e) => e.marker === undefined);
  const revoked = forHost.find((e) => e.marker === 'revoked' && sameKey(e, keyType, blob));
  if (revoked !== undefined) return { status: 'revoked', entry: revoked, known };
  const ok = known.find((e) => sameKey(e, keyType, blob));
  if (ok !== undefined) return { status: 'ok', entry: ok, known };
  return { status: known.length > 0 ? 'mismatch' : 'unknown', entry: undefined, known };
}

/** Short form of {@link lookupHostKey}. */
export function checkHostKey(entries: readonly KnownHostEntry[], host: string, port: number, keyType: string, keyBase64: string): HostKeyStatus {
  return lookupHostKey(entries, host, port, keyType, keyBase64).status;
}

/** Key types recorded (unmarked) for the host, in file order, without duplicates. */
export function knownKeyTypes(entries: readonly KnownHostEntry[], host: string, port: number): string[] {
  const name = knownHostsName(host, port);
  const types: string[] = [];
  for (const e of entries) {
    if (e.marker === undefined && !types.includes(e.keyType) && entryMatchesHost(e, name)) types.push(e.keyType);
  }
  return types;
}

export interface FormatKnownHostsOptions {
  /** Write `|1|salt|hash` instead of the plain name (like `HashKnownHosts yes`). */
  readonly hashed?: boolean;
  /** Salt for hashing (20 random bytes when unset); for reproducible tests. */
  readonly salt?: Buffer;
  readonly comment?: string;
}

/** One known_hosts line (no trailing newline) recording `keyType keyBase64` for host:port. */
export function formatKnownHostsLine(host: string, port: number, keyType: string, keyBase64: string, options: FormatKnownHostsOptions = {}): string {
  const name = knownHostsName(host, port);
  const hostField = options.hashed === true ? hashHostName(name, options.salt ?? randomBytes(20)) : name;
  const comment = options.comment !== undefined && options.comment !== '' ? ` ${options.comment}` : '';
  return `${hostField} ${keyType} ${keyBase64}${comment}`;
}

/** `|1|salt|hash` for a known_hosts name (as returned by {@link knownHostsName}). */
export function hashHostName(name: string, salt: Buffer): string {
  const hash = createHmac('sha1', salt).update(name).digest('base64');
  return `${HASH_MAGIC}${salt.toString('base64')}|${hash}`;
}
