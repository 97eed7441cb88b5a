/**
 * Coalesces the many small writes of a stream of worker lines into few: a write per line costs a system
 * call each (stdout to a file is even synchronous: a foreground supervisor under sbatch, `dynsup logs >
 * file`), which made the terminal path the supervisor's largest cost for chatty workers. What is written
 * in one turn of the event loop goes out together at its end, or as soon as `maxBytes` are pending; order
 * is kept. `writableLength` counts what is pending too, so backlog checks (TerminalMux) still see it.
 */
export interface LineOutput {
  write(data: string | Uint8Array): unknown;
  readonly writableLength: number;
  readonly isTTY?: boolean | undefined;
}

export class BatchedOutput implements LineOutput {
  readonly #out: LineOutput;
  readonly #maxBytes: number;
  #parts: (string | Uint8Array)[] = [];
  #pending = 0;
  #scheduled: NodeJS.Immediate | undefined;

  constructor(out: LineOutput, maxBytes = 64 * 1024) {
    this.#out = out;
    this.#maxBytes = maxBytes;
  }

  get isTTY(): boolean | undefined {
    return this.#out.isTTY;
  }

  get writableLength(): number {
    return this.#out.writableLength + this.#pending;
  }

  write(data: string | Uint8Array): boolean {
    this.#parts.push(data);
    this.#pending += data.length;
    if (this.#pending >= this.#maxBytes) this.flush();
    else this.#scheduled ??= setImmediate(() => this.flush());
    return true;
  }

  /** Hand everything pending to the stream now. */
  flush(): void {
    if (this.#scheduled) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
    if (!this.#parts.length) return;
    const parts = this.#parts;
    this.#parts = [];
    this.#pending = 0;
    this.#out.write(parts.every((p) => typeof p === 'string') ? parts.join('') : Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p))));
  }
}
