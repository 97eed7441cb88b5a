import type { Flags } from './flags.js';
import { scaleSpecs } from './flags.js';
import { control, target } from './client.js';

export async function scaleCommand([file, ...args]: string[], flags: Flags): Promise<number> {
  const specs = scaleSpecs(args);
  const t = await target(file!, flags);
  for (const { group, count } of specs) {
    const r = (await control(t, flags, { op: 'scale', group, count })) as { added: string[]; removed: string[] };
    process.stdout.write(
      `${group}: ${count} replica(s)${r.added.length ? `, started ${r.added.join(', ')}` : ''}${r.removed.length ? `, stopped ${r.removed.join(', ')}` : ''}${!r.added.length && !r.removed.length ? ' (unchanged)' : ''}\n`,
    );
  }
  return 0;
}
