/**
 * One replica's log: every byte the worker prints is appended to <stateDir>/logs/<replica>.log, in order,
 * exactly once, across restarts; lines are also handed to listeners (terminal, followers).
 * Backpressure: a slow disk slows the reading of the worker's output (the pipe then fills and the worker
 * blocks) rather than buffering without bound in the supervisor.
 * Rotation by size happens only at a line boundary (file.log → file.log.1 → ...), so no line is split
 * across files. A failing disk (ENOSPC...) is reported and retried; the worker keeps running.
 * Beside each file, <file>.times notes when its bytes arrived (log-times.ts), so that `dynsup logs -n`
 * can interleave several replicas' last lines by time; the log file itself keeps the worker's exact bytes.
 * For output that comes from a node agent's spool, <file>.pos holds where the file ends in the spool
 * (`resumeOffset`): a supervisor that adopts the worker after the last one died between writing bytes and
 * acknowledging them resumes after what the file has, not at the last acknowledgement (no line twice).
 */
import { closeSync, createWriteStream, fstatSync, openSync, readFileSync, statSync, writeSync, type WriteStream } from 'node:fs';
import { mkdir, rename, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { LineSplitter } from './line-splitter.js';
import { TimeMarks } from './log-times.js';

/** `seq`: the line's number in this log since the supervisor started (1, 2, ...), as in `snapshot()`. */
export type LineListener = (replica: string, line: Buffer, truncatedBytes: number, seq: number) => void;

/** A consistent point of the log: `lines` lines handed out so far, all of them in the first `size` bytes of the current file. */
export interface LogSnapshot {
  readonly lines: number;
  readonly size: number;
  readonly rotations: number;
}

export interface ReplicaLogStats {
  lines: number;
  bytes: number;
  /** Write errors (disk full...): reported, never fatal to the worker. */
  writeErrors: number;
  /** Bytes that could not be written (the disk refused them). */
  bytesLost: number;
  rotations: number;
  lastError?: string | undefined;
}

export interface ReplicaLogOptions {
  /** Longest line kept whole for the terminal/followers (the file always gets everything). */
  readonly maxLineBytes?: number;
  /** Rotate when the file reaches this size (0 = never). */
  readonly maxBytes?: number;
  /** Rotated files kept (file.log.1 ... file.log.N). */
  readonly keep?: number;
  /** Called once per failure episode (and once when writing works again). */
  readonly onError?: (replica: string, message: string) => void;
}

const RETRY_MS = 2000;
/** A .pos note, overwritten in place: JSON padded to a fixed size. */
const POS_BYTES = 128;

function fileId(st: { ino: number; birthtimeMs: number }): string {
  return `${st.ino}:${Math.trunc(st.birthtimeMs * 1000)}`;
}

export class ReplicaLog {
  readonly replica: string;
  readonly file: string;
  readonly stats: ReplicaLogStats = { lines: 0, bytes: 0, writeErrors: 0, bytesLost: 0, rotations: 0 };
  readonly #listeners = new Set<LineListener>();
  readonly #o: ReplicaLogOptions;
  #out: WriteStream | undefined;
  #size = 0;
  /** Updated after each chunk is written: every line counted so far lies in the file's first `size` bytes. */
  #snap: LogSnapshot = { lines: 0, size: 0, rotations: 0 };
  /** Whether the file's last byte is a line end (a rotation there splits nothing). */
  #endsLine = true;
  #failedAt = 0;
  readonly #times: TimeMarks;
  /** The current file's identity, inode and birth time (a .pos note is only about the file it was written for; inodes are reused). */
  #id = '';
  #posFd: number | undefined;

  constructor(replica: string, file: string, options: ReplicaLogOptions = {}) {
    this.replica = replica;
    this.file = file;
    this.#o = options;
    this.#times = new TimeMarks(file);
  }

  onLine(listener: LineListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The open stream, or null while the disk is failing (retried every RETRY_MS). */
  async #stream(): Promise<WriteStream | null> {
    if (this.#out && !this.#out.destroyed) return this.#out;
    if (this.#failedAt && Date.now() - this.#failedAt < RETRY_MS) return null;
    try {
      await mkdir(dirname(this.file), { recursive: true });
      [this.#size, this.#id] = await stat(this.file).then(
        (s) => [s.size, fileId(s)],
        () => [0, ''],
      );
    } catch (err) {
      this.#fail(err as Error);
      return null;
    }
    const out = createWriteStream(this.file, { flags: 'a', mode: 0o640 });
    out.on('error', (err) => this.#fail(err));
    this.#out = out;
    // A file that did not exist yet has its inode once opened (the open is queued before any write).
    if (!this.#id) out.once('open', (fd: number) => (this.#id = fileId(fstatSync(fd))));
    return out;
  }

  #fail(err: Error): void {
    this.stats.writeErrors++;
    this.stats.lastError = err.message;
    if (!this.#failedAt)
      this.#o.onError?.(this.replica, `cannot write ${this.file}: ${err.message}; the worker keeps running, its output is dropped until the disk recovers`);
    this.#failedAt = Date.now();
  }

  async #write(chunk: Buffer): Promise<void> {
    const out = await this.#stream();
    if (!out) {
      this.stats.bytesLost += chunk.length;
      return;
    }
    if (this.#failedAt) {
      this.#failedAt = 0;
      this.#o.onError?.(this.replica, `writing ${this.file} works again (${this.stats.bytesLost} bytes were lost)`);
    }
    this.#times.mark(this.#size);
    this.#size += chunk.length;
    this.#endsLine = chunk[chunk.length - 1] === 10;
    // Resolved once the OS has the bytes: the caller acknowledges them to the node only then.
    await new Promise<void>((resolve) => {
      out.write(chunk, () => resolve());
    });
  }

  /**
   * Write a chunk; a file never grows past maxBytes except by one line longer than maxBytes itself.
   * Rotation happens only after a newline, so no line is split across files.
   */
  async #append(chunk: Buffer): Promise<void> {
    const max = this.#o.maxBytes ?? 0;
    if (max) await this.#stream(); // learn the size of a file left by an earlier run
    while (max && this.#size + chunk.length > max) {
      const room = max - this.#size;
      // The last line end that still fits in this file...
      let cut = room > 0 ? chunk.lastIndexOf(10, room - 1) + 1 : 0;
      if (cut === 0 && this.#size > 0 && this.#endsLine) {
        if (!(await this.#rotate())) break; // the next line does not fit: start it in a fresh file
        continue;
      }
      // ...or, for a line longer than the room left, that line's end.
      if (cut === 0) cut = chunk.indexOf(10) + 1;
      if (cut === 0) break; // no line end in sight: keep appending until one arrives
      await this.#write(chunk.subarray(0, cut));
      chunk = chunk.subarray(cut);
      if (!(await this.#rotate())) break;
    }
    if (chunk.length) await this.#write(chunk);
  }

  /** False when there is no open file to rotate (the disk is failing). */
  async #rotate(): Promise<boolean> {
    if (!this.#out || this.#out.destroyed) return false;
    const out = this.#out;
    this.#out = undefined;
    await new Promise<void>((resolve) => out.end(resolve));
    const keep = Math.max(1, this.#o.keep ?? 3);
    for (let i = keep - 1; i >= 1; i--) await rename(`${this.file}.${i}`, `${this.file}.${i + 1}`).catch(() => undefined);
    await rename(this.file, `${this.file}.1`).catch((err: Error) => this.#fail(err));
    await this.#times.restart();
    this.#size = 0;
    this.#id = ''; // the next file's, once #stream opens it
    this.stats.rotations++;
    await this.#stream(); // the current file always exists (followers and `dynsup logs` read it)
    return true;
  }

  #splitter: LineSplitter | undefined;

  /**
   * Append a chunk of the replica's output (one continuous stream across restarts: the node agent ends a
   * killed worker's last line). Resolves once the bytes are handed to the OS.
   */
  async append(chunk: Buffer, spoolEnd?: number): Promise<void> {
    this.#splitter ??= new LineSplitter(this.#o.maxLineBytes ?? 64 * 1024, (line, truncated) => {
      const seq = ++this.stats.lines;
      for (const l of this.#listeners) l(this.replica, line, truncated, seq);
    });
    this.stats.bytes += chunk.length;
    this.#splitter.push(chunk);
    await this.#append(chunk);
    this.#takeSnapshot();
    if (spoolEnd !== undefined) this.#notePos(spoolEnd);
  }

  /**
   * After a chunk's bytes are in the file: the file's end (size, inode) is `spoolEnd` in the agent's spool.
   * One small overwrite at offset 0; a failure only costs the exactness of a later adoption.
   */
  #notePos(spoolEnd: number): void {
    if (!this.#id) return;
    try {
      this.#posFd ??= openSync(`${this.file}.pos`, 'w', 0o640);
      writeSync(this.#posFd, JSON.stringify({ spool: spoolEnd, size: this.#size, file: this.#id }).padEnd(POS_BYTES, ' '), 0);
    } catch {
      /* the next adoption resumes at the acknowledged offset, as without this note */
    }
  }

  /**
   * Where in the agent's spool this file ends, from the last .pos note and what the file has now (bytes
   * written after the note are the spool's next ones); undefined when the note is not about this file.
   */
  resumeOffset(): number | undefined {
    try {
      const pos = JSON.parse(readFileSync(`${this.file}.pos`, 'utf8')) as { spool?: unknown; size?: unknown; file?: unknown };
      const st = statSync(this.file);
      if (typeof pos.spool !== 'number' || typeof pos.size !== 'number' || pos.file !== fileId(st) || st.size < pos.size) return undefined;
      return pos.spool + (st.size - pos.size);
    } catch {
      return undefined;
    }
  }

  /** Read `output` to its end. Resolves once everything read is handed to the file stream. */
  async consume(output: Readable): Promise<void> {
    let lastByte = 10;
    const splitter = new LineSplitter(this.#o.maxLineBytes ?? 64 * 1024, (line, truncated) => {
      const seq = ++this.stats.lines;
      for (const l of this.#listeners) l(this.replica, line, truncated, seq);
    });
    // Lines are handed out before their bytes reach the file, and the snapshot is taken after: so a
    // reader of the file (`tail` for a remote `logs -f`) knows exactly which lines it has seen and which
    // will come to it live.
    try {
      for await (const chunk of output as AsyncIterable<Buffer>) {
        this.stats.bytes += chunk.length;
        lastByte = chunk[chunk.length - 1] ?? lastByte;
        splitter.push(chunk);
        await this.#append(chunk);
        this.#takeSnapshot();
      }
    } catch {
      // A stream error (connection lost) ends this run's output; what was read is kept.
    }
    splitter.flush();
    // A worker killed mid-line must not have the next run's first line glued to its last one.
    if (lastByte !== 10) await this.#write(Buffer.from('\n'));
    this.#takeSnapshot();
  }

  #takeSnapshot(): void {
    this.#snap = { lines: this.stats.lines, size: this.#size, rotations: this.stats.rotations };
  }

  /**
   * The latest consistent point, once its bytes were handed to the OS (so another reader of the file
   * sees them). Whether the file is still the same one: compare `rotations` with `stats.rotations`.
   */
  async snapshot(): Promise<LogSnapshot> {
    const snap = this.#snap;
    const out = this.#out;
    // Writes complete in order: when this empty one is done, every byte before it is in the file.
    if (out && !out.destroyed) await new Promise<void>((resolve) => out.write(Buffer.alloc(0), () => resolve()));
    return snap;
  }

  /** Wait until everything written so far is handed to the OS, then close. */
  async close(): Promise<void> {
    await this.#times.close();
    if (this.#posFd !== undefined) closeSync(this.#posFd);
    this.#posFd = undefined;
    const out = this.#out;
    this.#out = undefined;
    if (!out || out.destroyed) return;
    await new Promise<void>((resolve) => out.end(resolve));
  }
}
