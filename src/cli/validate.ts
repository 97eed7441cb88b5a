import { ConfigError, loadCluster } from '../config/load.js';
import type { ClusterConfig } from '../config/types.js';
import { DynsupError } from '../util/errors.js';
import type { Flags } from './flags.js';
import { table } from './table.js';

export async function validateCommand([file]: string[], flags: Flags): Promise<number> {
  let cluster: ClusterConfig;
  try {
    cluster = loadCluster(file!, { stateDir: flags['state-dir'] as string | undefined });
  } catch (err) {
    // With --json, a bad file is answered in JSON too (on stdout, exit code as without --json): one entry
    // per problem, where it is and what is wrong.
    if (!flags.json || !(err instanceof DynsupError)) throw err;
    const errors =
      err instanceof ConfigError
        ? err.issues.map((i) => ({ file: i.file, line: i.line, column: i.column, path: i.path, message: i.message }))
        : [{ file: file!, line: 0, column: 0, path: '', message: err.message }];
    process.stdout.write(`${JSON.stringify({ ok: false, file: file!, code: err.code, errors }, null, 2)}\n`);
    return err.exitCode;
  }
  if (flags.json) {
    process.stdout.write(
      `${JSON.stringify({ ok: true, name: cluster.name, replicas: cluster.replicas, ...(cluster.allocation ? { slurmAllocation: cluster.allocation } : {}) }, null, 2)}\n`,
    );
    return 0;
  }
  const nodesOf = (r: (typeof cluster.replicas)[number]) => r.gangNodes ?? [r.node];
  const gpus = cluster.replicas.reduce((n, r) => n + r.gpuIds.length * nodesOf(r).length, 0);
  process.stdout.write(
    `${file}: ok — cluster ${cluster.name}: ${cluster.groups.length} groups, ${cluster.replicas.length} replicas on ` +
      `${new Set(cluster.replicas.flatMap(nodesOf)).size} node(s), ${gpus} GPUs\n\n`,
  );
  const a = cluster.allocation;
  if (a?.preview) {
    process.stdout.write(
      `Slurm: laid out on a placeholder allocation of ${a.nodes.length} node(s) (${a.nodes.join(', ')}; ${a.nodes[0]} is the head, ` +
        `${cluster.nodes[0]?.gpus ?? 0} GPUs each); the real names come from the allocation\n\n`,
    );
  }
  process.stdout.write(
    table(
      ['REPLICA', 'NODE', 'GPUS', 'PORT'],
      // A gang lists its nodes in rank order (the first is the leader), each with the same GPUs.
      cluster.replicas.map((r) => [r.name, nodesOf(r).join(','), r.gpuIds.join(',') || '-', r.port === undefined ? '-' : String(r.port)]),
    ),
  );
  return 0;
}
