/**
 * `transport: ssh`: the pipe to a node's agent is one exec channel on one ssh2 connection, running the
 * agent bundle's bridge (`dynsup-agent connect RUNDIR`), which starts the agent if none runs. One login
 * per connection, none per worker launch or restart.
 *
 * Nothing is installed system-wide. The bundle is copied once into a per-user cache on the node
 * (~/.cache/dynsup/agent-HASH.mjs, reused while the hash matches); the agent needs Node.js >= 20: the
 * node's `nodes.X.node`, else `node` on PATH, else the head's own node binary, copied once into the same
 * cache after checking that the node's OS and architecture match the head's.
 */
import { createReadStream } from 'node:fs';
import { PassThrough } from 'node:stream';
import { createGzip } from 'node:zlib';
import type { ClientChannel } from 'ssh2';
import type { NodeConfig } from '../config/types.js';
import { DynsupError, errorMessage } from '../util/errors.js';
import { agentBundle } from './agent-bundle.js';
import type { AgentPipe, AgentStream } from './types.js';
import { connectSsh, type SshConnection } from './ssh/connection.js';
import { shellQuote } from '../util/shell-quote.js';

export interface SshPipeOptions {
  readonly node: NodeConfig;
  readonly cluster: string;
  readonly onNotice?: ((level: 'info' | 'warn' | 'error', message: string) => void) | undefined;
}

const UNAME: Record<string, string> = { linux: 'Linux', darwin: 'Darwin' };
const MACHINE: Record<string, string[]> = { x64: ['x86_64', 'amd64'], arm64: ['aarch64', 'arm64'] };

export class SshPipe implements AgentPipe {
  readonly kind = 'ssh' as const;
  readonly node: string;
  readonly runDir: string;
  readonly #o: SshPipeOptions;
  #conn: SshConnection | undefined;
  #setupDone = false;

  constructor(o: SshPipeOptions) {
    this.#o = o;
    this.node = o.node.name;
    const user = o.node.ssh?.user ?? 'root';
    this.runDir = o.node.runDir ?? `/tmp/dynsup-${user}/${o.cluster}/${o.node.name}`;
  }

  async #connection(signal?: AbortSignal): Promise<SshConnection> {
    if (this.#conn?.isOpen) return this.#conn;
    const ssh = this.#o.node.ssh!;
    const conn = await connectSsh(
      {
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
        maxChannels: 8,
        onWarning: (w: { message: string }) => this.#o.onNotice?.('warn', `node ${this.node}: ${w.message}`),
      },
      signal,
    );
    this.#conn = conn;
    conn.on('close', () => {
      if (this.#conn === conn) this.#conn = undefined;
    });
    if (!this.#setupDone && this.#o.node.setup.length) {
      for (const cmd of this.#o.node.setup) {
        const r = await conn.exec(cmd, signal ? { signal } : {});
        if (r.code !== 0) {
          throw new DynsupError('E_NODE', `node ${this.node}: setup command failed (exit ${r.code}): ${cmd}: ${r.stderr.toString().trim().slice(0, 500)}`);
        }
      }
    }
    this.#setupDone = true;
    return conn;
  }

  /** The bridge command: finds node and the bundle in the cache, or says what it needs (exit 3). */
  #bridgeCommand(spawn: boolean): string {
    const { hash } = agentBundle();
    const nodeCfg = this.#o.node.node ?? '';
    const cached = `"$C"/node-${process.version}-${process.platform}-${process.arch}/node`;
    return [
      'umask 077',
      'C="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/dynsup"',
      `D=${shellQuote(this.runDir)}`,
      'mkdir -p "$C" "$D" || exit 5',
      `A="$C"/agent-${hash}.mjs`,
      // `node --version` answers before the runtime starts (a few ms; `node -e` costs ~50).
      'ok() { [ -x "$1" ] || return 1; v=$("$1" --version 2>/dev/null) || return 1; v=${v#v}; [ "${v%%.*}" -ge 20 ] 2>/dev/null; }',
      `N=${shellQuote(nodeCfg)}`,
      `if [ -z "$N" ]; then for c in "$(command -v node 2>/dev/null)" ${cached}; do ok "$c" && { N=$c; break; }; done; fi`,
      `[ -n "$N" ] || { echo "dynsup-need node $(uname -s) $(uname -m)"; exit 3; }`,
      '[ -f "$A" ] || { echo "dynsup-need agent"; exit 3; }',
      `exec "$N" "$A" connect "$D"${spawn ? '' : ' --no-spawn'}`,
    ].join('\n');
  }

