import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, signalChannel, SshError, type SshConnection, type SshConnectOptions, type SshErrorCode } from '../../src/transport/ssh/connection.js';
import { formatKnownHostsLine, parseKnownHosts, checkHostKey } from '../../src/transport/ssh/known-hosts.js';
import { shellQuote } from '../../src/util/shell-quote.js';
import { freePort, startSshd, type HostKey, type Sshd } from '../helpers/sshd.js';

const execFileP = promisify(execFile);

let sshd: Sshd;
const open: SshConnection[] = [];

beforeAll(async () => {
  sshd = await startSshd({ address: '127.0.0.1' });
}, 30_000);

afterAll(async () => {
  await sshd?.stop();
});

// Every connection a test opens is closed, pass or fail, so sshd's stop() is not held up.
afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.end()));
});

let fileNo = 0;
/** A known_hosts file with these lines in the fixture's temp dir. */
async function knownHosts(...lines: string[]): Promise<string> {
  const file = join(sshd.dir, `known_hosts.${++fileNo}`);
  await writeFile(file, lines.map((l) => l + '\n').join(''));
  return file;
}

function opts(over: Partial<SshConnectOptions> = {}): SshConnectOptions {
  return {
    node: 'gpu2',
    host: sshd.address,
    port: sshd.port,
    user: sshd.user,
    identityFile: sshd.identityFile,
    knownHosts: sshd.knownHostsFile,
    hostKeyCheck: 'strict',
    agent: '',
    readyTimeout: 10_000,
    ...over,
  };
}

async function connect(over: Partial<SshConnectOptions> = {}, signal?: AbortSignal): Promise<SshConnection> {
  const c = await connectSsh(opts(over), signal);
  open.push(c);
  return c;
}

/** Connect, expecting failure with `code`; returns the error for further checks. */
async function connectFails(code: SshErrorCode, over: Partial<SshConnectOptions> = {}): Promise<SshError> {
  const err = await connect(over).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SshError);
  const e = err as SshError;
  expect({ code: e.code, message: e.message }).toMatchObject({ code });
  expect(e.message).toContain(`node gpu2 (${over.user ?? sshd.user}@${over.host ?? '127.0.0.1'}:${over.port ?? sshd.port}): `);
  return e;
}

/** A TCP server that accepts and never says anything: an SSH handshake against it hangs. */
async function silentServer(): Promise<{ port: number; sockets: Set<Socket>; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const srv: Server = createServer((s) => {
    sockets.add(s);
    s.resume(); // flowing, so the client's FIN is seen and 'close' fires
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const addr = srv.address();
  if (typeof addr !== 'object' || addr === null) throw new Error('no address');
  return {
    port: addr.port,
    sockets,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        srv.close(() => r());
      }),
  };
}

/** The fixture's host keys: ed25519 (the one in knownHostsFile) and ecdsa-sha2-nistp256. */
function hostKey(i: number): HostKey {
  const k = sshd.hostKeys[i];
  if (k === undefined) throw new Error('fixture lacks host key');
  return k;
}
const edKey = (): HostKey => hostKey(0);
const ecKey = (): HostKey => hostKey(1);

