/**
 * Splits a byte stream into lines for display and followers, holding at most maxLineBytes of a partial line:
 * a worker that prints megabytes without a newline cannot grow our memory. The log *file* never goes through
 * this (it gets the raw bytes), so truncation here only affects what is shown, never what is kept.
 * A line that lies whole in one chunk is handed out as a view of the chunk (no copy: splitting is on the
 * path of every byte a worker prints); a partial line held across chunks is copied.
 */
export class LineSplitter {
  readonly #max: number;
  readonly #onLine: (line: Buffer, truncatedBytes: number) => void;
  #parts: Buffer[] = [];
  #held = 0;
  #dropped = 0;

  constructor(maxLineBytes: number, onLine: (line: Buffer, truncatedBytes: number) => void) {
    this.#max = maxLineBytes;
    this.#onLine = onLine;
  }

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      if (nl < 0) break;
      if (this.#held === 0 && this.#dropped === 0 && nl - start <= this.#max) {
        // A whole line inside the chunk: hand out a view, no copy. Chunks from streams are fresh
        // allocations that are never reused (the log file's write keeps a reference to them too).
        let line = chunk.subarray(start, nl);
        if (line.length && line[line.length - 1] === 13) line = line.subarray(0, line.length - 1);
        this.#onLine(line, 0);
      } else {
        this.#hold(chunk.subarray(start, nl));
        this.#emit();
      }
      start = nl + 1;
    }
    // A partial line is copied: it is held across chunks.
    if (start < chunk.length) this.#hold(chunk.subarray(start));
  }

  /** Emit what is left (a last line without newline). */
  flush(): void {
    if (this.#held || this.#dropped) this.#emit();
  }

  #hold(part: Buffer): void {
    const room = this.#max - this.#held;
    if (part.length <= room) {
      if (part.length) {
        this.#parts.push(Buffer.from(part));
        this.#held += part.length;
      }
      return;
    }
    if (room > 0) {
      this.#parts.push(Buffer.from(part.subarray(0, room)));
      this.#held += room;
    }
    this.#dropped += part.length - Math.max(room, 0);
  }

  #emit(): void {
    let line = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts, this.#held);
    if (line.length && line[line.length - 1] === 13) line = line.subarray(0, line.length - 1);
    const dropped = this.#dropped;
    this.#parts = [];
    this.#held = 0;
    this.#dropped = 0;
    this.#onLine(line, dropped);
  }
}
