/** The web view's pure parts: ANSI colours, the events timeline, the dependency columns, the credentials check. */
import { describe, expect, it } from 'vitest';
import { authorizeControl } from '../../src/api/http-auth.js';
import { parseSgr, xterm256 } from '../../src/ui/client/sgr.js';
import { dependencyColumns } from '../../src/ui/graph.js';
import { parseEventLine, Timeline } from '../../src/ui/timeline.js';

const E = '\u001b';

describe('parseSgr', () => {
  it.each([
    ['plain', 'hello', [{ text: 'hello', style: {} }]],
    ['empty', '', []],
    [
      'red then reset',
      `${E}[31merror${E}[0m ok`,
      [
        { text: 'error', style: { fg: 1 } },
        { text: ' ok', style: {} },
      ],
    ],
    ['bold bright green', `${E}[1;92mREADY`, [{ text: 'READY', style: { bold: true, fg: 10 } }]],
    [
      'ESC[m resets',
      `${E}[33mA${E}[mB`,
      [
        { text: 'A', style: { fg: 3 } },
        { text: 'B', style: {} },
      ],
    ],
    [
      'background and default fg',
      `${E}[41;37mX${E}[39mY`,
      [
        { text: 'X', style: { bg: 1, fg: 7 } },
        { text: 'Y', style: { bg: 1 } },
      ],
    ],
    ['256 colours', `${E}[38;5;196mZ`, [{ text: 'Z', style: { fg: '#ff0000' } }]],
    ['256 colours below 16 stay palette', `${E}[38;5;4mZ`, [{ text: 'Z', style: { fg: 4 } }]],
    ['true colour bg', `${E}[48;2;1;2;255mZ`, [{ text: 'Z', style: { bg: '#0102ff' } }]],
    [
      '22 ends bold and dim',
      `${E}[1;2mA${E}[22mB`,
      [
        { text: 'A', style: { bold: true, dim: true } },
        { text: 'B', style: {} },
      ],
    ],
    ['unknown codes ignored', `${E}[5;31mA`, [{ text: 'A', style: { fg: 1 } }]],
    ['malformed 38 stops there', `${E}[38;9;31mA`, [{ text: 'A', style: {} }]],
    // The server escapes every other sequence: what arrives as `\e]0;t\a` text stays text.
    ['escaped non-SGR stays text', '\\e]0;title\\a x', [{ text: '\\e]0;title\\a x', style: {} }]],
  ])('%s', (_what, line, runs) => {
    expect(parseSgr(line)).toEqual(runs);
  });

  it('xterm256: cube and greys', () => {
    expect(xterm256(16)).toBe('#000000');
    expect(xterm256(231)).toBe('#ffffff');
    expect(xterm256(232)).toBe('#080808');
    expect(xterm256(255)).toBe('#eeeeee');
  });
});

const line = (o: Record<string, unknown>) => JSON.stringify({ level: 30, time: 1000, ...o });

describe('parseEventLine', () => {
  it.each([
    [
      'replica event with kind',
      line({ level: 40, replica: 'decode-0', kind: 'exited', code: null, signal: 'SIGKILL', msg: 'decode-0 killed by SIGKILL' }),
      { level: 'warn', kind: 'exited', replica: 'decode-0', signal: 'SIGKILL', code: null },
    ],
    ['restart', line({ level: 40, replica: 'w-0', kind: 'restarting', msg: 'w-0 restarting in 1.0s (restart 1)' }), { kind: 'restarting', replica: 'w-0' }],
    ['health failure', line({ level: 40, replica: 'w-0', kind: 'unhealthy', msg: 'w-0 unhealthy after 3 failed checks' }), { kind: 'unhealthy' }],
    ['partition by message', line({ level: 40, msg: 'node gpu1: connection to the agent lost; reconnecting' }), { kind: 'partition', node: 'gpu1' }],
    ['reconnect', line({ msg: 'node gpu1: reconnected after 3.2s' }), { kind: 'partition', node: 'gpu1' }],
    ['adoption without kind', line({ node: 'head', msg: 'node head: agent pid 5 still runs w-0: adopting' }), { kind: 'adopted', node: 'head' }],
    ['apply', line({ msg: 'applying clusters/x.yaml: 1 group changed' }), { kind: 'apply' }],
    ['cluster', line({ msg: 'cluster demo is up: 5 replicas' }), { kind: 'cluster' }],
    ['rolling restart', line({ group: 'decode', msg: 'rolling restart of decode: decode-0, decode-1, 1 at a time' }), { kind: 'rollout' }],
    ['unknown kind field falls back to the message', line({ kind: 'weird', msg: 'something else' }), { kind: 'other' }],
    ['error level', line({ level: 50, msg: 'boom' }), { level: 'error' }],
  ])('%s', (_what, text, want) => {
    expect(parseEventLine(text, 7)).toMatchObject({ id: 7, t: 1000, ...want });
  });

  it.each([
    ['not JSON', 'hello'],
    ['debug level', line({ level: 20, msg: 'x' })],
    ['no message', line({ msg: undefined })],
    ['JSON null', 'null'],
  ])('%s: not shown', (_what, text) => {
    expect(parseEventLine(text, 1)).toBeNull();
  });

  it('exited without a signal keeps the code', () => {
    expect(parseEventLine(line({ kind: 'exited', code: 3, replica: 'a', msg: 'a exited with code 3' }), 1)).toMatchObject({ code: 3, signal: null });
  });
});

