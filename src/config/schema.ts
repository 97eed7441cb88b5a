/**
 * The cluster file's schema: the single source of truth for the validator and the published JSON Schema.
 * It only checks shapes; cross-field rules (references, cycles, GPU capacity) live in validate.ts.
 */
import { z } from 'zod';
import { DEFAULTS } from './defaults.js';
import { DURATION_PATTERN } from './duration.js';
import { SLURM_TIME_ERROR, slurmTime } from '../slurm/sbatch.js';

// A cluster file is parsed once per command: zod's JIT (it builds each object schema's parser with
// new Function) costs more to generate than it saves on one small document, and commands start faster
// without it (scripts/bench/cli.mjs).
z.config({ jitless: true });

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
/** No '.': the cluster name is one token of NATS subjects (dynsup.<cluster>.control); `a.log`'s would fall under cluster `a`. */
const CLUSTER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PORT_NAME_RE = /^[A-Za-z][A-Za-z0-9_]{0,31}$/;
const SIGNAL_NAMES = ['SIGTERM', 'SIGINT', 'SIGQUIT', 'SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGKILL'] as const;
// Accept both spellings (`TERM`, `SIGTERM`); resolution normalises to the SIG form.
const SIGNALS = [...SIGNAL_NAMES, ...SIGNAL_NAMES.map((s) => s.slice(3))] as const;

const name = (what: string) =>
  z.string().regex(NAME_RE, {
    error: `expected a ${what} name: letters, digits, '.', '_' or '-', starting with a letter or digit, at most 63 characters`,
  });
const posInt = (max: number) =>
  z
    .int({ error: 'expected a positive integer' })
    .min(1, { error: 'expected a positive integer' })
    .max(max, {
      error: `expected a positive integer of at most ${max}`,
    });
const count = (max: number) =>
  z
    .int({ error: 'expected a whole number ≥ 0' })
    .min(0, { error: 'expected a whole number ≥ 0' })
    .max(max, {
      error: `expected a whole number of at most ${max}`,
    });
const port = z.int({ error: 'expected a port number' }).min(1, { error: 'expected a port number (1-65535)' }).max(65535, {
  error: 'expected a port number (1-65535)',
});
const DURATION_ERROR = "expected a duration: seconds as a number, or a string like '500ms', '10s', '5m'";
const duration = z
  .union([z.number().min(0, { error: DURATION_ERROR }), z.string().regex(new RegExp(DURATION_PATTERN), { error: DURATION_ERROR })], {
    error: DURATION_ERROR,
  })
  .meta({ description: "Seconds as a number, or a string like '500ms', '10s', '5m', '1h'." });
const nonEmpty = z.string().min(1, { error: 'expected a non-empty string' });
const noNul = (s: z.ZodString) => s.refine((v) => !v.includes('\0'), { error: 'must not contain NUL bytes' });

const restartSchema = z
  .strictObject({
    policy: z.enum(['always', 'on-failure', 'never'], { error: "expected one of 'always', 'on-failure', 'never'" }).optional(),
    initialDelay: duration.optional().meta({ description: `First backoff delay (default ${DEFAULTS.worker.restart.initialDelay}).` }),
    factor: z.number({ error: 'expected a number ≥ 1' }).min(1, { error: 'expected a number ≥ 1' }).max(100).optional(),
    maxDelay: duration.optional().meta({ description: `Backoff cap (default ${DEFAULTS.worker.restart.maxDelay}).` }),
    jitter: z
      .number({ error: 'expected a fraction between 0 and 1' })
      .min(0, { error: 'expected a fraction between 0 and 1' })
      .max(1, { error: 'expected a fraction between 0 and 1' })
      .optional(),
    maxRestarts: count(1_000_000)
      .optional()
      .meta({ description: `Crash-loop limit: restarts allowed within \`window\` (default ${DEFAULTS.worker.restart.maxRestarts}; 0 = unlimited).` }),
    window: duration.optional().meta({ description: `Crash-loop window (default ${DEFAULTS.worker.restart.window}).` }),
    resetAfter: duration
      .optional()
      .meta({ description: `Uptime after which the backoff starts again from initialDelay (default ${DEFAULTS.worker.restart.resetAfter}).` }),
    gpuReleaseTimeout: duration.optional().meta({
      description: `Before a GPU replica starts again, wait until nvidia-smi shows none of its last run's processes on its GPUs, this long at most (default ${DEFAULTS.worker.restart.gpuReleaseTimeout}); past it the replica is \`blocked\` (GPU and pid named) until they are gone. Skipped where there is no nvidia-smi.`,
    }),
    onLog: z.array(nonEmpty, { error: 'expected a list of regular expressions' }).optional().meta({
      description:
        'Fatal log patterns: a line of the worker matching one of these regular expressions restarts it (counted as a crash), for workers that hang after printing a fatal error (e.g. ["CUDA error", "NCCL .*timeout"]).',
    }),
  })
  .meta({ description: 'Restart policy with exponential backoff and a crash-loop limit.' });

