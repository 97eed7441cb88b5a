import type { Flags } from './flags.js';
import { control, target } from './client.js';

/** `restart`, `stop` and `start` of a replica or group, locally or over NATS. */
function targetCommand(op: 'restart' | 'stop' | 'start', verb: string) {
  return async ([file, what]: string[], flags: Flags): Promise<number> => {
    const t = await target(file!, flags);
    const rolling = op === 'restart' && flags.rolling === true;
    const names = (await control(t, flags, rolling ? { op, target: what!, rolling } : { op, target: what! })) as string[];
    process.stdout.write(`${verb}${rolling ? ' (rolling)' : ''} ${names.join(', ')}\n`);
    return 0;
  };
}

export const restartCommand = targetCommand('restart', 'restarted');
export const stopCommand = targetCommand('stop', 'stopped');
export const startCommand = targetCommand('start', 'started');