describe('host key verification', () => {
  it('strict: plain [127.0.0.1]:PORT entry from the fixture', async () => {
    const c = await connect();
    expect(c.isOpen).toBe(true);
    expect(c.target).toBe(`${sshd.user}@127.0.0.1:${sshd.port}`);
    expect(c.hostKey.keyType).toBe('ssh-ed25519');
    expect(c.warnings).toEqual([]);
    // The fingerprint is the one ssh-keygen shows for the server's key file.
    const { stdout } = await execFileP('ssh-keygen', ['-l', '-E', 'sha256', '-f', join(sshd.dir, 'host_ed25519.pub')]);
    expect(stdout).toContain(c.hostKey.fingerprint);
  });

  it('strict: entries hashed by ssh-keygen -H', async () => {
    const file = await knownHosts(sshd.hostKeyLine);
    await execFileP('ssh-keygen', ['-H', '-f', file]);
    const text = await readFile(file, 'utf8');
    expect(text).toMatch(/^\|1\|[^|]+\|[^ ]+ ssh-ed25519 /);
    expect(text).not.toContain('127.0.0.1');
    await connect({ knownHosts: file });
  });

  it('strict: entry hashed by formatKnownHostsLine', async () => {
    const k = edKey();
    const file = await knownHosts(formatKnownHostsLine('127.0.0.1', sshd.port, k.keyType, k.keyBase64, { hashed: true }));
    await connect({ knownHosts: file });
  });

  it('strict: a host recorded only with its ECDSA key negotiates ECDSA instead of failing', async () => {
    const k = ecKey();
    const file = await knownHosts(`[127.0.0.1]:${sshd.port} ${k.keyType} ${k.keyBase64}`);
    const c = await connect({ knownHosts: file });
    expect(c.hostKey.keyType).toBe('ecdsa-sha2-nistp256');
  });

  it('unknown key: missing file, empty file, entry for another port', async () => {
    const e1 = await connectFails('E_SSH_HOSTKEY_UNKNOWN', { knownHosts: join(sshd.dir, 'no-such-known-hosts') });
    expect(e1.message).toMatch(/host key not in .*no-such-known-hosts \(ssh-ed25519 SHA256:[A-Za-z0-9+/]{43}\)/);
    await connectFails('E_SSH_HOSTKEY_UNKNOWN', { knownHosts: await knownHosts() });
    const k = edKey();
    await connectFails('E_SSH_HOSTKEY_UNKNOWN', { knownHosts: await knownHosts(`127.0.0.1 ${k.keyType} ${k.keyBase64}`) });
  });

  it('wrong key for the host: mismatch, naming the file line', async () => {
    const other = await otherEd25519Key();
    const file = await knownHosts('# stale', `[127.0.0.1]:${sshd.port} ssh-ed25519 ${other}`);
    const e = await connectFails('E_SSH_HOSTKEY_MISMATCH', { knownHosts: file });
    expect(e.message).toContain(`${file}:2 has ssh-ed25519 SHA256:`);
    expect(e.message).toContain(`ssh-keygen -R '[127.0.0.1]:${sshd.port}'`);
    // accept-new never overrides a mismatch
    await connectFails('E_SSH_HOSTKEY_MISMATCH', { knownHosts: file, hostKeyCheck: 'accept-new' });
    expect(await readFile(file, 'utf8')).not.toContain(edKey().keyBase64);
  });

  it('@revoked key is refused even with a matching line', async () => {
    const k = edKey();
    const file = await knownHosts(sshd.hostKeyLine, `@revoked * ${k.keyType} ${k.keyBase64}`);
    await connectFails('E_SSH_HOSTKEY_REVOKED', { knownHosts: file, hostKeyCheck: 'accept-new' });
  });

  it('accept-new: records the key (creating the directory), then strict works', async () => {
    const file = join(sshd.dir, `fresh-${++fileNo}`, 'known_hosts');
    const seen: string[] = [];
    const c = await connect({ knownHosts: file, hostKeyCheck: 'accept-new', onWarning: (w) => seen.push(w.kind) });
    expect(seen).toEqual(['hostkey-added']);
    expect(c.warnings[0]?.message).toContain(file);
    expect(await readFile(file, 'utf8')).toBe(`[127.0.0.1]:${sshd.port} ssh-ed25519 ${edKey().keyBase64}\n`);
    const again = await connect({ knownHosts: file });
    expect(again.warnings).toEqual([]);
  });

  it('accept-new: parallel connects add one line; appends after a last line without newline', async () => {
    const file = join(sshd.dir, `partial-${++fileNo}`);
    await writeFile(file, 'gpu9 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmYwWSkJXbYBf8NLfVj2iSgJv1sbE7x9jRk1m3WvRtH'); // no \n
    await Promise.all(Array.from({ length: 5 }, () => connect({ knownHosts: file, hostKeyCheck: 'accept-new', hashKnownHosts: true })));
    const text = await readFile(file, 'utf8');
    const lines = text.trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^\|1\|/);
    const k = edKey();
    expect(checkHostKey(parseKnownHosts(text, file), '127.0.0.1', sshd.port, k.keyType, k.keyBase64)).toBe('ok');
  });

  it('off: accepts without looking, with a warning', async () => {
    const seen: string[] = [];
    const c = await connect({ knownHosts: join(sshd.dir, 'never-created'), hostKeyCheck: 'off', onWarning: (w) => seen.push(w.message) });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatch(/host key checking is off; accepted ssh-ed25519 SHA256:/);
    expect(c.warnings.map((w) => w.kind)).toEqual(['hostkey-unchecked']);
    await expect(stat(join(sshd.dir, 'never-created'))).rejects.toThrow();
  });
});

