/**
 * Escape sequences a worker prints reach the terminal escaped through `dynsup logs` (one replica, and the
 * prefixed view of several), while its log file keeps the exact bytes.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dynsup, tempCluster, waitFor, type TempCluster } from '../helpers/cluster.js';

let c: TempCluster | undefined;
afterAll(async () => {
  if (c) await dynsup(['down', c.file]);
});

const EVIL = Buffer.from('\u001b]0;pwned\u0007\u001b[2J', 'latin1');

describe('terminal escapes from workers', () => {
  it('dynsup logs shows \\e]0;pwned\\a\\e[2J escaped; the log file keeps the bytes', async () => {
    c = await tempCluster(
      `nodes:
  head: { transport: local }
workers:
  w:
    command: "printf 'before \\\\033]0;pwned\\\\007\\\\033[2J after\\\\n'; exec sleep 600"
    replicas: 2
`,
      { name: `esc${Math.random().toString(36).slice(2, 8)}` },
    );
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr + up.stdout).toBe(0);
    const logFile = join(c.dir, 'state/logs/w-0.log');
    const stored = await waitFor('the line in the log file', () => {
      try {
        const b = readFileSync(logFile);
        return b.includes('after') ? b : null;
      } catch {
        return null;
      }
    });
    expect(stored.equals(Buffer.concat([Buffer.from('before '), EVIL, Buffer.from(' after\n')]))).toBe(true);

    for (const args of [
      ['logs', c.file, 'w-0'],
      ['logs', c.file, 'w-0', '-n', '5'],
      ['logs', c.file],
    ]) {
      const r = await dynsup(args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout, args.join(' ')).toContain('before \\e]0;pwned\\a\\e[2J after');
      expect(r.stdout).not.toMatch(/[\u0007\u001b]/);
    }
  });
});
