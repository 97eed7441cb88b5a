/** Processes of this machine. */
import { readFileSync } from 'node:fs';

/** Whether `pid` runs. A zombie (killed, not yet reaped by an init that reaps slowly) does not. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0] !== 'Z';
  } catch {
    return true;
  }
}