describe('Timeline', () => {
  it('keeps the newest events, newest first, and a bounded history per replica', () => {
    const t = new Timeline({ max: 10, perReplica: 3 });
    const seen: number[] = [];
    t.onEvent((e) => seen.push(e.id));
    const chunk = Array.from({ length: 40 }, (_, i) => line({ time: i, replica: i % 2 ? 'a' : 'b', kind: 'started', msg: `m${i}` })).join('\n');
    t.write(`${chunk}\nnot json\n`);
    expect(seen).toHaveLength(40);
    expect(t.recent().map((e) => e.msg)).toEqual(Array.from({ length: 10 }, (_, i) => `m${39 - i}`));
    expect(t.recent(2).map((e) => e.msg)).toEqual(['m39', 'm38']);
    expect(t.ofReplica('a').map((e) => e.msg)).toEqual(['m39', 'm37', 'm35']);
    expect(t.ofReplica('nope')).toEqual([]);
  });

  it('ids only grow, and lines that are not events take none', () => {
    const t = new Timeline();
    t.write(`${line({ msg: 'one' })}\n{oops\n${line({ msg: 'two' })}\n`);
    expect(t.recent().map((e) => e.id)).toEqual([2, 1]);
  });
});

describe('dependencyColumns', () => {
  it.each([
    [
      'the demo graph reads frontend → decode → prefill',
      [
        ['prefill', []],
        ['decode', ['prefill']],
        ['frontend', ['decode']],
      ],
      [['frontend'], ['decode'], ['prefill']],
    ],
    [
      'independent groups share a column',
      [
        ['a', []],
        ['b', []],
      ],
      [['a', 'b']],
    ],
    [
      'deepest dependency decides',
      [
        ['p', []],
        ['d', ['p']],
        ['f', ['d', 'p']],
        ['x', ['p']],
      ],
      [['f'], ['d', 'x'], ['p']],
    ],
    ['unknown dependencies ignored', [['a', ['ghost']]], [['a']]],
    [
      'a cycle does not loop',
      [
        ['a', ['b']],
        ['b', ['a']],
      ],
      [['a'], ['b']],
    ],
    ['no groups', [], []],
  ] as [string, [string, string[]][], string[][]][])('%s', (_what, groups, cols) => {
    expect(dependencyColumns(groups.map(([name, dependsOn]) => ({ name, dependsOn })))).toEqual(cols);
  });
});

describe('authorizeControl', () => {
  const creds = { natsUser: 'dynsup', natsPassword: 'nats-password-not-it', controlKey: 's3cret-value' };
  it.each([
    ['no header', undefined, { ok: false, status: 401 }],
    ['empty header', '', { ok: false, status: 401 }],
    ['wrong secret', 's3cret-valuf', { ok: false, status: 403 }],
    ['the NATS password (workers may hold it) is not the control key', 'nats-password-not-it', { ok: false, status: 403 }],
    ['a prefix of it', 's3cret', { ok: false, status: 403 }],
    ['the secret', 's3cret-value', { ok: true }],
    ['repeated header: the first counts', ['s3cret-value', 'x'], { ok: true }],
  ] as [string, string | string[] | undefined, object][])('%s', (_what, header, want) => {
    expect(authorizeControl(header, creds)).toMatchObject(want);
  });

  it('says why, without the secret', () => {
    const r = authorizeControl(undefined, creds);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.reason).toMatch(/read-only.*credentials\.json/);
      expect(r.reason).not.toContain(creds.controlKey);
    }
  });
});
