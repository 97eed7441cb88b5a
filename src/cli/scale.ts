import { DynsupError } from '../util/errors.js';
import type { Flags } from './commands.js';
import { control, target } from './client.js';

export async function scaleCommand([file, ...specs]: string[], flags: Flags): Promise<number> {
  const t = await target(file!, flags);
  for (const spec of specs) {
    const m = /^([A-Za-z0-9][A-Za-z0-9_.-]*)=(\d+)$/.exec(spec);
    if (!m) throw new DynsupError('E_USAGE', `expected GROUP=N, got '${spec}'`);
    const r = (await control(t, flags, { op: 'scale', group: m[1]!, count: Number(m[2]) })) as { added: string[]; removed: string[] };
    process.stdout.write(
      `${m[1]}: ${m[2]} replica(s)${r.added.length ? `, started ${r.added.join(', ')}` : ''}${r.removed.length ? `, stopped ${r.removed.join(', ')}` : ''}${!r.added.length && !r.removed.length ? ' (unchanged)' : ''}\n`,
    );
  }
  return 0;
}
