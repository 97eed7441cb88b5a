/**
 * `transport: ssh`: workers on another machine, over one ssh2 connection per node.
 *
 * Node side (nothing installed but sh, coreutils, util-linux): the node agent runs each worker detached
 * from any ssh channel, spooling its output to RUNDIR/NAME.out and holding RUNDIR/NAME.lock while it lives.
 * Head side, per replica, one "attach" channel: `tail -f` of the spool from the byte offset the head has
 * already received, then `flock` on the lock, which returns the instant the worker is gone (no polling).
 * A dropped link only loses the attach channels: on reconnect the head re-attaches at its offset, so no
 * line is lost or repeated, and nothing is restarted. The lease (heartbeat file, renewed over a control
 * channel) stops the workers if the head stays away too long.
 */
import { randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClientChannel } from 'ssh2';
import type { NodeConfig } from '../../config/types.js';
import { DynsupError, errorMessage } from '../../util/errors.js';
import { agentScript, exitFromStatus, heartbeatToken, parseAgentLine, renderSpec } from '../agent.js';
import type { ExitInfo, LaunchSpec, Transport, WorkerProcess } from '../types.js';
import { connectSsh, type SshConnection } from './connection.js';
import { shellQuote as q } from './shell-quote.js';

const SPOOL_FREE_BYTES = 16 * 2 ** 20;
const SPARE_QUIET_MS = 3000;

/**
 * Shell function `mine`: true while NAME.gen holds this launch's token (a builtin `read`, not
 * `$(cat ...)`: it runs in wait loops, many at once on a node busy with a bring-up).
 */
const launchCheck = (n: string, gen: string): string => `mine() { g=''; { read -r g <${n}.gen; } 2>/dev/null; [ "$g" = ${gen} ]; }`;

export interface SshTransportOptions {
  readonly node: NodeConfig;
  readonly cluster: string;
  readonly leaseMs: number;
  /** Called for connection trouble and recovery (the supervisor logs it). */
  readonly onNotice?: (level: 'info' | 'warn' | 'error', message: string) => void;
  /** Channels per connection (the node's sshd MaxSessions); default node.ssh.maxSessions. */
  readonly maxChannels?: number;
}

/**
 * A connection that carries attach channels (one per worker) and how many it carries, counted before
 * the channel opens so concurrent launches never oversubscribe it. sshd refuses channels past its
 * MaxSessions (10 by default, less than a node's 8 GPU workers plus what dynsup itself needs), so
 * workers beyond one connection's share get another connection.
 */
interface Carrier {
  readonly conn: SshConnection;
  readonly capacity: number;
  used: number;
}

interface Attached {
  readonly name: string;
  /**
   * This launch's token, written to NAME.gen by the control shell once the previous run's files are
   * removed. The attach channel is another channel and may run first: until NAME.gen holds this token,
   * the pid, exit and spool files it would read are the previous run's.
   */
  readonly gen: string;
  readonly output: PassThrough;
  /** Bytes of the spool already received (and written to `output`). */
  received: number;
  /** Spool bytes already released on the node (fallocate --punch-hole). */
  freed: number;
  pid: number;
  settle: (exit: ExitInfo) => void;
  settled: boolean;
  channel?: ClientChannel | undefined;
  /** An attach is being opened (one at a time: the reconnect loop and a retry may both try). */
  attaching: boolean;
  /** When a stop was asked for while the node was unreachable. */
  stopRequestedAt?: number | undefined;
}

export class SshTransport implements Transport {
  readonly kind = 'ssh' as const;
  readonly node: string;
  readonly #o: SshTransportOptions;
  readonly #runDir: string;
  #conn: SshConnection | undefined;
  #control: ClientChannel | undefined;
  #connected: Promise<void> | undefined;
  #closing = false;
  #lostSince: number | null = null;
  readonly #workers = new Map<string, Attached>();
  #setupDone = false;
  #reconnectWake = new AbortController();
  /** The main connection (control shell, commands, the first attach channels) and any extra ones. */
  #carriers: Carrier[] = [];
  #openingCarrier: Promise<void> | undefined;
  /**
   * One shell opened ahead of need, for the next attach: sshd starts the user's login shell (rc files
   * and all: often 100 ms of CPU) for every channel, and a restart should not wait for that.
   */
  #spare: ClientChannel | undefined;
  #spareOpening = false;
  /**
   * Attaches being opened now. The spare is opened when none is: at once if one was just used (a
   * restart: the next one should find a spare too), else after a quiet spell, so that the spares of
   * nodes already up do not slow down the logins of a bring-up still going on elsewhere.
   */
  #attachesOpening = 0;
  #spareTimer: NodeJS.Timeout | undefined;

