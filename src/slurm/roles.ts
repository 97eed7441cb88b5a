/**
 * Roles: which nodes of a Slurm allocation each worker group may use (`slurm.roles` in the cluster file).
 * Pure: the allocation is a list of node names, the head (the batch host, where dynsup, NATS and etcd
 * run) first.
 *
 *   head            the head node (allocation node 0)
 *   all             every node, the head included
 *   rest            every non-head node that no `first`, `last` or `indices` selector of the file claims
 *   {first: K}      the K nodes after the head (nodes 1..K)
 *   {last: K}       the last K nodes (never the head)
 *   {indices: [..]} explicit allocation indices (0 = the head)
 *   [a, b, ...]     the union of several selectors
 *
 * A group without a role may use every node. Node lists come out in allocation order, which is the order
 * `place()` packs replicas in.
 */

export type RoleKeyword = 'head' | 'all' | 'rest';
export type RoleSelector = RoleKeyword | { readonly first: number } | { readonly last: number } | { readonly indices: readonly number[] };
export type RoleSpec = RoleSelector | readonly RoleSelector[];

export interface RoleError {
  readonly group: string;
  /** Position of the selector in a list role (undefined for a single selector). */
  readonly index?: number | undefined;
  readonly message: string;
}

export type RolesResult =
  { readonly ok: true; readonly nodes: ReadonlyMap<string, readonly string[]> } | { readonly ok: false; readonly errors: readonly RoleError[] };

const list = (spec: RoleSpec): readonly RoleSelector[] => (Array.isArray(spec) ? spec : [spec as RoleSelector]);

/** Indices a selector claims outright (those `rest` leaves out). */
function claimed(sel: RoleSelector, n: number): number[] {
  if (typeof sel === 'string') return [];
  if ('first' in sel) return range(1, Math.min(n - 1, sel.first));
  if ('last' in sel) return range(Math.max(1, n - sel.last), n - 1);
  return sel.indices.filter((i) => i >= 0 && i < n);
}

function range(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let i = lo; i <= hi; i++) out.push(i);
  return out;
}

export function describeSelector(sel: RoleSelector): string {
  if (typeof sel === 'string') return sel;
  if ('first' in sel) return `{first: ${sel.first}}`;
  if ('last' in sel) return `{last: ${sel.last}}`;
  return `{indices: [${sel.indices.join(', ')}]}`;
}

/**
 * Nodes of each group that has a role. `nodes` is the allocation, head first. Every problem is reported
 * (a selector asking for more nodes than there are, an empty `rest`), naming the allocation's size.
 */
export function resolveRoles(nodes: readonly string[], roles: Readonly<Record<string, RoleSpec>>): RolesResult {
  const n = nodes.length;
  const errors: RoleError[] = [];
  const size = `the allocation has ${n} node${n === 1 ? '' : 's'}${n ? ` (${nodes.join(', ')})` : ''}`;
  const taken = new Set<number>();
  for (const spec of Object.values(roles)) for (const sel of list(spec)) for (const i of claimed(sel, n)) taken.add(i);

  const out = new Map<string, readonly string[]>();
  for (const [group, spec] of Object.entries(roles)) {
    const sels = list(spec);
    const at = (k: number) => (Array.isArray(spec) ? k : undefined);
    const picked = new Set<number>();
    sels.forEach((sel, k) => {
      const fail = (message: string) => errors.push({ group, index: at(k), message });
      if (sel === 'head') picked.add(0);
      else if (sel === 'all') range(0, n - 1).forEach((i) => picked.add(i));
      else if (sel === 'rest') {
        const rest = range(1, n - 1).filter((i) => !taken.has(i));
        if (!rest.length) {
          const others = [...taken].length ? `the other roles claim every non-head node` : 'there is no node besides the head';
          fail(`'rest' is empty: ${others} (${size}); ask for more nodes (slurm.nodes / --nodes)`);
        }
        rest.forEach((i) => picked.add(i));
      } else if ('first' in sel || 'last' in sel) {
        const k2 = 'first' in sel ? sel.first : sel.last;
        if (k2 > n - 1) fail(`${describeSelector(sel)} needs ${k2 + 1} nodes (the head + ${k2}), but ${size}`);
        claimed(sel, n).forEach((i) => picked.add(i));
      } else {
        const bad = sel.indices.filter((i) => i >= n);
        if (bad.length) fail(`${describeSelector(sel)}: no node ${bad.join(', ')}: ${size} (indices 0..${n - 1}, 0 is the head)`);
        claimed(sel, n).forEach((i) => picked.add(i));
      }
    });
    out.set(
      group,
      [...picked].sort((a, b) => a - b).map((i) => nodes[i]!),
    );
  }
  return errors.length ? { ok: false, errors } : { ok: true, nodes: out };
}

/** The fewest nodes an allocation needs for every selector to be satisfiable (at least 1). */
export function minimumNodes(roles: Readonly<Record<string, RoleSpec>>): number {
  let need = 1;
  let hasRest = false;
  for (const spec of Object.values(roles)) {
    for (const sel of list(spec)) {
      if (sel === 'rest') hasRest = true;
      else if (typeof sel !== 'string') {
        if ('first' in sel) need = Math.max(need, sel.first + 1);
        else if ('last' in sel) need = Math.max(need, sel.last + 1);
        else need = Math.max(need, ...sel.indices.map((i) => i + 1));
      }
    }
  }
  if (!hasRest) return need;
  // `rest` needs one node that nothing claims; grow until there is one (claims are bounded, so this ends).
  for (let n = need; ; n++) {
    const taken = new Set<number>();
    for (const spec of Object.values(roles)) for (const sel of list(spec)) for (const i of claimed(sel, n)) taken.add(i);
    if (n - 1 - taken.size >= 1) return n;
  }
}