const stopSchema = z.strictObject({
  signal: z.enum(SIGNALS, { error: `expected a signal name: ${SIGNAL_NAMES.join(', ')}` }).optional(),
  grace: duration
    .optional()
    .meta({ description: `Wait this long after the signal before SIGKILL of the process group (default ${DEFAULTS.worker.stop.grace}).` }),
});

const healthSchema = z.strictObject({
  url: nonEmpty.meta({ description: 'HTTP URL polled until it answers 2xx. Placeholders {port}, {index}, {replica}, {node}.' }),
  interval: duration.optional(),
  timeout: duration.optional(),
  startPeriod: duration
    .optional()
    .meta({ description: `Failures during this time after start are not counted against a ready worker (default ${DEFAULTS.worker.health.startPeriod}).` }),
  failureThreshold: posInt(1000)
    .optional()
    .meta({ description: `Consecutive failed probes after which a ready worker is restarted (default ${DEFAULTS.worker.health.failureThreshold}).` }),
});

const envValue = z.union([noNul(z.string()), z.number(), z.boolean()], { error: 'expected a string, number or boolean' });

/** Fields a worker group may set; `defaults` takes the same fields. */
const workerFields = {
  command: z
    .union([noNul(nonEmpty), z.array(noNul(z.string()), { error: 'expected a list of strings' }).min(1, { error: 'expected at least one argument' })], {
      error: 'expected a command: a string (run by sh -c) or a list of arguments',
    })
    .meta({ description: 'A string run by `sh -c`, or an argv list. Placeholders {port}, {index}, {replica}, {node}, {group}.' }),
  replicas: posInt(1024).meta({ description: `Number of replicas, named <group>-<index> (default ${DEFAULTS.worker.replicas}).` }),
  gpus: count(64).meta({ description: `GPUs per replica (default ${DEFAULTS.worker.gpus}).` }),
  nodes: z.array(name('node'), { error: 'expected a list of node names' }).min(1, { error: 'expected at least one node' }).meta({
    description: 'Nodes replicas may be placed on, in order of preference (default: all nodes).',
  }),
  env: z.record(z.string().regex(ENV_NAME_RE, { error: 'expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*)' }), envValue, {
    error: 'expected a map of environment variables',
  }),
  cwd: noNul(nonEmpty).meta({ description: "Working directory (relative to the cluster file's directory)." }),
  port: port.meta({ description: 'Base port: replica i gets DYNSUP_PORT = port + i and the {port} placeholder.' }),
  ports: z
    .record(z.string().regex(PORT_NAME_RE, { error: "expected a port name: a letter, then letters, digits or '_' (at most 32)" }), port, {
      error: 'expected a map of port names to base ports',
    })
    .meta({
      description:
        'Named ports: replica i gets base + i for each, as DYNSUP_PORT_<NAME> (upper case) and the {ports.<name>} placeholder. E.g. { system: 9090, kv: 20080 }.',
    }),
  preStart: noNul(nonEmpty).meta({
    description:
      "Shell command run on the replica's node before each start (sh -c, same environment and cwd as the worker); its output goes to the replica's log; failing counts as a failed start.",
  }),
  postStop: noNul(nonEmpty).meta({ description: "Shell command run on the replica's node after each exit of the worker (output in the replica's log)." }),
  rollout: z
    .strictObject({
      maxUnavailable: posInt(1024)
        .optional()
        .meta({
          description: `Replicas replaced at a time by \`dynsup apply\` and \`restart --rolling\` (default ${DEFAULTS.worker.rollout.maxUnavailable}).`,
        }),
    })
    .meta({ description: 'How `dynsup apply` and `dynsup restart --rolling` replace the replicas of a group.' }),
  nodesPerReplica: posInt(1024).meta({
    description: `Nodes each replica spans (default ${DEFAULTS.worker.nodesPerReplica}). Above 1 the replica is a gang: it takes that many whole nodes, runs one process per node (launch: ranks) or one MPI job over them (launch: mpi), and is started, stopped and restarted as a whole.`,
  }),
  launch: z.enum(['ranks', 'mpi'], { error: "expected one of 'ranks', 'mpi'" }).meta({
    description:
      "How a gang's processes start: 'ranks' (default): dynsup starts the command once per node, with DYNSUP_NODE_RANK, DYNSUP_NNODES, DYNSUP_LEADER_HOST and {rank}, {nnodes}, {leader}; 'mpi': one MPI job per replica over its nodes (srun --mpi=pmix in Slurm, mpirun elsewhere, its remote daemons started by dynsup's agents).",
  }),
  ranksPerNode: posInt(1024).meta({ description: 'launch: mpi: MPI ranks per node (default: gpus, or 1 without GPUs).' }),
  mpiArgs: z.array(noNul(z.string()), { error: 'expected a list of strings' }).meta({
    description: 'launch: mpi: extra arguments for mpirun (ssh and local nodes) or srun (Slurm), e.g. ["--mca", "btl", "self,tcp"].',
  }),
  restart: restartSchema,
  stop: stopSchema,
  dependsOn: z.array(name('worker group'), { error: 'expected a list of worker group names' }).meta({
    description: 'Groups that must be running (ready, if they have a health check) before this one starts.',
  }),
  health: healthSchema,
  unsetEnv: z
    .array(z.string().regex(/^[A-Za-z_*?][A-Za-z0-9_*?]*$/, { error: 'expected a variable name or glob like SLURM_*' }), {
      error: 'expected a list of variable name patterns',
    })
    .meta({ description: 'Variables removed from the worker environment (default SLURM_*, PMI_*, PMIX_*).' }),
};

