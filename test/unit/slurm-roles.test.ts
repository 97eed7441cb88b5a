import { describe, expect, it } from 'vitest';
import { minimumNodes, resolveRoles, type RoleSpec } from '../../src/slurm/roles.js';

const alloc = (n: number) => Array.from({ length: n }, (_, i) => `n${i + 1}`);
const ok = (nodes: string[], roles: Record<string, RoleSpec>) => {
  const r = resolveRoles(nodes, roles);
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return Object.fromEntries(r.nodes);
};
const errors = (nodes: string[], roles: Record<string, RoleSpec>) => {
  const r = resolveRoles(nodes, roles);
  if (r.ok) throw new Error(`accepted: ${JSON.stringify(Object.fromEntries(r.nodes))}`);
  return r.errors;
};

describe('resolveRoles', () => {
  it('puts the frontend on the head, decode on the first node after it, prefill on the rest', () => {
    expect(ok(alloc(4), { frontend: 'head', decode: { first: 1 }, prefill: 'rest' })).toEqual({
      frontend: ['n1'],
      decode: ['n2'],
      prefill: ['n3', 'n4'],
    });
  });

  it('all includes the head; first/last never do', () => {
    expect(ok(alloc(3), { a: 'all', b: { first: 2 }, c: { last: 1 } })).toEqual({ a: ['n1', 'n2', 'n3'], b: ['n2', 'n3'], c: ['n3'] });
  });

  it('rest leaves out what first, last and indices claim, whichever group claims it', () => {
    expect(ok(alloc(6), { d: { first: 1 }, e: { last: 1 }, f: { indices: [3] }, p: 'rest' })).toEqual({
      d: ['n2'],
      e: ['n6'],
      f: ['n4'],
      p: ['n3', 'n5'],
    });
  });

  it('indices are allocation indices, 0 the head, listed in allocation order', () => {
    expect(ok(alloc(4), { x: { indices: [3, 0] } })).toEqual({ x: ['n1', 'n4'] });
  });

  it('a list is the union of its selectors, without duplicates', () => {
    expect(ok(alloc(4), { fe: ['head', { first: 1 }], all2: ['all', 'head'] })).toEqual({ fe: ['n1', 'n2'], all2: ['n1', 'n2', 'n3', 'n4'] });
  });

  it('a single-node allocation has only the head: rest is empty', () => {
    const e = errors(alloc(1), { w: 'rest' });
    expect(e).toEqual([
      { group: 'w', message: expect.stringMatching(/'rest' is empty: there is no node besides the head \(the allocation has 1 node \(n1\)\)/) },
    ]);
  });

  it('reports every selector asking for more nodes than there are, naming the allocation', () => {
    const e = errors(alloc(2), { d: { first: 2 }, e: { last: 3 }, f: { indices: [1, 5, 7] }, p: 'rest', ok: 'head' });
    expect(e.map((x) => x.group)).toEqual(['d', 'e', 'f', 'p']);
    expect(e[0]!.message).toBe('{first: 2} needs 3 nodes (the head + 2), but the allocation has 2 nodes (n1, n2)');
    expect(e[1]!.message).toMatch(/^\{last: 3\} needs 4 nodes/);
    expect(e[2]!.message).toMatch(/^\{indices: \[1, 5, 7\]\}: no node 5, 7: the allocation has 2 nodes .* \(indices 0\.\.1, 0 is the head\)$/);
    expect(e[3]!.message).toMatch(/^'rest' is empty: the other roles claim every non-head node/);
  });

  it('says which entry of a list role is wrong', () => {
    expect(errors(alloc(2), { w: ['head', { first: 3 }] })).toEqual([{ group: 'w', index: 1, message: expect.stringMatching(/first: 3/) }]);
  });
});

describe('minimumNodes', () => {
  it('is 1 without roles, or with only head/all', () => {
    expect(minimumNodes({})).toBe(1);
    expect(minimumNodes({ a: 'head', b: 'all' })).toBe(1);
  });
  it('fits first/last/indices, and leaves one node for rest', () => {
    expect(minimumNodes({ d: { first: 2 } })).toBe(3);
    expect(minimumNodes({ d: { indices: [4] } })).toBe(5);
    expect(minimumNodes({ f: 'head', d: { first: 1 }, p: 'rest' })).toBe(3);
    expect(minimumNodes({ d: { first: 1 }, e: { last: 1 }, p: 'rest' })).toBe(4);
    expect(minimumNodes({ p: 'rest' })).toBe(2);
  });
  it('is always enough for resolveRoles to succeed', () => {
    const cases: Record<string, RoleSpec>[] = [
      { f: 'head', d: { first: 2 }, p: 'rest' },
      { d: { first: 1 }, e: { last: 2 }, p: 'rest', x: { indices: [2] } },
      { a: ['head', { last: 1 }], p: 'rest' },
    ];
    for (const roles of cases) {
      const n = minimumNodes(roles);
      expect(resolveRoles(alloc(n), roles).ok, JSON.stringify(roles)).toBe(true);
      expect(resolveRoles(alloc(n - 1), roles).ok, JSON.stringify(roles)).toBe(false);
    }
  });
});
