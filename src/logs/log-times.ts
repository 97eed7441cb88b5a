/**
 * When a replica's log bytes arrived: <file>.times beside <file>, one `OFFSET MS` line per mark ("the bytes
 * from OFFSET on arrived at MS"), at most one mark per MARK_MS, so the file stays small next to the log.
 * `dynsup logs -n` reads the marks of the lines it shows to interleave several replicas by time. The file
 * starts over when its log rotates (offsets are the current file's). Missing marks (a log written before
 * marks existed) only cost the interleaving, never a line.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';

const MARK_MS = 100;

export const timesPath = (logFile: string): string => `${logFile}.times`;

/** The writing side, owned by the file's ReplicaLog. Never fails the log: a mark that cannot be written is lost. */
export class TimeMarks {
  readonly #path: string;
  #out: WriteStream | undefined;
  #last = 0;

  constructor(logFile: string) {
    this.#path = timesPath(logFile);
  }

  /** Bytes from `offset` on arrive now. */
  mark(offset: number, now = Date.now()): void {
    if (now - this.#last < MARK_MS) return;
    this.#last = now;
    if (!this.#out) {
      this.#out = createWriteStream(this.#path, { flags: 'a', mode: 0o640 });
      this.#out.on('error', () => undefined);
    }
    this.#out.write(`${offset} ${now}\n`);
  }

  /** The log was rotated: marks start over with its new, empty file. */
  async restart(): Promise<void> {
    await this.close();
    await rm(this.#path, { force: true });
  }

  async close(): Promise<void> {
    const out = this.#out;
    this.#out = undefined;
    this.#last = 0;
    if (out && !out.destroyed) await new Promise<void>((resolve) => out.end(resolve));
  }
}

/**
 * The arrival time of the bytes at each of `offsets` (ascending) of `logFile`: the time of the last mark at
 * or before it; undefined before the first mark (or without a marks file). Reads the marks file from its
 * end, only as far back as the first offset asked for.
 */
export async function timesAt(logFile: string, offsets: readonly number[]): Promise<(number | undefined)[]> {
  if (!offsets.length) return [];
  const marks: [number, number][] = [];
  const fh = await open(timesPath(logFile), 'r').catch(() => null);
  if (!fh) return offsets.map(() => undefined);
  try {
    let pos = (await fh.stat()).size;
    let rest = '';
    const first = offsets[0]!;
    while (pos > 0) {
      const len = Math.min(64 * 1024, pos);
      pos -= len;
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, pos);
      const text = buf.toString('latin1') + rest;
      const lines = text.split('\n');
      rest = pos > 0 ? lines.shift()! : '';
      const chunk: [number, number][] = [];
      for (const l of lines) {
        const m = /^(\d+) (\d+)$/.exec(l);
        if (m) chunk.push([Number(m[1]), Number(m[2])]);
      }
      marks.unshift(...chunk);
      if (chunk.length && chunk[0]![0] <= first) break;
    }
  } finally {
    await fh.close();
  }
  let i = 0;
  let t: number | undefined;
  return offsets.map((o) => {
    while (i < marks.length && marks[i]![0] <= o) t = marks[i++]![1];
    return t;
  });
}