  async open(opts: { spawn: boolean; signal?: AbortSignal | undefined }): Promise<AgentStream | null> {
    const conn = await this.#connection(opts.signal);
    for (let attempt = 0; attempt < 3; attempt++) {
      const channel = await conn.spawn(this.#bridgeCommand(opts.spawn), opts.signal ? { signal: opts.signal } : {});
      const r = await this.#untilPreamble(channel);
      if (r.stream) return r.stream;
      const need = /dynsup-need (\S+)(?: (\S+) (\S+))?/.exec(r.said);
      if (r.code === 3 && !need && !opts.spawn) return null;
      if (!need) {
        throw new DynsupError(
          'E_NODE',
          `node ${this.node}: cannot start the dynsup agent (exit ${r.code ?? 'by signal'}): ${r.said.trim().split('\n').slice(-5).join('; ') || 'no output'}`,
        );
      }
      if (need[1] === 'agent') await this.#upload(conn);
      else await this.#uploadNode(conn, need[2] ?? '?', need[3] ?? '?');
    }
    throw new DynsupError('E_NODE', `node ${this.node}: the dynsup agent still cannot start after installing it in the cache`);
  }

  /**
   * Read the channel until the agent's preamble (then hand it over, what was read included) or its end
   * (then return what it printed: a 'dynsup-need' line or an error).
   */
  #untilPreamble(channel: ClientChannel): Promise<{ stream?: AgentStream; said: string; code?: number | null }> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let stderr = '';
      let done = false;
      let code: number | null | undefined;
      channel.on('exit', (c: number | null) => (code = c));
      channel.stderr.on('data', (d: Buffer) => {
        if (stderr.length < 8192) stderr += d.toString();
      });
      const onData = (d: Buffer): void => {
        chunks.push(d);
        const all = Buffer.concat(chunks);
        if (!all.includes('dynsup-agent-protocol')) return;
        done = true;
        channel.off('data', onData);
        const input = new PassThrough({ highWaterMark: 1 << 20 });
        input.write(all);
        channel.pipe(input);
        const noise = all.subarray(0, all.indexOf('dynsup-agent-protocol')).toString();
        resolve({
          stream: {
            input,
            output: channel,
            noise: () => noise + stderr,
            destroy: () => {
              channel.close();
              input.destroy();
            },
          },
          said: '',
        });
      };
      channel.on('data', onData);
      channel.once('close', () => {
        if (done) return;
        resolve({ said: Buffer.concat(chunks).toString() + stderr, code });
      });
    });
  }

  async #upload(conn: SshConnection): Promise<void> {
    const { bytes, hash } = agentBundle();
    const r = await conn.exec(
      `umask 077; C="\${XDG_CACHE_HOME:-\${HOME:-/tmp}/.cache}/dynsup"; mkdir -p "$C" && cat > "$C/agent-${hash}.mjs.tmp.$$" && mv -f "$C/agent-${hash}.mjs.tmp.$$" "$C/agent-${hash}.mjs" && echo ok`,
      { stdin: bytes },
    );
    if (r.code !== 0 || !r.stdout.toString().includes('ok')) {
      throw new DynsupError('E_NODE', `node ${this.node}: cannot copy the dynsup agent to its cache: ${r.stderr.toString().trim() || `exit ${r.code}`}`);
    }
    this.#o.onNotice?.('info', `node ${this.node}: dynsup agent ${hash} copied to the node's cache`);
  }

  /** No Node.js >= 20 on the node: copy the head's own, when the OS and architecture match. */
  async #uploadNode(conn: SshConnection, os: string, machine: string): Promise<void> {
    if (UNAME[process.platform] !== os || !(MACHINE[process.arch] ?? []).includes(machine)) {
      throw new DynsupError(
        'E_NODE',
        `node ${this.node}: no Node.js >= 20 there (PATH, nodes.${this.node}.node) and it is ${os}/${machine}, unlike this head ` +
          `(${process.platform}/${process.arch}), so the head's node cannot be copied: install Node.js 20+ on it or set nodes.${this.node}.node`,
      );
    }
    this.#o.onNotice?.('info', `node ${this.node}: no Node.js >= 20 there; copying the head's (${process.version}) to the node's cache`);
    const dir = `node-${process.version}-${process.platform}-${process.arch}`;
    const channel = await conn.spawn(
      `umask 077; C="\${XDG_CACHE_HOME:-\${HOME:-/tmp}/.cache}/dynsup"; mkdir -p "$C/${dir}" && gzip -dc > "$C/${dir}/node.tmp.$$" && chmod 700 "$C/${dir}/node.tmp.$$" && mv -f "$C/${dir}/node.tmp.$$" "$C/${dir}/node" && echo ok`,
    );
    let out = '';
    let err = '';
    channel.on('data', (d: Buffer) => (out += d.toString()));
    channel.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const closed = new Promise<void>((r) => channel.once('close', () => r()));
    // Streamed through gzip: never the whole binary in memory.
    createReadStream(process.execPath)
      .pipe(createGzip({ level: 1 }))
      .pipe(channel);
    await closed;
    if (!out.includes('ok')) throw new DynsupError('E_NODE', `node ${this.node}: cannot copy Node.js to the node's cache: ${err.trim() || 'failed'}`);
  }

  async removeRunDir(signal?: AbortSignal): Promise<void> {
    const conn = await this.#connection(signal);
    await conn.exec(`rm -rf ${shellQuote(this.runDir)}`, signal ? { signal } : {});
  }

  async close(): Promise<void> {
    const c = this.#conn;
    this.#conn = undefined;
    await c?.end().catch((e: unknown) => void errorMessage(e));
  }
}
