import { describe, expect, it } from 'vitest';
import { ConfigError, loadCluster } from '../../src/config/load.js';
import { controlPlaneNodes, controlPlanePorts, place, portClashes, type PlacementGroup, type PlacementNode } from '../../src/config/placement.js';
import type { ReplicaPlan } from '../../src/config/types.js';

const nodes = (...spec: [string, number][]): PlacementNode[] => spec.map(([name, gpus]) => ({ name, gpus }));
const g = (name: string, replicas: number, gpus: number, opts: { nodes?: string[]; port?: number } = {}): PlacementGroup => ({
  name,
  replicas,
  gpus,
  nodes: opts.nodes ?? [],
  port: opts.port,
});
const ok = (r: ReturnType<typeof place>) => {
  if (!r.ok) throw new Error(`placement failed: ${JSON.stringify(r.errors)}`);
  return r.replicas;
};
const brief = (r: ReturnType<typeof place>) => ok(r).map((x) => `${x.name}@${x.node}[${x.gpuIds.join(',')}]${x.port === undefined ? '' : `:${x.port}`}`);

describe('place', () => {
  it('packs replicas onto the first node with room, in node order', () => {
    expect(brief(place(nodes(['n1', 4], ['n2', 4]), [g('w', 6, 1)]))).toEqual(['w-0@n1[0]', 'w-1@n1[1]', 'w-2@n1[2]', 'w-3@n1[3]', 'w-4@n2[0]', 'w-5@n2[1]']);
  });

  it('gives distinct GPU indices on a node across groups, in the order the groups are given', () => {
    expect(brief(place(nodes(['n1', 8]), [g('prefill', 2, 2), g('decode', 1, 3), g('tiny', 1, 1)]))).toEqual([
      'prefill-0@n1[0,1]',
      'prefill-1@n1[2,3]',
      'decode-0@n1[4,5,6]',
      'tiny-0@n1[7]',
    ]);
  });

  it('never splits a multi-GPU replica across nodes; a later smaller group fills the gap', () => {
    expect(brief(place(nodes(['n1', 3], ['n2', 4]), [g('big', 2, 2), g('small', 1, 1)]))).toEqual(['big-0@n1[0,1]', 'big-1@n2[0,1]', 'small-0@n1[2]']);
  });

  it('follows a group node preference list, in its order', () => {
    expect(brief(place(nodes(['n1', 2], ['n2', 2], ['n3', 2]), [g('w', 3, 1, { nodes: ['n3', 'n1'] })]))).toEqual(['w-0@n3[0]', 'w-1@n3[1]', 'w-2@n1[0]']);
  });

  it('puts every GPU-less replica on the first candidate, with CUDA_VISIBLE_DEVICES-style empty ids', () => {
    const r = ok(place(nodes(['n1', 0], ['n2', 8]), [g('cpu', 3, 0), g('pinned', 1, 0, { nodes: ['n2'] })]));
    expect(r.map((x) => [x.name, x.node, x.gpuIds])).toEqual([
      ['cpu-0', 'n1', []],
      ['cpu-1', 'n1', []],
      ['cpu-2', 'n1', []],
      ['pinned-0', 'n2', []],
    ]);
  });

  it('gives replica i the port base + i, and no port without a base', () => {
    const r = ok(place(nodes(['n1', 0], ['n2', 0]), [g('api', 3, 0, { port: 8000 }), g('bg', 2, 0)]));
    expect(r.map((x) => [x.name, x.index, x.port])).toEqual([
      ['api-0', 0, 8000],
      ['api-1', 1, 8001],
      ['api-2', 2, 8002],
      ['bg-0', 0, undefined],
      ['bg-1', 1, undefined],
    ]);
    expect(r.every((x) => x.group === x.name.replace(/-\d+$/, ''))).toBe(true);
  });

  it('reports overcommit per group, naming it, the replica that does not fit and what was free', () => {
    const r = place(nodes(['n1', 4], ['n2', 2]), [g('prefill', 2, 2), g('decode', 3, 2), g('other', 1, 0)]);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors).toEqual([
      {
        group: 'decode',
        message: 'not enough GPUs: 3 replicas × 2 GPUs, replica 1 does not fit (n1: 0 free, n2: 0 free, all nodes; earlier groups take theirs first)',
      },
    ]);
  });

  it('reports every group that does not fit, with its own candidate list', () => {
    const r = place(nodes(['n1', 1], ['n2', 1]), [g('a', 1, 2, { nodes: ['n2'] }), g('b', 3, 1)]);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors.map((e) => e.group)).toEqual(['a', 'b']);
    expect(r.errors[0]!.message).toBe('not enough GPUs: 1 replicas × 2 GPUs, replica 0 does not fit (n2: 1 free; earlier groups take theirs first)');
    expect(r.errors[1]!.message).toContain('replica 2 does not fit (n1: 0 free, n2: 0 free, all nodes;');
  });

  it('treats a node it does not know as having no GPUs and places elsewhere', () => {
    expect(brief(place(nodes(['n1', 1]), [g('w', 1, 0, { nodes: ['ghost', 'n1'] })]))).toEqual(['w-0@n1[]']);
    expect(place(nodes(['n1', 1]), [g('w', 1, 1, { nodes: ['ghost'] })]).ok).toBe(false);
  });

  it('does not depend on or change its inputs', () => {
    const ns = nodes(['n1', 2]);
    const gs = [g('w', 2, 1)];
    const snapshot = JSON.stringify([ns, gs]);
    const a = place(ns, gs);
    const b = place(ns, gs);
    expect(a).toEqual(b);
    expect(JSON.stringify([ns, gs])).toBe(snapshot);
  });
});