/** Base64 of a freshly generated ed25519 public key, not the server's. */
async function otherEd25519Key(): Promise<string> {
  const f = join(sshd.dir, `other-${++fileNo}`);
  await execFileP('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', '', '-f', f]);
  return (await readFile(`${f}.pub`, 'utf8')).split(' ')[1] ?? '';
}

describe('authentication and reachability', () => {
  it('wrong user → E_SSH_AUTH', async () => {
    const e = await connectFails('E_SSH_AUTH', { user: 'nobody' });
    expect(e.message).toContain(`server refused key ${sshd.identityFile}`);
    expect(e.message).toContain('for user nobody');
  });

  it('unauthorized key → E_SSH_AUTH', async () => {
    const f = join(sshd.dir, `stranger-${++fileNo}`);
    await execFileP('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', '', '-f', f]);
    await connectFails('E_SSH_AUTH', { identityFile: f });
  });

  it('missing, encrypted or public-only identity → E_SSH_IDENTITY before connecting', async () => {
    const missing = await connectFails('E_SSH_IDENTITY', { identityFile: join(sshd.dir, 'nope') });
    expect(missing.message).toContain('cannot read identity file');
    const enc = join(sshd.dir, `encrypted-${++fileNo}`);
    await execFileP('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'secret', '-C', '', '-f', enc]);
    const e = await connectFails('E_SSH_IDENTITY', { identityFile: enc });
    expect(e.message).toMatch(/passphrase-protected; load it into ssh-agent/);
    await connectFails('E_SSH_IDENTITY', { identityFile: `${enc}.pub` });
  });

  it('closed port → E_SSH_UNREACHABLE from the refusal, not a timeout', async () => {
    const port = await freePort();
    // readyTimeout 0 (none): only the refusal itself can end this connect.
    const e = await connectFails('E_SSH_UNREACHABLE', { port, readyTimeout: 0 });
    expect(e.message).toContain('connection refused (ECONNREFUSED)');
  });

  it('server that never speaks SSH → E_SSH_TIMEOUT after readyTimeout', async () => {
    const srv = await silentServer();
    try {
      const e = await connectFails('E_SSH_TIMEOUT', { port: srv.port, readyTimeout: 300 });
      expect(e.message).toContain('readyTimeout');
      await until(() => srv.sockets.size === 0); // and the socket was dropped
    } finally {
      await srv.close();
    }
  });

  it('abort signal cancels a pending connect and drops the socket', async () => {
    const srv = await silentServer();
    try {
      const ac = new AbortController();
      // readyTimeout 0 (none): the server never answers, so only the abort can end this connect.
      const pending = connect({ port: srv.port, readyTimeout: 0 }, ac.signal);
      await until(() => srv.sockets.size === 1);
      ac.abort();
      await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
      await until(() => srv.sockets.size === 0);
      // already aborted: rejects before touching the network
      await expect(connect({ port: srv.port }, AbortSignal.abort())).rejects.toMatchObject({ name: 'AbortError' });
    } finally {
      await srv.close();
    }
  });
});

