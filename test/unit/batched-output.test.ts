import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { BatchedOutput } from '../../src/logs/batched-output.js';

/** A stream stand-in that records each write it gets (one element per system call, in the real thing). */
function recorder(backlog = 0) {
  const writes: string[] = [];
  return { writes, out: { write: (d: string | Uint8Array) => writes.push(Buffer.from(d).toString()), writableLength: backlog, isTTY: false } };
}

describe('BatchedOutput: many small writes, few writes to the stream', () => {
  it('what is written in one turn goes out as one write at its end, in order', async () => {
    const { writes, out } = recorder();
    const b = new BatchedOutput(out);
    for (let i = 0; i < 1000; i++) b.write(`line ${i}\n`);
    expect(writes).toEqual([]);
    await tick();
    expect(writes).toHaveLength(1);
    expect(writes[0]!.split('\n').slice(0, 3)).toEqual(['line 0', 'line 1', 'line 2']);
    expect(writes[0]!.split('\n')).toHaveLength(1001);
  });

  it('strings and bytes keep their order in one write', async () => {
    const { writes, out } = recorder();
    const b = new BatchedOutput(out);
    b.write('a\n');
    b.write(Buffer.from('b\n'));
    b.write('c\n');
    await tick();
    expect(writes).toEqual(['a\nb\nc\n']);
  });

  it('writes at once when maxBytes are pending (a burst does not wait for the turn to end)', () => {
    const { writes, out } = recorder();
    const b = new BatchedOutput(out, 10);
    b.write('12345');
    expect(writes).toEqual([]);
    b.write('67890');
    expect(writes).toEqual(['1234567890']);
  });

  it('counts what is pending in writableLength (backlog checks see it), and says the stream is a TTY when it is', () => {
    const { out } = recorder(100);
    const b = new BatchedOutput({ ...out, isTTY: true });
    b.write('xyz');
    expect(b.writableLength).toBe(103);
    expect(b.isTTY).toBe(true);
    b.flush();
    expect(b.writableLength).toBe(100);
  });

  it('flush with nothing pending writes nothing', () => {
    const { writes, out } = recorder();
    new BatchedOutput(out).flush();
    expect(writes).toEqual([]);
  });
});
