/**
 * One replica's log: every byte the worker prints is appended to <stateDir>/logs/<replica>.log, in order,
 * exactly once, across restarts; lines are also handed to listeners (terminal, followers).
 * Backpressure: a slow disk slows the reading of the worker's output (the pipe then fills and the worker
 * blocks) rather than buffering without bound in the supervisor.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { once } from 'node:events';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { LineSplitter } from './line-splitter.js';

export type LineListener = (replica: string, line: Buffer, truncatedBytes: number) => void;

export interface ReplicaLogStats {
  lines: number;
  bytes: number;
  /** Write errors (disk full...): reported, never fatal to the worker. */
  writeErrors: number;
  lastError?: string | undefined;
}

export class ReplicaLog {
  readonly replica: string;
  readonly file: string;
  readonly stats: ReplicaLogStats = { lines: 0, bytes: 0, writeErrors: 0 };
  readonly #listeners = new Set<LineListener>();
  readonly #maxLineBytes: number;
  #out: WriteStream | undefined;

  constructor(replica: string, file: string, maxLineBytes = 64 * 1024) {
    this.replica = replica;
    this.file = file;
    this.#maxLineBytes = maxLineBytes;
  }

  onLine(listener: LineListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async #stream(): Promise<WriteStream> {
    if (this.#out && !this.#out.destroyed) return this.#out;
    await mkdir(dirname(this.file), { recursive: true });
    const out = createWriteStream(this.file, { flags: 'a', mode: 0o640 });
    out.on('error', (err) => {
      this.stats.writeErrors++;
      this.stats.lastError = err.message;
    });
    this.#out = out;
    return out;
  }

  /** Read `output` to its end. Resolves once everything read is handed to the file stream. */
  async consume(output: Readable): Promise<void> {
    const out = await this.#stream();
    let lastByte = 10;
    const splitter = new LineSplitter(this.#maxLineBytes, (line, truncated) => {
      this.stats.lines++;
      for (const l of this.#listeners) l(this.replica, line, truncated);
    });
    try {
      for await (const chunk of output as AsyncIterable<Buffer>) {
        this.stats.bytes += chunk.length;
        lastByte = chunk[chunk.length - 1] ?? lastByte;
        if (!out.destroyed && !out.write(chunk)) await Promise.race([once(out, 'drain'), once(out, 'close')]);
        splitter.push(chunk);
      }
    } catch {
      // A stream error (connection lost) ends this run's output; what was read is kept.
    }
    splitter.flush();
    // A worker killed mid-line must not have the next run's first line glued to its last one.
    if (lastByte !== 10 && !out.destroyed) out.write('\n');
  }

  /** Wait until everything written so far is on disk (flushed to the OS), then close. */
  async close(): Promise<void> {
    const out = this.#out;
    this.#out = undefined;
    if (!out || out.destroyed) return;
    await new Promise<void>((resolve) => out.end(resolve));
  }
}
