import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { shellJoin, shellQuote } from '../../src/util/shell-quote.js';

const dir = mkdtempSync(join(tmpdir(), 'dynsup-quote-'));
const pwned = join(dir, 'pwned');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What `sh -c "printf %s <quoted>"` prints: the word exactly as the shell parsed it. */
function throughSh(quoted: string, shell = 'sh'): string {
  return execFileSync(shell, ['-c', `printf %s ${quoted}`], { encoding: 'utf8', cwd: dir, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: dir } });
}

const nasty: readonly string[] = [
  '',
  ' ',
  'plain',
  'two words',
  `$(touch ${pwned})`,
  `\`touch ${pwned}\``,
  "'; rm -rf ~ #",
  "it's",
  "''",
  "'",
  '"',
  '"$HOME"',
  '$HOME ${HOME} $0 $$ $? $@ $*',
  'back\\slash \\n \\\\',
  'line1\nline2\n',
  '\n',
  'tab\there',
  '*',
  '~',
  '~/x',
  '!',
  '!!',
  '#not a comment',
  'a;b|c&d>e<f',
  '(subshell)',
  '{a,b}',
  '[ab]?',
  'FOO=bar',
  '-n',
  '--',
  '%s%d%%',
  'ünïcødé → 🚀',
  `mixed 'single' and "double" and $(touch ${pwned}) and \`x\`\n`,
];

describe('shellQuote', () => {
  it.each(nasty.map((s) => [JSON.stringify(s), s] as const))('round-trips %s through sh -c', (_label, s) => {
    expect(throughSh(shellQuote(s))).toBe(s);
    expect(existsSync(pwned)).toBe(false);
  });

  it.each(nasty.filter((s) => s !== '').map((s) => [JSON.stringify(s), s] as const))('is one word: %s', (_label, s) => {
    // `set -- WORD; echo $#` counts the words the shell made of it.
    const out = execFileSync('sh', ['-c', `set -- ${shellQuote(s)}; printf %s "$#"`], { encoding: 'utf8', cwd: dir });
    expect(out).toBe('1');
  });

  // Both by name, not through whatever `sh` is: dash is Debian's sh and what a node's sshd usually runs
  // commands with; bash is the common login shell. .ci/install.sh installs both; a missing one fails here.
  it.each(['dash', 'bash'])('also round-trips through %s', (shell) => {
    for (const s of nasty) expect(throughSh(shellQuote(s), shell)).toBe(s);
    expect(existsSync(pwned)).toBe(false);
  });

  it('leaves plain words bare and quotes everything else', () => {
    expect(shellQuote('/opt/dynamo/bin/worker')).toBe('/opt/dynamo/bin/worker');
    expect(shellQuote('--port=8000')).toBe("'--port=8000'");
    expect(shellQuote('FOO=bar')).toBe("'FOO=bar'");
    expect(shellQuote('')).toBe("''");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
  });

  it('a quoted assignment-like word is run as a command, not an assignment', () => {
    const out = execFileSync('sh', ['-c', `${shellQuote('X=1')} 2>/dev/null; printf %s "\${X-unset}"`], { encoding: 'utf8' });
    expect(out).toBe('unset');
  });

  it('refuses NUL, which no shell word can hold', () => {
    expect(() => shellQuote('a\0b')).toThrow(TypeError);
  });
});

describe('shellJoin', () => {
  it('builds a command line that yields the same argv', () => {
    const argv = ['printf', '%s|', 'a b', "c'd", '$(e)', '', 'f\ng'];
    const out = execFileSync('sh', ['-c', shellJoin(argv)], { encoding: 'utf8' });
    expect(out).toBe("a b|c'd|$(e)||f\ng|");
  });
});