describe('place next to running replicas (scale)', () => {
  const running = (name: string, node: string, gpuIds: number[], port?: number): ReplicaPlan => ({
    name,
    group: name.replace(/-\d+$/, ''),
    index: Number(name.replace(/^.*-/, '')),
    node,
    gpuIds,
    port,
  });

  it('takes the free GPUs only, numbering from firstIndex, ports base + index', () => {
    const existing = [running('w-0', 'n1', [0]), running('x-0', 'n1', [2]), running('w-1', 'n2', [1])];
    const r = place(nodes(['n1', 3], ['n2', 2]), [{ ...g('w', 2, 1, { port: 8000 }), firstIndex: 2 }], { existing });
    expect(brief(r)).toEqual(['w-2@n1[1]:8002', 'w-3@n2[0]:8003']);
    expect(ok(r).map((x) => x.index)).toEqual([2, 3]);
  });

  it('says which replica has no free GPU, without the whole-file wording', () => {
    const r = place(nodes(['n1', 2]), [{ ...g('w', 1, 1), firstIndex: 2 }], { existing: [running('w-0', 'n1', [0]), running('w-1', 'n1', [1])] });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors).toEqual([{ group: 'w', message: 'not enough free GPUs for replica w-2 (1 per replica; n1: 0 free, all nodes)' }]);
  });
});

describe('portClashes', () => {
  const r = (name: string, node: string, port?: number): ReplicaPlan => ({ name, group: name.replace(/-\d+$/, ''), index: 0, node, gpuIds: [], port });
  const cp = controlPlanePorts({
    metrics: { enabled: true, port: 9464 },
    nats: { enabled: true, port: 4222, monitorPort: 8222 },
    etcd: { enabled: false, port: 2379, peerPort: 2380 },
  });
  const reserved = new Map(cp.map(([path, port]) => [port, path.join('.')]));

  it('lists the control plane ports of the enabled services by config path', () => {
    expect(cp).toEqual([
      [['metrics', 'port'], 9464],
      [['controlPlane', 'nats', 'port'], 4222],
      [['controlPlane', 'nats', 'monitorPort'], 8222],
    ]);
  });

  it('finds a port used twice on a node and a control plane port on the head, reporting the later replica', () => {
    const head = controlPlaneNodes(
      [
        { name: 'head', transport: 'local' },
        { name: 'n2', transport: 'ssh' },
      ],
      false,
    );
    expect([...head]).toEqual(['head']);
    const clashes = portClashes(
      [r('a-0', 'n2', 9000), r('b-0', 'n2', 9000), r('c-0', 'head', 9000), r('d-0', 'head', 8222), r('e-0', 'n2', 8222), r('f-0', 'n2')],
      head,
      reserved,
    );
    expect(clashes.map((c) => c.message)).toEqual([
      'replica b-0 would use port 9000 on node n2, already used by replica a-0',
      'replica d-0 would use port 8222 on node head, already used by controlPlane.nats.monitorPort',
    ]);
  });

  it('refuses a port above 65535; in Slurm mode the first node is the head', () => {
    expect(portClashes([r('a-0', 'x', 65536)], new Set(), reserved).map((c) => c.message)).toEqual(['replica a-0 would get port 65536, above 65535']);
    expect([
      ...controlPlaneNodes(
        [
          { name: 'c1', transport: 'srun' },
          { name: 'c2', transport: 'srun' },
        ],
        true,
      ),
    ]).toEqual(['c1']);
  });
});

