/**
 * The malformed / hostile cluster file corpus (test/fixtures/bad): every file must be refused with a
 * ConfigError whose issues point at the right line, column and field, and `dynsup validate` must say so
 * on stderr with exit code 2, quickly, without starting or creating anything.
 *
 * test/fixtures/bad/expected.json lists, per file, every issue it must produce (exactly that many):
 * `{line, column?, path?, message}` where message is a substring. Entries with a "note" starting with
 * BUG document a location or message that src/ gets wrong today.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, formatIssue, loadCluster } from '../../src/config/load.js';
import type { ConfigIssue } from '../../src/config/source.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const badDir = join(root, 'test/fixtures/bad');
const bin = join(root, 'bin/dynsup.js');

interface ExpectedIssue {
  readonly line: number;
  readonly column?: number;
  readonly path?: string;
  readonly message: string;
}
interface ExpectedFile {
  readonly note?: string;
  readonly issues: readonly ExpectedIssue[];
}
const expected = JSON.parse(readFileSync(join(badDir, 'expected.json'), 'utf8')) as Record<string, ExpectedFile>;
const corpus = readdirSync(badDir)
  .filter((f) => f !== 'expected.json' && !f.startsWith('.'))
  .sort();

/** A fixed environment: none of the variables the corpus leaves unset (UNSET_TOKEN, HEAD_ADDR) is in it. */
const ENV = Object.freeze({ HOME: '/home/dynsup-test', N: '2', PATH: '/usr/bin:/bin' });

