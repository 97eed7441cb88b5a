import { describe, expect, it } from 'vitest';
import { LineSplitter } from '../../src/logs/line-splitter.js';

function collect(max = 1024) {
  const lines: { text: string; bytes: Buffer; truncated: number }[] = [];
  const s = new LineSplitter(max, (line, truncated) => lines.push({ text: line.toString('latin1'), bytes: Buffer.from(line), truncated }));
  return { s, lines, texts: () => lines.map((l) => l.text) };
}
const b = (s: string) => Buffer.from(s, 'latin1');

describe('LineSplitter', () => {
  it('joins lines split across chunk boundaries', () => {
    const { s, texts } = collect();
    for (const chunk of ['ab', 'c\nde', 'f\n', 'g', '', 'h\ni\n']) s.push(b(chunk));
    expect(texts()).toEqual(['abc', 'def', 'gh', 'i']);
  });

  it('gives the same lines for any chunking of the same bytes', () => {
    const input = 'first line\nsecond\n\nfourth after an empty one\r\nlast without newline';
    const whole = collect();
    whole.s.push(b(input));
    whole.s.flush();
    for (const size of [1, 2, 3, 7, 64]) {
      const c = collect();
      for (let i = 0; i < input.length; i += size) c.s.push(b(input.slice(i, i + size)));
      c.s.flush();
      expect(c.texts(), `chunk size ${size}`).toEqual(whole.texts());
    }
    expect(whole.texts()).toEqual(['first line', 'second', '', 'fourth after an empty one', 'last without newline']);
  });

  it('strips the CR of CRLF, also when CR and LF are in different chunks', () => {
    const { s, texts } = collect();
    s.push(b('a\r\nb\r'));
    s.push(b('\nc\r\n'));
    expect(texts()).toEqual(['a', 'b', 'c']);
  });

  it('keeps a CR that is not at the end of the line (progress bars)', () => {
    const { s, texts } = collect();
    s.push(b('10%\r50%\r100%\n'));
    expect(texts()).toEqual(['10%\r50%\r100%']);
  });

  it('emits empty lines', () => {
    const { s, lines } = collect();
    s.push(b('\n\n\r\n'));
    expect(lines.map((l) => [l.text, l.truncated])).toEqual([
      ['', 0],
      ['', 0],
      ['', 0],
    ]);
  });

  it('truncates a very long line to maxLineBytes and reports how many bytes were dropped', () => {
    const { s, lines } = collect(10);
    s.push(b(`${'x'.repeat(25)}\nshort\n`));
    expect(lines.map((l) => [l.text, l.truncated])).toEqual([
      ['x'.repeat(10), 15],
      ['short', 0],
    ]);
  });

  it('truncates the same way when the long line arrives in many chunks', () => {
    const { s, lines } = collect(10);
    for (let i = 0; i < 100; i++) s.push(b('0123456789'));
    s.push(b('\nnext\n'));
    expect(lines.map((l) => [l.text, l.truncated])).toEqual([
      ['0123456789', 990],
      ['next', 0],
    ]);
  });

  it('holds at most maxLineBytes of a line however much comes without a newline', () => {
    const { s, lines } = collect(1000);
    const mb = Buffer.alloc(1 << 20, 0x61);
    for (let i = 0; i < 8; i++) s.push(mb);
    s.flush();
    expect(lines).toHaveLength(1);
    expect(lines[0]!.bytes.length).toBe(1000);
    expect(lines[0]!.truncated).toBe(8 * (1 << 20) - 1000);
  });

  it('does not truncate a line of exactly maxLineBytes', () => {
    const { s, lines } = collect(5);
    s.push(b('abcde\nabcdef\n'));
    expect(lines.map((l) => [l.text, l.truncated])).toEqual([
      ['abcde', 0],
      ['abcde', 1],
    ]);
  });

  it('passes binary bytes through unchanged (everything but LF; CR only stripped at the end)', () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i).filter((i) => i !== 10));
    const { s, lines } = collect(4096);
    s.push(all.subarray(0, 100));
    s.push(all.subarray(100));
    s.push(Buffer.from([10, 0, 0xff, 0xfe, 10]));
    expect(lines.map((l) => l.bytes)).toEqual([all, Buffer.from([0, 0xff, 0xfe])]);
  });

  it('keeps a UTF-8 character split across chunks intact', () => {
    const euro = Buffer.from('€ ok\n', 'utf8');
    const lines: string[] = [];
    const s = new LineSplitter(100, (line) => lines.push(line.toString('utf8')));
    s.push(euro.subarray(0, 1));
    s.push(euro.subarray(1, 2));
    s.push(euro.subarray(2));
    expect(lines).toEqual(['€ ok']);
  });

  it('copies what it holds: the caller may reuse a chunk buffer after push', () => {
    const { s, texts } = collect();
    const chunk = b('abc');
    s.push(chunk);
    chunk.fill(0x7a);
    s.push(b('def\n'));
    expect(texts()).toEqual(['abcdef']);
  });

  it('hands out lines that lie whole in a chunk as views of it, without copying', () => {
    const seen: Buffer[] = [];
    const s = new LineSplitter(1024, (l) => seen.push(l));
    const chunk = b('one\r\ntwo\nthr');
    s.push(chunk);
    s.push(b('ee\n'));
    expect(seen.map((l) => l.toString())).toEqual(['one', 'two', 'three']);
    expect(seen[0]!.buffer).toBe(chunk.buffer);
    expect(seen[1]!.byteOffset).toBe(chunk.byteOffset + 5);
  });

  describe('flush', () => {
    it('emits a last line without newline, once', () => {
      const { s, lines } = collect();
      s.push(b('done\npartial'));
      s.flush();
      s.flush();
      expect(lines.map((l) => [l.text, l.truncated])).toEqual([
        ['done', 0],
        ['partial', 0],
      ]);
    });

    it('emits nothing when nothing is pending', () => {
      const { s, lines } = collect();
      s.flush();
      s.push(b('a\n'));
      s.flush();
      expect(lines.map((l) => l.text)).toEqual(['a']);
    });

    it('emits a pending truncated line with its count', () => {
      const { s, lines } = collect(4);
      s.push(b('abcdefgh'));
      s.flush();
      expect(lines.map((l) => [l.text, l.truncated])).toEqual([['abcd', 4]]);
    });

    it('strips a trailing CR from the last line too', () => {
      const { s, texts } = collect();
      s.push(b('x\r'));
      s.flush();
      expect(texts()).toEqual(['x']);
    });

    it('the splitter is usable again after a flush', () => {
      const { s, texts } = collect();
      s.push(b('one'));
      s.flush();
      s.push(b('two\n'));
      expect(texts()).toEqual(['one', 'two']);
    });
  });
});