describe('placement through loadCluster', () => {
  const file = (workers: string) =>
    Buffer.from(`name: p\nhead: { address: 127.0.0.1 }\nnodes:\n  n1: { gpus: 4 }\n  n2: { gpus: 4, transport: ssh, host: n2 }\nworkers:\n${workers}`);

  it('places groups in dependency order, so a dependency gets its GPUs first', () => {
    const c = loadCluster('/tmp/p.yaml', {
      env: {},
      content: file('  decode:\n    command: [d]\n    gpus: 4\n    dependsOn: [prefill]\n  prefill:\n    command: [p]\n    gpus: 4\n'),
    });
    expect(c.groups.map((x) => x.name)).toEqual(['prefill', 'decode']);
    expect(c.replicas.map((r) => `${r.name}@${r.node}[${r.gpuIds.join(',')}]`)).toEqual(['prefill-0@n1[0,1,2,3]', 'decode-0@n2[0,1,2,3]']);
  });

  it('reports overcommit at the group that does not fit, naming it in the path', () => {
    let err: unknown;
    try {
      loadCluster('/tmp/p.yaml', { env: {}, content: file('  a:\n    command: [a]\n    gpus: 4\n  b:\n    command: [b]\n    replicas: 2\n    gpus: 3\n') });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues).toEqual([
      {
        file: '/tmp/p.yaml',
        line: 13,
        column: 11,
        path: 'workers.b.gpus',
        message: 'not enough GPUs: 2 replicas × 3 GPUs, replica 1 does not fit (n1: 0 free, n2: 1 free, all nodes; earlier groups take theirs first)',
      },
    ]);
    expect((err as ConfigError).message).toContain('/tmp/p.yaml:13:11: workers.b.gpus: not enough GPUs');
  });
});

describe('named ports', () => {
  it('replica i gets base + i of every named port', () => {
    const rs = ok(place(nodes(['n1', 0]), [{ ...g('w', 2, 0, { port: 9000 }), ports: { system: 9090, kv: 20080 } }]));
    expect(rs.map((r) => [r.name, r.port, r.ports])).toEqual([
      ['w-0', 9000, { system: 9090, kv: 20080 }],
      ['w-1', 9001, { system: 9091, kv: 20081 }],
    ]);
  });

  it('clash across groups and with the one port, naming the field', () => {
    const r = (name: string, node: string, port: number | undefined, ports: Record<string, number>): ReplicaPlan => ({
      name,
      group: name.split('-')[0]!,
      index: 0,
      node,
      gpuIds: [],
      port,
      ports,
    });
    const clashes = portClashes(
      [r('a-0', 'n1', 9000, { kv: 9100 }), r('b-0', 'n1', undefined, { system: 9100 }), r('c-0', 'n2', 9100, { kv: 9100 }), r('d-0', 'n1', 9090, { x: 70000 })],
      new Set(),
      new Map(),
    );
    expect(clashes.map((c) => [c.field, c.message])).toEqual([
      [['ports', 'system'], 'replica b-0 would use port 9100 (ports.system) on node n1, already used by replica a-0 (ports.kv)'],
      [['ports', 'kv'], 'replica c-0 would use port 9100 (ports.kv) on node n2, already used by replica c-0'],
      [['ports', 'x'], 'replica d-0 would get port 70000 (ports.x), above 65535'],
    ]);
  });
});