/** Is this local pid still running (sshd runs on this machine, so remote pids are local)? */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Poll a condition (for events we cannot subscribe to, like a socket arriving at a test server). The
 * deadline only stops a test that would otherwise hang: generous, so a slow machine does not fail it.
 */
async function until(cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

// Each exec starts the test user's login shell (/bin/sh, no rc files). Timeouts only stop a hung test.
describe('channels', { timeout: 60_000 }, () => {
  it('exec returns code, stdout and stderr', async () => {
    const c = await connect();
    const r = await c.exec('echo out; echo err >&2; exit 3');
    expect(r).toMatchObject({ code: 3, signal: null });
    expect(r.stdout.toString()).toBe('out\n');
    expect(r.stderr.toString()).toBe('err\n');
    const whoami = await c.exec('id -un; echo "$HOME"; ls -A "$HOME"');
    expect(whoami.stdout.toString()).toBe(`${sshd.user}\n${sshd.testUser.home}\n`); // the test user, with an empty home
  });

  it('exec passes stdin and then EOF; without stdin the command sees EOF at once', async () => {
    const c = await connect();
    const bytes = Buffer.from([0, 1, 2, 255, 10, 13]);
    const r = await c.exec('cat', { stdin: bytes });
    expect(r.stdout.equals(bytes)).toBe(true);
    expect((await c.exec('wc -c')).stdout.toString().trim()).toBe('0');
  });

  it('exec reports a command killed by a signal', async () => {
    const c = await connect();
    const r = await c.exec('kill -TERM $$'); // the login shell itself: no shell in between to turn it into 143
    expect(r).toMatchObject({ code: null, signal: 'SIGTERM' });
  });

  it('shellQuote survives the remote login shell', async () => {
    const c = await connect();
    const marker = join(sshd.workDir, 'pwned');
    for (const s of ["'; rm -rf ~ #", `$(touch ${marker})`, `\`touch ${marker}\``, 'a\nb\n', '`id`', '"$HOME" \\ * ~']) {
      const r = await c.exec(`printf %s ${shellQuote(s)}`);
      expect(r.stdout.toString()).toBe(s);
    }
    expect(existsSync(marker)).toBe(false);
  });

  it('50 concurrent exec channels on one connection', async () => {
    const c = await connect({ maxChannels: 50 });
    const dir = shellQuote(join(sshd.workDir, `barrier-${++fileNo}`));
    await c.exec(`mkdir ${dir}`);
    // A barrier: each command waits until all 50 have started, so they really are open at once. The
    // give-up (exit 9 after ~5 min) only keeps a broken run from leaving 50 shells behind.
    const cmd = (i: number): string =>
      `touch ${dir}/${i}; n=0; while [ "$(ls ${dir} | wc -l)" -lt 50 ]; do n=$((n+1)); [ $n -gt 1500 ] && exit 9; sleep 0.2; done; echo ${i}`;
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => c.exec(cmd(i))));
    expect(results.map((r) => `${r.code} ${r.stdout.toString()}`)).toEqual(Array.from({ length: 50 }, (_, i) => `0 ${i}\n`));
  }, 300_000);

  it('more channels than maxChannels wait for a free slot', async () => {
    const c = await connect({ maxChannels: 1 });
    const cat = await c.spawn('cat');
    let echoed = '';
    cat.on('data', (d: Buffer) => (echoed += d.toString())); // consumed: a channel only emits 'close' (freeing its slot) once its output was read
    let catClosed = false;
    cat.on('close', () => (catClosed = true));
    let queuedRan = false;
    const queued = c.exec('echo queued').finally(() => (queuedRan = true));
    // A round trip through cat's channel: the queued exec has been issued and is still waiting.
    cat.write('ping\n');
    await until(() => echoed === 'ping\n');
    expect(queuedRan).toBe(false);
    cat.end();
    const r = await queued;
    expect(catClosed).toBe(true); // it ran only once cat's channel had closed
    expect(r.stdout.toString()).toBe('queued\n');
  });

  it('a queued exec can be abandoned through its signal', async () => {
    const c = await connect({ maxChannels: 1 });
    const cat = await c.spawn('cat');
    cat.resume();
    const ac = new AbortController();
    const queued = c.exec('echo never', { signal: ac.signal });
    ac.abort();
    await expect(queued).rejects.toMatchObject({ name: 'AbortError' });
    cat.end();
    expect((await c.exec('echo next')).stdout.toString()).toBe('next\n');
  });

  it('spawn streams stdout/stderr and reports exit', async () => {
    const c = await connect();
    const ch = await c.spawn('while read l; do echo "got $l"; echo "e $l" >&2; done; exit 7');
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    ch.on('data', (d: Buffer) => out.push(d));
    ch.stderr.on('data', (d: Buffer) => err.push(d));
    const exited = new Promise<number | null>((r) => ch.on('exit', (code: number | null) => r(code)));
    const closed = new Promise<void>((r) => ch.on('close', () => r()));
    ch.write('a\n');
    await until(() => Buffer.concat(out).toString() === 'got a\n');
    ch.end('b\n');
    expect(await exited).toBe(7);
    await closed;
    expect(Buffer.concat(out).toString()).toBe('got a\ngot b\n');
    expect(Buffer.concat(err).toString()).toBe('e a\ne b\n');
  });

  it('exec abort rejects at once, tries SIGTERM, and leaves the connection usable', async () => {
    const c = await connect();
    const ac = new AbortController();
    const pidFile = join(sshd.workDir, `pid-${++fileNo}`);
    // The shell's pid becomes sleep's (exec); sshd runs on this machine, so we can watch that pid. The
    // command ignores SIGTERM, so it is still running when the abort rejects: the rejection did not wait
    // for the command.
    const p = c.exec(`trap '' TERM; echo $$ > ${shellQuote(pidFile)}; exec sleep 600`, { signal: ac.signal });
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'));
    const pid = Number(readFileSync(pidFile, 'utf8'));
    try {
      ac.abort();
      await expect(p).rejects.toMatchObject({ name: 'AbortError' });
      expect(alive(pid)).toBe(true);
      expect((await c.exec('echo alive')).stdout.toString()).toBe('alive\n');
      // sshd keeps a session channel (and so its slot) until its command exits: clean up by pid, as the
      // transport must for a command that ignores its SIGTERM.
    } finally {
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('exec abort: the SIGTERM reaches the command (non-root login), which frees the channel slot', async () => {
    // The signal request reaches sshd even though stdin had been closed (ssh2's own signal() would not
    // send it). sshd delivers it on a non-root login; on root logins it refuses (see signalChannel).
    const c = await connect({ maxChannels: 1 });
    const ac = new AbortController();
    const pidFile = join(sshd.workDir, `pid-${++fileNo}`);
    const p = c.exec(`echo $$ > ${shellQuote(pidFile)}; exec sleep 600`, { signal: ac.signal });
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'));
    const pid = Number(readFileSync(pidFile, 'utf8'));
    try {
      ac.abort();
      await expect(p).rejects.toMatchObject({ name: 'AbortError' });
      await until(() => !alive(pid));
      // maxChannels 1: the aborted channel gave its slot back once the command was gone.
      expect((await c.exec('echo next')).stdout.toString()).toBe('next\n');
    } finally {
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('signalChannel: sent on an open channel after EOF, refused once the channel is closed', async () => {
    const c = await connect();
    const ch = await c.spawn('cat');
    ch.resume();
    ch.end(); // EOF sent: ssh2's own channel.signal() would now silently do nothing
    expect(signalChannel(ch, 'SIGTERM')).toBe(true);
    await new Promise<void>((r) => ch.on('close', () => r()));
    expect(signalChannel(ch, 'TERM')).toBe(false);
  });

  it('writeFile writes atomically with the mode, replacing a wider file', async () => {
    const c = await connect();
    const path = join(sshd.workDir, "spec dir 'quoted'");
    await c.exec(`mkdir -p ${shellQuote(path)}`);
    const file = join(path, 'w.spec');
    await c.exec(`echo old > ${shellQuote(file)} && chmod 0644 ${shellQuote(file)}`);
    const content = Buffer.concat([Buffer.from(`A_ENV='$(touch ${join(sshd.workDir, 'pwned')})'\n`), Buffer.from([0, 255, 10])]);
    await c.writeFile(file, content, 0o600);
    expect((await stat(file)).mode & 0o7777).toBe(0o600);
    expect((await readFile(file)).equals(content)).toBe(true);
    expect((await c.exec(`ls -A ${shellQuote(path)}`)).stdout.toString()).toBe('w.spec\n'); // no temp file left
    expect(existsSync(join(sshd.workDir, 'pwned'))).toBe(false);
    await c.writeFile(file, 'x', 0o755);
    expect((await stat(file)).mode & 0o7777).toBe(0o755);
  });

  it('writeFile into a missing directory → E_SSH_REMOTE with the reason', async () => {
    const c = await connect();
    const err = await c.writeFile(join(sshd.workDir, 'missing', 'f'), 'x', 0o600).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_SSH_REMOTE' });
    expect((err as Error).message).toMatch(/cannot write .*missing\/f: .*(Directory nonexistent|No such file)/);
  });
});

describe('connection lifetime', { timeout: 60_000 }, () => {
  it('end() resolves closed with undefined; later calls fail with E_SSH_CLOSED', async () => {
    const c = await connect();
    const events: Array<Error | undefined> = [];
    c.on('close', (e) => events.push(e));
    await c.end();
    expect(await c.closed).toBeUndefined();
    expect(events).toEqual([undefined]);
    expect(c.isOpen).toBe(false);
    await expect(c.exec('true')).rejects.toMatchObject({ code: 'E_SSH_CLOSED' });
  });

  it('server side dying: closed resolves with E_SSH_CLOSED, pending and queued execs reject', async () => {
    const c = await connect({ maxChannels: 3 });
    const listener = new Promise<Error | undefined>((r) => c.on('close', r));
    const pidFile = join(sshd.workDir, `pid-${++fileNo}`);
    const pending = c.exec(`echo $$ > ${shellQuote(pidFile)}; exec sleep 30`);
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'));
    // Hold the second slot with a channel nobody reads (it never emits 'close', so never frees its slot).
    await c.spawn('cat');
    // $PPID of the command is this connection's sshd process. It takes the third and last slot...
    const kill = c.exec('kill -9 $PPID').catch(() => undefined);
    // ...so this one queues, and must fail when the connection dies rather than wait forever.
    const queued = c.exec('true');
    await kill;
    const err = await c.closed;
    expect(err).toBeInstanceOf(SshError);
    expect(err).toMatchObject({ code: 'E_SSH_CLOSED' });
    expect(await listener).toBe(err);
    await expect(pending).rejects.toMatchObject({ code: 'E_SSH_CLOSED' });
    await expect(queued).rejects.toMatchObject({ code: 'E_SSH_CLOSED' });
    await expect(c.exec('true')).rejects.toMatchObject({ code: 'E_SSH_CLOSED' });
    const orphan = Number(readFileSync(pidFile, 'utf8'));
    if (alive(orphan)) process.kill(orphan, 'SIGKILL'); // the sleep outlives its sshd
  });

  it('survives server-initiated re-keys (host key re-checked against the one accepted)', async () => {
    // By volume only: a timed re-key could land in the middle of the login on a loaded machine.
    const rekeying = await startSshd({ address: '127.0.0.1', extraConfig: ['RekeyLimit 64K none'] });
    try {
      const seen: string[] = [];
      const c = await connect({
        port: rekeying.port,
        identityFile: rekeying.identityFile,
        knownHosts: join(rekeying.dir, 'kh'),
        hostKeyCheck: 'accept-new',
        onWarning: (w) => seen.push(w.kind),
      });
      // 1 MB through a 64K RekeyLimit: over a dozen re-keys, each calling the host verifier again.
      const r = await c.exec('head -c 1000000 /dev/zero');
      expect(r.stdout.length).toBe(1_000_000);
      expect((await c.exec('echo still')).stdout.toString()).toBe('still\n');
      expect(seen).toEqual(['hostkey-added']); // once, not once per re-key
      await c.end();
    } finally {
      await rekeying.stop();
    }
  });

  it('unanswered keepalives: closed resolves with E_SSH_TIMEOUT', async () => {
    const c = await connect({ keepaliveInterval: 100, keepaliveCountMax: 2 });
    const sshdPid = Number((await c.exec('echo $PPID')).stdout.toString());
    process.kill(sshdPid, 'SIGSTOP'); // freeze this connection's sshd: TCP stays up, SSH goes silent
    try {
      const err = await c.closed;
      expect(err).toMatchObject({ code: 'E_SSH_TIMEOUT' });
      expect(err?.message).toContain('2 keepalives (every 0.1s) went unanswered');
    } finally {
      process.kill(sshdPid, 'SIGKILL');
    }
  });
});

// A real-world login on purpose: bash whose ~/.bashrc and ~/.profile take a second and print a line to
// stdout and one to stderr (conda/module/pyenv init on GPU clusters). Debian's bash sources ~/.bashrc for
// every command sshd runs, so each exec channel pays the second and carries the noise ahead of its output.
// At this level the noise is part of the channel's output; the transport above must keep it out of logs.
describe('a slow and noisy login shell (dynsup-rc)', { timeout: 120_000 }, () => {
  let rc: Sshd;
  beforeAll(async () => {
    rc = await startSshd({ address: '127.0.0.1', login: 'rc' });
  }, 60_000);
  afterAll(async () => {
    await rc?.stop();
  });
  const rcConnect = () => connect({ port: rc.port, user: rc.user, identityFile: rc.identityFile, knownHosts: rc.knownHostsFile });
  /** The lines of an output without the rc file's: there must be at least one rc line, and they come first. */
  const afterNoise = (out: Buffer): string => {
    const text = out.toString();
    const m = /^(rc-noise\n)+/.exec(text);
    expect(m, `no rc-noise ahead of ${JSON.stringify(text)}`).not.toBeNull();
    return text.slice(m![0].length);
  };

  it('exec works: code, stdout and stderr after the rc output, as the rc user', async () => {
    const c = await rcConnect();
    expect(c.target).toBe(`dynsup-rc@127.0.0.1:${rc.port}`);
    const r = await c.exec('echo out; echo err >&2; exit 3');
    expect(r).toMatchObject({ code: 3, signal: null });
    expect(afterNoise(r.stdout)).toBe('out\n');
    expect(afterNoise(r.stderr)).toBe('err\n');
    const who = await c.exec('id -un; echo "$0"');
    expect(afterNoise(who.stdout)).toBe('dynsup-rc\nbash\n');
  });

  it('stdin, binary output and concurrent channels work through the slow login', async () => {
    const c = await rcConnect();
    const bytes = Buffer.from([0, 1, 2, 255, 10, 13]);
    const r = await c.exec('cat', { stdin: bytes });
    expect(r.stdout.subarray(r.stdout.length - bytes.length).equals(bytes)).toBe(true);
    expect(afterNoise(r.stdout.subarray(0, r.stdout.length - bytes.length))).toBe('');
    const all = await Promise.all(Array.from({ length: 8 }, (_, i) => c.exec(`echo ${i}`)));
    expect(all.map((x) => afterNoise(x.stdout))).toEqual(Array.from({ length: 8 }, (_, i) => `${i}\n`));
  });
});