const tmp = mkdtempSync(join(tmpdir(), 'dynsup-corpus-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function configError(file: string, content?: Buffer): ConfigError {
  try {
    loadCluster(file, { env: ENV, content });
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw new Error(`${file}: expected a ConfigError, got ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`, { cause: err });
  }
  throw new Error(`${file}: expected a ConfigError, but the file was accepted`);
}

function matches(actual: ConfigIssue, want: ExpectedIssue): boolean {
  return (
    actual.line === want.line &&
    (want.column === undefined || actual.column === want.column) &&
    (want.path === undefined || actual.path === want.path) &&
    actual.message.includes(want.message)
  );
}

/** For the checks after the first: a file wrongly accepted already fails 'is refused with…' once. */
function errorOrNull(file: string, content?: Buffer): ConfigError | null {
  try {
    loadCluster(file, { env: ENV, content });
    return null;
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
}

const show = (issues: readonly ConfigIssue[]) => issues.map((i) => `  ${i.line}:${i.column} [${i.path}] ${i.message}`).join('\n');
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

describe('bad cluster file corpus', () => {
  it('has an expectation for every file and a file for every expectation', () => {
    expect(corpus.length).toBeGreaterThanOrEqual(45);
    expect(Object.keys(expected).sort()).toEqual(corpus);
    for (const [f, e] of Object.entries(expected)) expect(e.issues.length, f).toBeGreaterThan(0);
  });

  describe.each(corpus)('%s', (name) => {
    const file = join(badDir, name);
    const want = expected[name] ?? { issues: [] };

    it('is refused with exactly the expected issues', () => {
      const err = configError(file);
      for (const w of want.issues) {
        expect(
          err.issues.some((a) => matches(a, w)),
          `missing ${w.line}:${w.column ?? '*'} [${w.path ?? '*'}] …${w.message}… in\n${show(err.issues)}`,
        ).toBe(true);
      }
      expect(err.issues.length, `issues:\n${show(err.issues)}`).toBe(want.issues.length);
    });

    it('formats every issue as one line FILE:LINE:COL: path: message', () => {
      const err = errorOrNull(file);
      if (!err) return;
      expect(err.code).toBe('E_CONFIG');
      expect(err.exitCode).toBe(2);
      for (const i of err.issues) {
        expect(i.file).toBe(file);
        expect(i.line).toBeGreaterThanOrEqual(1);
        expect(i.column).toBeGreaterThanOrEqual(1);
        expect(formatIssue(i)).toBe(`${file}:${i.line}:${i.column}: ${i.path ? `${i.path}: ` : ''}${i.message}`);
      }
      expect(err.message).toBe(err.issues.map(formatIssue).join('\n'));
      // One issue per line, and nothing from the file can move the cursor or recolour the terminal.
      const lines = err.message.split('\n');
      expect(lines.length).toBe(err.issues.length);
      for (const line of lines) {
        expect(line.startsWith(`${file}:`)).toBe(true);
        expect(line).toMatch(/^.+:\d+:\d+: (?:\S.*: )?\S.*$/);
        expect(CONTROL.test(line), `control character in ${JSON.stringify(line)}`).toBe(false);
      }
    });

    it('gives the same issues from `content` as from the file', () => {
      const fromFile = errorOrNull(file);
      const fromContent = errorOrNull(file, readFileSync(file));
      expect(fromContent?.issues).toEqual(fromFile?.issues);
    });

    it('issues are in file order', () => {
      const issues = errorOrNull(file)?.issues ?? [];
      const order = issues.map((i) => i.line * 1e6 + i.column);
      expect(order).toEqual([...order].sort((a, b) => a - b));
    });
  });
});

describe('generated hostile input', () => {
  const write = (name: string, data: string | Buffer) => {
    const p = join(tmp, name);
    writeFileSync(p, data);
    return p;
  };

  it('refuses a file over 1 MiB before parsing it', () => {
    const big = write('big.yaml', `name: demo\n${'# padding padding padding padding padding padding\n'.repeat(25_000)}`);
    const err = configError(big);
    // The size error alone: had the file been parsed, its missing head/nodes/workers would be reported too.
    expect(err.issues).toEqual([{ file: big, line: 1, column: 1, path: '', message: 'file is larger than 1048576 bytes' }]);
  });

  it('refuses 100 000 nested flow sequences with a ConfigError, not a crash', () => {
    const deep = write('deep.yaml', `name: demo\nx: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`);
    const err = configError(deep);
    expect(err.issues.length).toBeGreaterThan(0);
    expect(err.issues[0]!.line).toBe(2);
  });

  it('refuses 1000 nested block maps with a ConfigError, not a crash', () => {
    let text = 'name: demo\nx:\n';
    for (let i = 0; i < 1000; i++) text += `${' '.repeat(i + 1)}a:\n`;
    const err = configError(write('deep-block.yaml', text));
    expect(err.issues.length).toBeGreaterThan(0);
  });

  it('names a file that does not exist, without a position', () => {
    const missing = join(tmp, 'nope.yaml');
    const err = configError(missing);
    expect(err.issues).toEqual([{ file: missing, line: 0, column: 0, path: '', message: 'cannot read cluster file: no such file' }]);
    expect(err.message).toBe(`${missing}: cannot read cluster file: no such file`);
  });

  it('names a directory given as the cluster file', () => {
    const d = join(tmp, 'a-dir.yaml');
    mkdirSync(d, { recursive: true });
    expect(configError(d).issues[0]!.message).toBe('cannot read cluster file: is a directory');
  });

  it('a UTF-8 BOM and CRLF line endings are fine; positions still count lines', () => {
    const text = '\ufeffname: demo\r\nhead:\r\n  address: 127.0.0.1\r\nnodes:\r\n  n1: {}\r\nworkers:\r\n  w:\r\n    command: [echo]\r\n    replicas: 0\r\n';
    const err = configError(write('crlf.yaml', text));
    expect(err.issues).toMatchObject([{ line: 9, column: 15, path: 'workers.w.replicas' }]);
  });
});

describe('dynsup validate on bad files (the real CLI)', () => {
  const cases = [
    'tabs.yaml',
    'alias-bomb.yaml',
    'many-errors.yaml',
    'non-utf8-ff.yaml',
    'interp-unset.yaml',
    'gpu-overcommit.yaml',
    'cycle-3.yaml',
    'empty.yaml',
    'duplicate-key.yaml',
  ];

  it('has been built (npm run build)', () => {
    expect(existsSync(join(root, 'dist/cli/main.js')), 'run `npm run build` first').toBe(true);
  });

  // The alias bomb and the like must not blow up: the CLI finishing with exactly the expected issues is the
  // proof; the spawn timeout only stops a hung run (generous, so a slow machine does not fail it).
  it.each(cases)('%s: exit 2, every issue on stderr, nothing created', (name) => {
    const file = join(badDir, name);
    const stateDir = join(tmp, `state-${name}`);
    const cwd = mkdtempSync(join(tmp, 'cwd-'));
    const r = spawnSync(process.execPath, [bin, 'validate', file, '--state-dir', stateDir], {
      cwd,
      env: { ...ENV, PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
      encoding: 'utf8',
      timeout: 50_000, // under vitest's 60 s test timeout, so a hang fails with the message below
      killSignal: 'SIGKILL',
    });
    expect(r.error, 'the CLI did not finish').toBeUndefined();
    expect(r.signal).toBeNull();
    expect(r.status, r.stderr).toBe(2);
    expect(r.stdout).toBe('');
    const want = expected[name]!;
    for (const w of want.issues) {
      const prefix = `${file}:${w.line}:${w.column === undefined ? '' : `${w.column}:`}`;
      const line = r.stderr.split('\n').find((l) => l.startsWith(prefix) && l.includes(w.message));
      expect(line, `stderr:\n${r.stderr}`).toBeDefined();
    }
    const n = want.issues.length;
    expect(r.stderr).toContain(`${n} error${n === 1 ? '' : 's'} in ${file}`);
    // Validation starts nothing and writes nothing: no state dir, nothing in the cwd or beside the file.
    expect(existsSync(stateDir)).toBe(false);
    expect(readdirSync(cwd)).toEqual([]);
    expect(existsSync(join(badDir, '.dynsup'))).toBe(false);
  });
});

describe('a bad state dir (the real CLI)', () => {
  const run = (args: string[]) => {
    const cwd = mkdtempSync(join(tmp, 'cwd-'));
    return spawnSync(process.execPath, [bin, ...args], {
      cwd,
      env: { ...ENV, PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
      encoding: 'utf8',
      timeout: 30_000,
      killSignal: 'SIGKILL',
    });
  };

  // Under /proc `up` used to spin in a mkdir loop; a state dir that is a file gave "internal error" and a stack.
  it.each([
    ['statedir-proc.yaml', 5, 'is under /proc'],
    ['statedir-file.yaml', 5, 'is an existing file, not a directory'],
    ['statedir-root.yaml', 4, 'is the root directory'],
  ])('up %s: exit 2 at FILE:LINE, before anything starts', (name, line, message) => {
    const file = join(badDir, name);
    // A CLI that spins (the old mkdir loop) is killed by run()'s spawn timeout and fails here.
    const r = run(['up', file]);
    expect(r.error, 'the CLI did not finish').toBeUndefined();
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(`${file}:${line}:11: stateDir: state dir `);
    expect(r.stderr).toContain(message);
    expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
  });

  it('--state-dir under /proc or naming a file: exit 2 naming the option', () => {
    const file = join(root, 'test/fixtures/good/minimal.yaml');
    for (const [dir, message] of [
      ['/proc/self/dynsup', 'is under /proc'],
      ['/sys', 'is /sys'],
      [join(badDir, 'expected.json'), 'is an existing file'],
    ] as const) {
      const r = run(['validate', file, '--state-dir', dir]);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain(`${file}: --state-dir: state dir ${dir} ${message}`);
    }
  });
});

describe('a file that is not a cluster file (the real CLI)', () => {
  // `dynsup validate` of a symlink to /etc/shadow printed its first line in "unknown field '…'".
  const secret = 'HASHhashHASH';
  const files = {
    'shadow-link': `root:$6$SALTsalt$${secret}hashHASHhashHASHhash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n`,
    'key-link': `-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz${secret}AAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END OPENSSH PRIVATE KEY-----\n`,
    'ini-link': `[section]\nkey_${secret} = value\n`,
    'long-key.yaml': `name: demo\nhead: {address: 127.0.0.1}\nnodes: {n1: {}}\nworkers: {w: {command: [echo]}}\npassword_${secret}_xxxxxxxxxxxxxxxxxxxxxxxxxx: 1\n`,
  };

  it.each(Object.keys(files))('%s: exit 2, nothing of its content on stderr', (name) => {
    const target = join(tmp, `${name}.target`);
    writeFileSync(target, files[name as keyof typeof files]);
    const link = join(tmp, name);
    rmSync(link, { force: true });
    symlinkSync(target, link);
    const r = spawnSync(process.execPath, [bin, 'validate', link], {
      env: { ...ENV, PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(`${link}:`);
    expect(r.stderr).not.toContain(secret);
    expect(r.stderr).not.toMatch(/BEGIN|root|section|password/);
  });

  it('a file name with escape sequences is shown escaped', () => {
    const name = join(tmp, 'evil\u001b]0;pwned\u0007\u001b[2J.yaml');
    writeFileSync(name, 'name: x\n');
    const r = spawnSync(process.execPath, [bin, 'validate', name], {
      env: { ...ENV, PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain('evil\\e]0;pwned\\a\\e[2J.yaml');
    expect(r.stderr).not.toMatch(/[\u0007\u001b]/);
  });
});
