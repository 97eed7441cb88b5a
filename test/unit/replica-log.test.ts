import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { ReplicaLog } from '../../src/logs/replica-log.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Feed `data` to a ReplicaLog in chunks of the given sizes (cycled); return the files it left, oldest first. */
async function feed(data: Buffer, chunkSizes: number[], maxBytes: number, keep = 1000): Promise<{ files: Buffer[]; log: ReplicaLog }> {
  const dir = mkdtempSync(join(tmpdir(), 'dynsup-rlog-'));
  dirs.push(dir);
  const log = new ReplicaLog('w-0', join(dir, 'w-0.log'), { maxBytes, keep });
  const input = new PassThrough();
  const done = log.consume(input);
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = chunkSizes[i % chunkSizes.length]!;
    input.write(data.subarray(at, at + n));
    at += n;
  }
  input.end();
  await done;
  await log.close();
  const rotated = readdirSync(dir)
    .filter((f) => /\.log\.\d+$/.test(f))
    .sort((a, b) => Number(b.split('.').pop()) - Number(a.split('.').pop()));
  return { files: [...rotated, 'w-0.log'].map((f) => readFileSync(join(dir, f))), log };
}

const lines = (n: number, width = (i: number) => String(i).length) =>
  Buffer.from(Array.from({ length: n }, (_, i) => `${i}`.padEnd(width(i), '.') + '\n').join(''));

describe('log rotation', () => {
  it('keeps every rotated file within maxSize, ends each at a line end, and loses nothing, whatever the chunking', async () => {
    const data = lines(3000, (i) => 1 + ((i * 7919) % 90));
    for (const chunks of [[1], [7], [4096], [65536], [1, 333, 65536, 2]]) {
      const { files, log } = await feed(data, chunks, 10_000);
      expect(Buffer.concat(files).equals(data), `chunks ${chunks}`).toBe(true);
      for (const f of files.slice(0, -1)) {
        expect(f.length).toBeLessThanOrEqual(10_000);
        expect(f.length).toBeGreaterThan(10_000 - 92); // rotated only when the next line did not fit
        expect(f[f.length - 1]).toBe(10);
      }
      expect(log.stats.rotations).toBe(files.length - 1);
      expect(log.stats.rotations).toBe(Math.floor(data.length / 10_000)); // the data is ~14 files' worth
    }
  });

  it('puts a line longer than maxSize whole into one file', async () => {
    const long = Buffer.alloc(25_000, 'x');
    const data = Buffer.concat([Buffer.from('a\n'), long, Buffer.from('\nb\n')]);
    const { files } = await feed(data, [4096], 10_000);
    expect(files.map((f) => f.toString())).toEqual(['a\n', `${long}\n`, 'b\n']);
  });

  it('appends to an existing file and rotates it when it is already over the limit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dynsup-rlog-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'w-0.log'), 'old\n'.repeat(100));
    const log = new ReplicaLog('w-0', join(dir, 'w-0.log'), { maxBytes: 100, keep: 3 });
    const input = new PassThrough();
    const done = log.consume(input);
    input.end('new\n');
    await done;
    await log.close();
    expect(readFileSync(join(dir, 'w-0.log.1'), 'utf8')).toBe('old\n'.repeat(100));
    expect(readFileSync(join(dir, 'w-0.log'), 'utf8')).toBe('new\n');
  });
});

describe('where the log ends in the agent spool (.pos, resumeOffset)', () => {
  const fresh = () => {
    const dir = mkdtempSync(join(tmpdir(), 'dynsup-rlog-'));
    dirs.push(dir);
    return join(dir, 'w-0.log');
  };

  it('is the spool offset of the last chunk written, plus what the file got after it', async () => {
    const file = fresh();
    const log = new ReplicaLog('w-0', file);
    expect(log.resumeOffset()).toBeUndefined(); // nothing noted yet
    await log.append(Buffer.from('a\nb\n'), 1004); // spool bytes 1000..1004
    await log.append(Buffer.from('c\n'), 1006);
    expect(log.resumeOffset()).toBe(1006);
    // Bytes that reached the file after the last note (a supervisor killed before noting): counted too.
    writeFileSync(file, 'd\n', { flag: 'a' });
    expect(log.resumeOffset()).toBe(1008);
    await log.close();
    // A new ReplicaLog of the same file (the next supervisor) reads the same.
    expect(new ReplicaLog('w-0', file).resumeOffset()).toBe(1008);
  });

  it('says nothing about another file: rotated since, replaced, or shorter than noted', async () => {
    const file = fresh();
    const log = new ReplicaLog('w-0', file, { maxBytes: 8, keep: 2 });
    await log.append(Buffer.from('1234567\n'), 8);
    expect(log.resumeOffset()).toBe(8);
    await log.append(Buffer.from('abcdefg\n'), 16); // rotates: the note is about the new file
    expect(log.resumeOffset()).toBe(16);
    await log.close();
    rmSync(file);
    writeFileSync(file, 'a new file with another inode\n');
    expect(new ReplicaLog('w-0', file).resumeOffset()).toBeUndefined();
    const other = fresh();
    const l2 = new ReplicaLog('w-0', other);
    await l2.append(Buffer.from('x\ny\n'), 4);
    await l2.close();
    writeFileSync(other, 'x\n'); // truncated below what was noted
    expect(new ReplicaLog('w-0', other).resumeOffset()).toBeUndefined();
  });

  it('is not noted for output that is not from a spool (no offset given)', async () => {
    const file = fresh();
    const log = new ReplicaLog('w-0', file);
    await log.append(Buffer.from('a\n'));
    expect(log.resumeOffset()).toBeUndefined();
    await log.close();
  });
});