  constructor(options: SshTransportOptions) {
    this.#o = options;
    this.node = options.node.name;
    const user = options.node.ssh?.user ?? 'root';
    this.#runDir = options.node.runDir ?? `/tmp/dynsup-${user}/${options.cluster}/${options.node.name}`;
  }

  get runDir(): string {
    return this.#runDir;
  }

  async connect(signal?: AbortSignal): Promise<void> {
    await this.#open(signal);
  }

  get #maxSessions(): number {
    return this.#o.maxChannels ?? this.#o.node.ssh?.maxSessions ?? 10;
  }

  #connectOptions(main: boolean): Parameters<typeof connectSsh>[0] {
    const ssh = this.#o.node.ssh!;
    return {
        node: this.node,
        host: ssh.host,
        port: ssh.port,
        user: ssh.user,
        ...(ssh.identityFile ? { identityFile: ssh.identityFile } : {}),
        knownHosts: ssh.knownHosts,
        hostKeyCheck: ssh.hostKeyCheck,
        keepaliveInterval: 2000,
        keepaliveCountMax: 3,
        readyTimeout: 10_000,
        maxChannels: this.#maxSessions,
        // Extra connections would only repeat the main one's warnings.
        ...(main ? { onWarning: (w: { message: string }) => this.#o.onNotice?.('warn', `node ${this.node}: ${w.message}`) } : {}),
    };
  }

  /** Connect, install the agent, start the control channel. Shared by first connect and reconnects. */
  async #open(signal?: AbortSignal): Promise<void> {
    const conn = await connectSsh(this.#connectOptions(true), signal);
    const dir = q(this.#runDir);
    // One exec (one login) prepares the node: run dir, tool check, and the agent itself (on stdin).
    const agent = q(`${this.#runDir}/node-agent.sh`);
    const prep = await conn.exec(
      `umask 077 && mkdir -p ${dir} && chmod 700 ${dir} && command -v flock >/dev/null && command -v setsid >/dev/null && ` +
        `cat > ${agent}.tmp && chmod 700 ${agent}.tmp && mv -f ${agent}.tmp ${agent} && echo ok`,
      { signal, stdin: agentScript() },
    );
    if (prep.code !== 0 || !prep.stdout.toString().includes('ok')) {
      await conn.end();
      throw new DynsupError('E_NODE', `node ${this.node}: cannot prepare ${this.#runDir} (needs sh, mkdir, flock, setsid): ${prep.stderr.toString().trim() || `exit ${prep.code}`}`);
    }
    if (!this.#setupDone && this.#o.node.setup.length) {
      for (const cmd of this.#o.node.setup) {
        const r = await conn.exec(cmd, { signal });
        if (r.code !== 0) {
          await conn.end();
          throw new DynsupError('E_NODE', `node ${this.node}: setup command failed (exit ${r.code}): ${cmd}: ${r.stderr.toString().trim().slice(0, 500)}`);
        }
      }
    }
    this.#setupDone = true;
    // One long-lived shell for heartbeats and signals: no channel opened per operation.
    const control = await conn.spawn(`exec sh -s`, { signal });
    control.resume();
    control.stderr.resume();
    this.#conn = conn;
    this.#control = control;
    // Room kept on the main connection for the control shell and two commands at a time.
    this.#carriers = [{ conn, capacity: Math.max(1, this.#maxSessions - 3), used: 0 }, ...this.#carriers.filter((c) => c.conn.isOpen)];
    this.#lostSince = null;
    await this.heartbeat();
    conn.on('close', (err) => void this.#onClose(conn, err));
  }

  async heartbeat(): Promise<void> {
    this.#send(`echo ${heartbeatToken()} > ${q(`${this.#runDir}/heartbeat`)}`);
    // The spool only has to hold what the head has not read yet: free the rest (a hole keeps the
    // offsets valid), so a chatty worker cannot fill the node's disk.
    for (const w of this.#workers.values()) {
      const upTo = Math.floor(w.received / 4096) * 4096;
      if (upTo - w.freed >= SPOOL_FREE_BYTES) {
        this.#send(`fallocate -p -o 0 -l ${upTo} ${q(`${this.#runDir}/${w.name}.out`)} 2>/dev/null`);
        w.freed = upTo;
      }
    }
  }

  #send(line: string): boolean {
    const c = this.#control;
    if (!c || !this.#conn?.isOpen) return false;
    c.write(`${line}\n`);
    return true;
  }

  async #ready(): Promise<SshConnection> {
    for (;;) {
      if (this.#closing) throw new DynsupError('E_NODE', `node ${this.node}: transport closed`);
      if (this.#conn?.isOpen) return this.#conn;
      await (this.#connected ?? sleep(200));
    }
  }

  async launch(spec: LaunchSpec): Promise<WorkerProcess> {
    const conn = await this.#ready();
    const base = `${this.#runDir}/${spec.replica}`;
    // Written and started through the control shell: no new channel (and no login-shell start-up) per launch.
    const eof = `__DYNSUP_${randomBytes(9).toString('hex')}__`;
    const gen = randomBytes(6).toString('hex');
    const spool = renderSpec(spec, { mode: 'spool', leaseSeconds: this.#o.leaseMs / 1000 });
    const sent = this.#send(
      [
        `(umask 077; cat > ${q(`${base}.spec.tmp`)} <<'${eof}'`,
        spool,
        eof,
        `mv -f ${q(`${base}.spec.tmp`)} ${q(`${base}.spec`)}`,
        `cd ${q(this.#runDir)} || exit`,
        `rm -f ${q(`${spec.replica}.pid`)} ${q(`${spec.replica}.exit`)} ${q(`${spec.replica}.out`)} ${q(`${spec.replica}.apid`)}`,
        `echo ${gen} > ${q(`${spec.replica}.gen`)}`,
        `setsid sh ./node-agent.sh ${q(this.#runDir)} ${q(spec.replica)} </dev/null >/dev/null 2>${q(`${spec.replica}.agent.err`)} &`,
        `echo $! > ${q(`${spec.replica}.apid`)})`,
      ].join('\n'),
    );
    if (!sent) throw new DynsupError('E_LAUNCH', `node ${this.node}: connection lost while starting ${spec.replica}`);
    void conn;
    let settle!: (e: ExitInfo) => void;
    const exited = new Promise<ExitInfo>((r) => (settle = r));
    const w: Attached = { name: spec.replica, gen, output: new PassThrough({ highWaterMark: 1 << 20 }), received: 0, freed: 0, pid: 0, settle, settled: false, attaching: false };
    w.settle = (e) => {
      if (w.settled) return;
      w.settled = true;
      this.#workers.delete(w.name);
      w.output.end();
      settle(e);
    };
    this.#workers.set(spec.replica, w);
    let pid: number | null;
    try {
      pid = await this.#attach(w, true);
    } catch (err) {
      this.#abandon(spec.replica, gen);
      w.settle({ code: 127, signal: null });
      throw new DynsupError('E_LAUNCH', `node ${this.node}: cannot follow ${spec.replica}'s output, so it was stopped: ${errorMessage(err)}`);
    }
    if (pid === null) {
      this.#abandon(spec.replica, gen);
      const err = await conn.exec(`cat ${q(`${base}.agent.err`)} 2>/dev/null; tail -c 2000 ${q(`${base}.out`)} 2>/dev/null`).catch(() => null);
      w.settle({ code: 127, signal: null });
      throw new DynsupError('E_LAUNCH', `node ${this.node}: ${spec.replica} did not start: ${err?.stdout.toString().trim() || 'no pid reported'}`);
    }
    return {
      pid,
      output: w.output,
      exited,
      kill: async (sig) => {
        if (!this.#send(`kill -${sig.replace(/^SIG/, '')} -${pid} 2>/dev/null`)) {
          w.stopRequestedAt ??= Date.now();
          throw new DynsupError('E_NODE', `node ${this.node} unreachable: cannot deliver ${sig} to ${spec.replica}`);
        }
      },
    };
  }

  /**
   * A launch we cannot watch (no attach channel, or no pid in time: a node so loaded that the agent is
   * slow to start) must not run on unwatched: the heartbeat would keep it alive, and the next launch of
   * the replica would wait on its lock. Kill that launch's agent and worker, now or when it gets that far.
   */
  #abandon(replica: string, gen: string): void {
    const n = q(replica);
    this.#send(
      `(cd ${q(this.#runDir)} || exit; ${launchCheck(n, gen)}; ` +
        `i=0; while mine && [ ! -s ${n}.pid ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; ` +
        `mine || exit; { read -r a <${n}.apid; } 2>/dev/null && kill -KILL "$a" 2>/dev/null; ` +
        `{ read -r p <${n}.pid; } 2>/dev/null && kill -KILL -"$p" 2>/dev/null) </dev/null >/dev/null 2>&1 &`,
    );
  }

  /**
   * Open the attach channel: reports the worker pid, streams the spool from `received`, returns when the
   * agent is gone. Resolves with the pid once known (null if the worker never started); the rest runs on.
   */
  async #attach(w: Attached, first: boolean): Promise<number | null> {
    if (w.attaching || w.channel || w.settled) return null;
    w.attaching = true;
    this.#attachesOpening++;
    try {
      return await this.#attachOn(w, first);
    } finally {
      w.attaching = false;
      // A spare that was taken is being replaced already (#shell); otherwise open one once things are quiet.
      if (--this.#attachesOpening === 0 && !this.#spare && !this.#spareOpening) {
        clearTimeout(this.#spareTimer);
        (this.#spareTimer = setTimeout(() => this.#openSpare(), SPARE_QUIET_MS)).unref();
      }
    }
  }

  /** A connection with room for one more attach channel: an open one, or a new one. */
  async #carrier(): Promise<{ conn: SshConnection; release: () => void }> {
    for (;;) {
      await this.#ready();
      this.#carriers = this.#carriers.filter((c) => c.conn.isOpen);
      const c = this.#carriers.find((x) => x.used < x.capacity);
      if (c) {
        c.used++;
        let released = false;
        const release = (): void => {
          if (!released) c.used--;
          released = true;
        };
        return { conn: c.conn, release };
      }
      this.#openingCarrier ??= this.#openCarrier().finally(() => (this.#openingCarrier = undefined));
      await this.#openingCarrier;
    }
  }

  async #openCarrier(): Promise<void> {
    const conn = await connectSsh(this.#connectOptions(false), AbortSignal.timeout(30_000));
    if (this.#closing) {
      await conn.end();
      throw new DynsupError('E_NODE', `node ${this.node}: transport closed`);
    }
    this.#carriers.push({ conn, capacity: this.#maxSessions, used: 0 });
    const n = this.#carriers.length;
    this.#o.onNotice?.('info', `node ${this.node}: opened connection ${n} (more workers than one connection's ${this.#maxSessions} sessions)`);
  }

  /** A `sh -s` on the node, waiting for its script on stdin, on a connection with room for it. */
  async #openShell(): Promise<ClientChannel> {
    const { conn, release } = await this.#carrier();
    let channel: ClientChannel;
    try {
      channel = await conn.spawn('exec sh -s');
    } catch (err) {
      release();
      throw err;
    }
    channel.once('close', release);
    return channel;
  }

  #openSpare(): void {
    if (this.#spare || this.#spareOpening || this.#closing) return;
    this.#spareOpening = true;
    this.#openShell().then(
      (channel) => {
        this.#spareOpening = false;
        if (this.#closing) return void channel.close();
        // Flowing (it prints nothing until it gets a script), so that a channel that dies is noticed.
        channel.resume();
        channel.stderr.resume();
        channel.once('close', () => {
          if (this.#spare === channel) this.#spare = undefined;
        });
        this.#spare = channel;
      },
      () => (this.#spareOpening = false),
    );
  }

  /** The spare shell if it is still good, else a new shell. */
  async #shell(): Promise<ClientChannel> {
    const spare = this.#spare;
    this.#spare = undefined;
    if (spare && !spare.destroyed && spare.writable) {
      // A restart: the next one (a crash loop, a rolling restart) should find a spare too.
      this.#openSpare();
      return spare;
    }
    spare?.close();
    return this.#openShell();
  }

  async #attachOn(w: Attached, first: boolean): Promise<number | null> {
    const n = q(w.name);
    const script = [
      `cd ${q(this.#runDir)} || exit 1`,
      // Wait (briefly, only at start) for this launch's files, then for the agent to record the pid; it
      // holds the lock by then, and the spool exists.
      launchCheck(n, w.gen),
      // Up to a minute in all: a node busy with many logins at bring-up can be slow to start the agent.
      `i=0; until mine; do i=$((i+1)); [ $i -gt 3000 ] && break; sleep 0.02; done`,
      `while [ ! -s ${n}.pid ]; do [ -e ${n}.exit ] && break; i=$((i+1)); [ $i -gt 3000 ] && break; sleep 0.02; done`,
      `mine || { echo "dynsup-agent pid 0" >&2; exit 1; }`,
      `echo "dynsup-agent pid $(cat ${n}.pid 2>/dev/null || echo 0)" >&2`,
      `tail -c +${w.received + 1} -f ${n}.out 2>/dev/null </dev/null & t=$!`,
      `flock -s ${n}.lock true </dev/null`,
      `kill $t 2>/dev/null; wait $t 2>/dev/null`,
      `echo "dynsup-agent size $(stat -c %s ${n}.out 2>/dev/null || echo 0)" >&2`,
      `echo "dynsup-agent exit $(cat ${n}.exit 2>/dev/null || echo 255)" >&2`,
    ].join('\n');
    const channel = await this.#shell();
    channel.end(`${script}\n`);
    w.channel = channel;
    let rc: number | undefined;
    let finalSize: number | undefined;
    let pidResolve!: (p: number | null) => void;
    const pidKnown = new Promise<number | null>((r) => (pidResolve = r));
    let errBuf = '';
    channel.stderr.on('data', (d: Buffer) => {
      errBuf += d.toString();
      let nl: number;
      while ((nl = errBuf.indexOf('\n')) >= 0) {
        const ev = parseAgentLine(errBuf.slice(0, nl));
        errBuf = errBuf.slice(nl + 1);
        if (ev?.kind === 'pid') {
          w.pid = ev.pid || w.pid;
          pidResolve(ev.pid || null);
        } else if (ev?.kind === 'exit') rc = ev.rc;
        else if (ev?.kind === 'size') finalSize = ev.bytes;
      }
    });
    this.#pump(channel, w);
    channel.on('close', () => {
      pidResolve(null);
      w.channel = undefined;
      void this.#detached(w, rc, finalSize);
    });
    const pid = await pidKnown;
    if (!first && pid) this.#o.onNotice?.('info', `node ${this.node}: re-attached ${w.name} (pid ${pid}) at byte ${w.received}`);
    return pid;
  }

  /** Copy a channel's stdout into the replica's output, with backpressure (memory stays bounded). */
  #pump(channel: ClientChannel, w: Attached): void {
    const resume = () => channel.resume();
    w.output.on('drain', resume);
    channel.on('data', (d: Buffer) => {
      w.received += d.length;
      if (!w.output.write(d)) channel.pause();
    });
    channel.once('close', () => w.output.off('drain', resume));
  }

  /** The attach channel closed: either the worker exited (rc known) or the link dropped (re-attach later). */
  async #detached(w: Attached, rc: number | undefined, finalSize: number | undefined): Promise<void> {
    if (w.settled) return;
    if (rc === undefined) {
      // Link trouble. If the main connection went, its reconnect re-attaches everyone; if only the
      // connection carrying this channel did, nobody else will.
      void this.#reattach(w);
      return;
    }
    // Exited. `tail -f` is stopped once the worker is gone and may not have sent the last bytes: stream
    // the rest from our offset (never buffered whole: a fast worker can leave gigabytes behind).
    if (finalSize === undefined || finalSize > w.received) {
      try {
        const conn = await this.#ready();
        const rest = await conn.spawn(`exec tail -c +${w.received + 1} ${q(`${this.#runDir}/${w.name}.out`)}`);
        rest.stderr.resume();
        this.#pump(rest, w);
        await new Promise((r) => rest.once('close', r));
      } catch {
        /* the node went away right now: what we have is what we have */
      }
    }
    w.settle(exitFromStatus(rc));
  }

  /** Re-attach a worker whose attach channel dropped, retrying while the node is reachable. */
  async #reattach(w: Attached): Promise<void> {
    for (let delay = 200; !this.#closing && !w.settled && !w.channel; delay = Math.min(delay * 2, 3000)) {
      await sleep(delay);
      try {
        await this.#attach(w, false);
      } catch {
        /* retried */
      }
    }
  }

  async #onClose(conn: SshConnection, err: Error | undefined): Promise<void> {
    if (conn !== this.#conn || this.#closing) return;
    this.#conn = undefined;
    this.#control = undefined;
    this.#lostSince = Date.now();
    this.#o.onNotice?.('warn', `node ${this.node}: connection lost (${err ? errorMessage(err) : 'closed'}); reconnecting`);
    this.#connected = this.#reconnect();
    await this.#connected;
  }

  async #reconnect(): Promise<void> {
    let delay = 250;
    const lostAt = this.#lostSince ?? Date.now();
    while (!this.#closing) {
      // Workers keep running (and spooling) on the node during a partition; on reconnect they are
      // re-attached and whatever they printed is fetched, and if the lease stopped them meanwhile, that
      // exit is reported then. Only a stop we were asked for cannot wait for the node to come back:
      // past the lease (plus its grace) the node side has stopped them anyway.
      for (const w of [...this.#workers.values()]) {
        if (w.stopRequestedAt && Date.now() - Math.max(lostAt, w.stopRequestedAt) > this.#o.leaseMs + 5000) {
          this.#o.onNotice?.('warn', `node ${this.node}: ${w.name} presumed stopped (node unreachable for longer than the lease)`);
          w.settle({ code: null, signal: 'SIGKILL' });
        }
      }
      try {
        await this.#open(AbortSignal.timeout(10_000));
        this.#o.onNotice?.('info', `node ${this.node}: reconnected after ${((Date.now() - lostAt) / 1000).toFixed(1)}s`);
        for (const w of [...this.#workers.values()]) if (!w.channel) void this.#attach(w, false);
        return;
      } catch (err) {
        if (this.#closing) return;
        await sleep(delay, undefined, { signal: this.#reconnectWake.signal }).catch(() => undefined);
        delay = Math.min(delay * 2, 3000);
        void err;
      }
    }
  }

  /** Kill everything dynsup started on the node and remove the runtime dir. */
  async cleanup(graceSeconds: number): Promise<void> {
    const conn = this.#conn?.isOpen ? this.#conn : await this.#tryConnect();
    if (!conn) return;
    const dir = q(this.#runDir);
    const script = `
d=${dir}
[ -d "$d" ] || exit 0
pids=$(cat "$d"/*.pid 2>/dev/null)
for p in $pids; do kill -TERM -"$p" 2>/dev/null; done
i=0
while [ $i -lt ${Math.max(1, graceSeconds) * 10} ]; do
  alive=0; for p in $pids; do kill -0 -"$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1; i=$((i+1))
done
for p in $pids; do kill -KILL -"$p" 2>/dev/null; done
rm -rf "$d"`;
    await conn.exec(`sh -c ${q(script)}`).catch(() => undefined);
  }

  async #tryConnect(): Promise<SshConnection | null> {
    if (this.#closing) return null;
    try {
      await this.#open(AbortSignal.timeout(10_000));
      return this.#conn ?? null;
    } catch {
      return null;
    }
  }

  async close(): Promise<void> {
    this.#closing = true;
    this.#reconnectWake.abort();
    for (const w of this.#workers.values()) w.channel?.close();
    clearTimeout(this.#spareTimer);
    this.#spare?.close();
    this.#spare = undefined;
    this.#control?.end();
    await Promise.all([this.#conn, ...this.#carriers.map((c) => c.conn)].map((c) => c?.end().catch(() => undefined)));
    this.#carriers = [];
  }
}