describe('place: gangs take whole nodes', () => {
  const gang = (name: string, replicas: number, gpus: number, span: number, nodesList: string[] = []): PlacementGroup => ({
    name,
    replicas,
    gpus,
    nodes: nodesList,
    nodesPerReplica: span,
  });
  const gangs = (r: ReturnType<typeof place>) => ok(r).map((x) => `${x.name}@${(x.gangNodes ?? [x.node]).join('+')}[${x.gpuIds.join(',')}]`);
  const cases: { what: string; nodes: PlacementNode[]; groups: PlacementGroup[]; want: string[] | RegExp }[] = [
    {
      what: 'two 2-node decode gangs on four 8-GPU nodes, every GPU of each',
      nodes: nodes(['n1', 8], ['n2', 8], ['n3', 8], ['n4', 8]),
      groups: [gang('decode', 2, 8, 2)],
      want: ['decode-0@n1+n2[0,1,2,3,4,5,6,7]', 'decode-1@n3+n4[0,1,2,3,4,5,6,7]'],
    },
    {
      what: 'a node with a single-node replica on it is not whole any more',
      nodes: nodes(['n1', 8], ['n2', 8], ['n3', 8]),
      groups: [g('frontend', 1, 0), gang('decode', 1, 8, 2)],
      want: ['frontend-0@n1[]', 'decode-0@n2+n3[0,1,2,3,4,5,6,7]'],
    },
    {
      what: 'nothing else lands on a gang node afterwards, not even a replica without GPUs',
      nodes: nodes(['n1', 8], ['n2', 8], ['n3', 0]),
      groups: [gang('decode', 1, 8, 2), g('frontend', 1, 0)],
      want: ['decode-0@n1+n2[0,1,2,3,4,5,6,7]', 'frontend-0@n3[]'],
    },
    {
      what: 'only candidate nodes, in their order',
      nodes: nodes(['n1', 8], ['n2', 8], ['n3', 8]),
      groups: [gang('prefill', 1, 4, 2, ['n3', 'n1'])],
      want: ['prefill-0@n3+n1[0,1,2,3]'],
    },
    {
      what: 'too few whole nodes: the error names each node and why',
      nodes: nodes(['n1', 8], ['n2', 8], ['n3', 8]),
      groups: [gang('decode', 2, 8, 2)],
      want: /not enough whole nodes: replica decode-1 spans 2 nodes with 8 GPUs each and nothing else on them, 1 left \(n1: used by decode-0, n2: used by decode-0, n3: 8 GPUs, all nodes\)/,
    },
    {
      what: 'nodes with fewer GPUs than the gang wants per node do not count',
      nodes: nodes(['n1', 8], ['n2', 4]),
      groups: [gang('decode', 1, 8, 2)],
      want: /1 left \(n1: 8 GPUs, n2: 4 GPUs/,
    },
  ];
  for (const c of cases) {
    it(c.what, () => {
      const r = place(c.nodes, c.groups);
      if (c.want instanceof RegExp) {
        expect(r.ok).toBe(false);
        expect(r.ok ? '' : r.errors.map((e) => e.message).join('\n')).toMatch(c.want);
      } else expect(gangs(r)).toEqual(c.want);
    });
  }

  it('a gang port is taken on each of its nodes', () => {
    const plans: ReplicaPlan[] = [
      { name: 'decode-0', group: 'decode', index: 0, node: 'n1', gpuIds: [], port: 9000, gangNodes: ['n1', 'n2'] },
      { name: 'other-0', group: 'other', index: 0, node: 'n2', gpuIds: [], port: 9000 },
    ];
    expect(portClashes(plans, new Set(), new Map()).map((c) => c.message)).toEqual([
      'replica other-0 would use port 9000 on node n2, already used by replica decode-0',
    ]);
  });

  it('scale places new gangs next to running ones (existing gang nodes are taken)', () => {
    const existing: ReplicaPlan[] = [{ name: 'decode-0', group: 'decode', index: 0, node: 'n1', gpuIds: [0, 1], gangNodes: ['n1', 'n2'] }];
    expect(gangs(place(nodes(['n1', 2], ['n2', 2], ['n3', 2], ['n4', 2]), [{ ...gang('decode', 1, 2, 2), firstIndex: 1 }], { existing }))).toEqual([
      'decode-1@n3+n4[0,1]',
    ]);
  });
});