const optionalFields = <T extends Record<string, z.ZodType>>(fields: T) =>
  Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, v.optional()])) as { [K in keyof T]: z.ZodOptional<T[K]> };

export const workerSchema = z.strictObject(optionalFields(workerFields));
export const defaultsSchema = z.strictObject(optionalFields(workerFields));

export const nodeSchema = z.strictObject({
  transport: z.enum(['local', 'ssh', 'srun'], { error: "expected one of 'local', 'ssh', 'srun'" }).optional(),
  gpus: count(1024)
    .optional()
    .meta({ description: `GPUs available on the node (default ${DEFAULTS.node.gpus}).` }),
  host: nonEmpty.optional().meta({ description: 'ssh: host name or address.' }),
  address: nonEmpty.optional().meta({ description: 'Address workers on this node are reached at (default: host, or head.address for local).' }),
  port: port.optional().meta({ description: `ssh: port (default ${DEFAULTS.node.port}).` }),
  user: nonEmpty.optional().meta({ description: 'ssh: user (default: the current user).' }),
  identityFile: nonEmpty.optional().meta({ description: 'ssh: private key file (default: the ssh-agent at SSH_AUTH_SOCK).' }),
  knownHosts: nonEmpty.optional().meta({ description: `ssh: known_hosts file (default ${DEFAULTS.node.knownHosts}).` }),
  hostKeyCheck: z.enum(['strict', 'accept-new', 'off'], { error: "expected one of 'strict', 'accept-new', 'off'" }).optional(),
  maxSessions: z
    .int({ error: 'expected a whole number ≥ 3' })
    .min(3, { error: 'expected a whole number ≥ 3 (sshd MaxSessions)' })
    .max(1000, { error: 'expected a whole number of at most 1000' })
    .optional()
    .meta({
      description: "ssh: the node's sshd MaxSessions. Accepted for older files; dynsup now uses one channel per node whatever the number of workers.",
    }),
  setup: z
    .array(nonEmpty, { error: 'expected a list of shell commands' })
    .optional()
    .meta({ description: 'Commands run once on the node before its workers start.' }),
  runDir: nonEmpty.optional().meta({ description: 'Where dynsup keeps runtime files on the node (default /tmp/dynsup-<user>/<cluster>).' }),
  node: nonEmpty.optional().meta({
    description:
      "Node.js (>= 20) that runs dynsup's agent on the node (default: node on PATH; for ssh nodes without one, the head's own node binary is copied to ~/.cache/dynsup on the node).",
  }),
});

const serviceFields = {
  enabled: z.boolean({ error: 'expected true or false' }).optional(),
  binary: nonEmpty.optional().meta({ description: 'Path of the binary (default: found on PATH).' }),
  args: z.array(z.string(), { error: 'expected a list of strings' }).optional().meta({ description: 'Extra command-line arguments.' }),
};

