/** The worker groups as the overview draws them: columns by dependency depth, dependents first. */

export interface GroupNode {
  readonly name: string;
  readonly dependsOn: readonly string[];
}

/**
 * Columns of group names, left to right: a group is one column left of the deepest group it depends on,
 * so `frontend → decode → prefill` reads as the request path. Groups in one column keep the file's order.
 * Unknown dependencies are ignored; a cycle (refused by validation) cannot loop here.
 */
export function dependencyColumns(groups: readonly GroupNode[]): string[][] {
  const byName = new Map(groups.map((g) => [g.name, g]));
  const depth = new Map<string, number>();
  const visiting = new Set<string>();
  const depthOf = (name: string): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (visiting.has(name)) return 0;
    visiting.add(name);
    const deps = (byName.get(name)?.dependsOn ?? []).filter((d) => byName.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map(depthOf)) : 0;
    visiting.delete(name);
    depth.set(name, d);
    return d;
  };
  const max = Math.max(-1, ...groups.map((g) => depthOf(g.name)));
  const columns: string[][] = Array.from({ length: max + 1 }, () => []);
  for (const g of groups) columns[max - depthOf(g.name)]!.push(g.name);
  return columns.filter((c) => c.length > 0);
}
