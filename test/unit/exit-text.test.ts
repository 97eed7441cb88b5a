import { describe, expect, it } from 'vitest';
import { exitText } from '../../src/util/exit-text.js';

describe('exitText: how a process ended, worded the same in every message', () => {
  it.each([
    [{ code: 1, signal: null }, 'exited with code 1'],
    [{ code: 0, signal: null }, 'exited with code 0'],
    [{ code: null, signal: 'SIGKILL' }, 'killed by SIGKILL'],
    // A shell reports a killed child as 128+n; a signal, when there is one, is the truer story.
    [{ code: 137, signal: 'SIGKILL' }, 'killed by SIGKILL'],
  ])('%j → %s', (exit, text) => expect(exitText(exit)).toBe(text));
});