const ROLE_ERROR = 'expected a node set: head, all, rest, {first: K}, {last: K}, {indices: [i, ...]}, or a list of these';
const roleSelector = z.union(
  [
    z.enum(['head', 'all', 'rest']),
    z.strictObject({ first: posInt(100_000).meta({ description: 'The K nodes after the head.' }) }),
    z.strictObject({ last: posInt(100_000).meta({ description: 'The last K nodes (never the head).' }) }),
    z.strictObject({
      indices: z.array(count(100_000)).min(1).meta({ description: 'Allocation indices; 0 is the head (the batch host).' }),
    }),
  ],
  { error: ROLE_ERROR },
);
const sbatchText = (what: string) => nonEmpty.regex(/^[^\n\r"\\]*$/, { error: `${what} must not contain line breaks, '"' or '\\'` });

export const slurmSchema = z
  .strictObject({
    nodes: posInt(100_000).optional().meta({ description: 'sbatch --nodes (default: the fewest nodes the roles need).' }),
    gpusPerNode: count(64)
      .optional()
      .meta({ description: 'GPUs per node: sbatch --gpus-per-node, and the GPUs placement hands out (default: SLURM_GPUS_ON_NODE, else 0).' }),
    time: z
      .string({ error: SLURM_TIME_ERROR })
      .refine((v) => slurmTime(v) !== null, { error: SLURM_TIME_ERROR })
      .optional()
      .meta({ description: "Time limit: Slurm's format ('4:00:00', '1-00:00:00') or a duration with a unit ('90m', '4h')." }),
    partition: sbatchText('partition').optional(),
    account: sbatchText('account').optional(),
    jobName: sbatchText('jobName').optional().meta({ description: 'sbatch --job-name (default: the cluster name).' }),
    output: sbatchText('output').optional().meta({
      description: "sbatch --output, relative to the file's directory; %j, %x, ... as in sbatch (default <stateDir>/logs/slurm-%j.out).",
    }),
    signalLead: duration.optional().meta({ description: 'Stop gracefully this long before the time limit (sbatch --signal=B:TERM@N).' }),
    exclusive: z
      .boolean({ error: 'expected true or false' })
      .optional()
      .meta({ description: `Whole nodes (sbatch --exclusive, default ${DEFAULTS.slurm.exclusive}).` }),
    extraArgs: z
      .array(z.string().regex(/^[^\n\r\0]*$/, { error: 'must not contain line breaks' }), { error: 'expected a list of sbatch options' })
      .optional()
      .meta({ description: "More sbatch options, one '--option=value' per entry (each becomes an #SBATCH line)." }),
    roles: z
      .record(name('worker group'), z.union([roleSelector, z.array(roleSelector).min(1)], { error: ROLE_ERROR }), {
        error: 'expected a map of worker group names to node sets',
      })
      .optional()
      .meta({
        description:
          'Which allocation nodes each group may use: head (the batch host), all, rest (non-head nodes no other role claims), {first: K} (the K nodes after the head), {last: K}, {indices: [...]}, or a list. Default: all.',
      }),
  })
  .meta({ description: 'Running the cluster as one Slurm job: `dynsup sbatch FILE`, or `dynsup up FILE --slurm` inside an allocation.' });

export const clusterSchema = z
  .strictObject({
    $schema: z.string().optional(),
    name: z
      .string()
      .regex(CLUSTER_NAME_RE, {
        error:
          "expected a cluster name: letters, digits, '_' or '-' (no '.': the name is one NATS subject token), starting with a letter or digit, at most 63 characters",
      })
      .meta({ description: 'Cluster name: namespaces runtime files, etcd keys and NATS subjects.' }),
    head: z
      .strictObject({
        address: nonEmpty.optional().meta({
          description: "Address workers use to reach NATS and etcd on the head node. Required, except in Slurm mode (default: the batch host's address).",
        }),
      })
      .optional(),
    stateDir: nonEmpty.optional().meta({ description: "Logs, data dirs and runtime files (default ./.dynsup/<name>, relative to the file's directory)." }),
    lease: duration.optional().meta({ description: `Workers stop by themselves when the supervisor is gone this long (default ${DEFAULTS.lease}).` }),
    controlPlane: z
      .strictObject({
        nats: z
          .strictObject({
            ...serviceFields,
            port: port.optional().meta({ description: `Client port (default ${DEFAULTS.controlPlane.nats.port}).` }),
            monitorPort: port
              .optional()
              .meta({ description: `HTTP monitoring port (default ${DEFAULTS.controlPlane.nats.monitorPort}), bound to the head address.` }),
            jetstream: z.boolean({ error: 'expected true or false' }).optional(),
            workerCredentials: z
              .boolean({ error: 'expected true or false' })
              .optional()
              .meta({
                description: `Give workers the cluster credentials in NATS_SERVER and refuse anonymous clients (default ${DEFAULTS.controlPlane.nats.workerCredentials}: workers connect anonymously, into a NATS account of their own, with its own JetStream, that cannot see or reach the control plane's).`,
              }),
          })
          .optional(),
        etcd: z
          .strictObject({
            ...serviceFields,
            port: port.optional().meta({ description: `Client port (default ${DEFAULTS.controlPlane.etcd.port}).` }),
            peerPort: port.optional().meta({ description: `Peer port (default ${DEFAULTS.controlPlane.etcd.peerPort}), bound to 127.0.0.1.` }),
            auth: z
              .boolean({ error: 'expected true or false' })
              .optional()
              .meta({
                description: `Turn on etcd's authentication (default ${DEFAULTS.controlPlane.etcd.auth}: whoever reaches the port can read and write). dynsup then uses etcd's root user, and workers get the user \`workers\` (ETCD_AUTH_USERNAME, ETCD_AUTH_PASSWORD), which may read and write every key except dynsup's own (dynsup/...); anonymous clients are refused.`,
              }),
            tls: z
              .boolean({ error: 'expected true or false (certificates of your own are not supported: true makes a CA in the stateDir)' })
              .optional()
              .meta({
                description: `Serve etcd's clients over TLS only (default ${DEFAULTS.controlPlane.etcd.tls}). On the first \`up\` dynsup makes a CA of the cluster's own in <stateDir>/tls/etcd (kept across runs) and a certificate for head.address, 127.0.0.1 and localhost; dynsup verifies etcd against that CA, and workers get ETCD_ENDPOINTS=https://..., the CA's PEM in ETCD_AUTH_CA and a file holding it on their node (DYNSUP_ETCD_CA_FILE). Only with controlPlane.etcd.enabled.`,
              }),
          })
          .optional(),
      })
      .optional(),
    logs: z
      .strictObject({
        maxSize: z
          .union([z.int().min(0), z.string().regex(/^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$/i, { error: "expected a size like '100MB' or '1GiB'" })], {
            error: "expected a size: bytes as a number, or a string like '100MB', '1GiB'",
          })
          .optional()
          .meta({
            description: `Largest size of a replica log file; it is rotated before a line would cross it, so no line is split and no file is larger (except one holding a single longer line). Default ${DEFAULTS.logs.maxSize}; 0 = never.`,
          }),
        keep: z
          .int({ error: 'expected a whole number ≥ 1' })
          .min(1, { error: 'expected a whole number ≥ 1' })
          .max(1000)
          .optional()
          .meta({ description: `Rotated files kept (default ${DEFAULTS.logs.keep}).` }),
      })
      .optional(),
    metrics: z
      .strictObject({
        enabled: z.boolean({ error: 'expected true or false' }).optional(),
        port: port
          .optional()
          .meta({ description: `Prometheus /metrics port on head.address (default ${DEFAULTS.metrics.port}); the web view (ui) is served on it too.` }),
        gpuInterval: duration.optional().meta({
          description: `How often the agent of each node with GPUs samples nvidia-smi for status and /metrics (default ${DEFAULTS.metrics.gpuInterval}; 0 = never). One call per node, whatever the number of replicas.`,
        }),
      })
      .optional(),
    ui: z
      .strictObject({
        enabled: z
          .boolean({ error: 'expected true or false' })
          .optional()
          .meta({ description: `The live web view at http://<head.address>:<metrics.port>/ (default ${DEFAULTS.ui.enabled}).` }),
      })
      .optional(),
    nodes: z
      .record(name('node'), nodeSchema, { error: 'expected a map of nodes' })
      .optional()
      .meta({ description: "The machines. Required, except in Slurm mode, where the allocation's nodes replace them." }),
    slurm: slurmSchema.optional(),
    defaults: defaultsSchema.optional(),
    workers: z.record(name('worker group'), workerSchema, { error: 'expected a map of worker groups' }),
  })
  .meta({ title: 'dynsup cluster file', description: 'One file describes a whole dynsup deployment.' });

export type RawCluster = z.infer<typeof clusterSchema>;
export type RawWorker = z.infer<typeof workerSchema>;
export type RawNode = z.infer<typeof nodeSchema>;
export type RawSlurm = z.infer<typeof slurmSchema>;

/** JSON Schema of the cluster file, for editors (yaml-language-server: `# yaml-language-server: $schema=...`). */
export function clusterJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(clusterSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  // head.address and nodes are optional to zod because a file with a `slurm:` section gets them from the
  // allocation; editors should still ask for them in any other file.
  return {
    ...schema,
    if: { not: { properties: { slurm: true }, required: ['slurm'] } },
    then: { properties: { head: { properties: { address: true }, required: ['address'] }, nodes: true }, required: ['head', 'nodes'] },
  };
}
