/**
 * The command table: options, argument counts and usage text of each `dynsup` command. Command modules
 * are imported when their command runs, not here: `dynsup validate`, `schema`, `--help` and `--version`
 * load neither ssh2 nor nats nor etcd3 (test/integration/lazy-imports.test.ts).
 */
import type { ParseArgsConfig } from 'node:util';
import { CLIENT_OPTIONS, scaleSpecs, type Flags } from './flags.js';

export type { Flags };

const REMOTE = `\n\nFrom another machine: --head ADDR (the head's address) and --creds FILE (a copy of <stateDir>/run/credentials.json).`;

export interface Command {
  readonly summary: string;
  readonly usage: string;
  readonly options: NonNullable<ParseArgsConfig['options']>;
  readonly minArgs: number;
  readonly maxArgs: number;
  /** Arguments after `--` are not parsed but handed to run() as `extra`. */
  readonly passThrough?: boolean;
  /**
   * Checks of the arguments and flags beyond the per-option value checks (flags.ts), run before run():
   * throws E_USAGE for bad input, so that nothing starts on it.
   */
  check?(args: readonly string[], flags: Flags): void | Promise<void>;
  run(args: string[], flags: Flags, extra?: readonly string[]): Promise<number>;
}

export const COMMANDS: Record<string, Command> = {
  up: {
    summary: 'start the control plane and all workers, supervise them (foreground, or -d)',
    usage: `Usage: dynsup up FILE [-d|--detach] [--slurm] [--state-dir DIR] [--timeout SECONDS]

Starts nats-server and etcd on the head, then every worker group in dependsOn order, streams their
output prefixed with the replica name, and restarts what crashes. Ctrl-C or SIGTERM stops everything
gracefully (exit 0). With -d the supervisor runs in the background and 'up' returns once every replica
is running (ready, for groups with a health check), or exits 1 if that does not happen within --timeout
(default 300).

--slurm: run inside a Slurm allocation (what 'dynsup sbatch' submits): the allocation's nodes replace
the file's, groups go where slurm.roles says, every worker is a job step (srun --overlap), and the
head is the node dynsup runs on.`,
    options: {
      detach: { type: 'boolean', short: 'd' },
      timeout: { type: 'string' },
      slurm: { type: 'boolean' },
      'supervisor-child': { type: 'boolean' },
    },
    minArgs: 1,
    maxArgs: 1,
    run: async (args, flags) => (await import('./up.js')).upCommand(args, flags),
  },
  down: {
    summary: 'stop every worker and the control plane; nothing is left running',
    usage: `Usage: dynsup down FILE [--head ADDR] [--creds FILE] [--state-dir DIR]

Asks the running supervisor to stop everything (workers in reverse dependency order, then etcd and NATS).
If the supervisor is gone, kills whatever it left behind from its runtime files.${REMOTE}`,
    options: { ...CLIENT_OPTIONS },
    minArgs: 1,
    maxArgs: 1,
    run: async (args, flags) => (await import('./down.js')).downCommand(args, flags),
  },
  status: {
    summary: 'show every replica: node, state, pid, restarts, last exit, GPUs, uptime',
    usage: `Usage: dynsup status FILE [--json] [--watch] [--head ADDR] [--creds FILE] [--state-dir DIR]

Asks the supervisor; when it does not answer, shows the last known state from etcd (or the local state
file) and says so, telling a cluster that was stopped from one never started here. Exit code 0 when the
supervisor is running, 2 when it runs but these credentials may not ask it (or there are none), 1 when it
does not run. --watch redraws every second on a terminal (elsewhere: one report after the other; with
--json one JSON object per line).${REMOTE}`,
    options: { json: { type: 'boolean' }, watch: { type: 'boolean', short: 'w' }, ...CLIENT_OPTIONS },
    minArgs: 1,
    maxArgs: 1,
    run: async (args, flags) => (await import('./status.js')).statusCommand(args, flags),
  },
  logs: {
    summary: 'print worker logs; -f follows',
    usage: `Usage: dynsup logs FILE [REPLICA|GROUP|nats|etcd|dynsup] [-f|--follow] [-n|--lines N] [--head ADDR] [--creds FILE] [--state-dir DIR]

Prints <stateDir>/logs/<replica>.log. With several replicas each line is prefixed with its name; with
-n, the last N lines of each, interleaved by when they were printed. 'dynsup' is the supervisor's own
event log. Without -f a last line the worker has not ended yet is shown too.${REMOTE}`,
    options: { follow: { type: 'boolean', short: 'f' }, lines: { type: 'string', short: 'n' }, ...CLIENT_OPTIONS },
    minArgs: 1,
    maxArgs: 2,
    run: async (args, flags) => (await import('./logs.js')).logsCommand(args, flags),
  },
  restart: {
    summary: 'restart a replica or every replica of a group (not counted as a crash); --rolling: one at a time',
    usage: `Usage: dynsup restart FILE REPLICA|GROUP [--rolling] [--head ADDR] [--creds FILE] [--state-dir DIR]

--rolling (a group): replace its replicas one at a time (rollout.maxUnavailable), the next only once the
replaced one is ready again (health check), so that the group keeps serving.${REMOTE}`,
    options: { rolling: { type: 'boolean' }, ...CLIENT_OPTIONS },
    minArgs: 2,
    maxArgs: 2,
    run: async (args, flags) => (await import('./restart.js')).restartCommand(args, flags),
  },
  stop: {
    summary: 'stop a replica or group (it stays stopped until start)',
    usage: `Usage: dynsup stop FILE REPLICA|GROUP [--head ADDR] [--creds FILE] [--state-dir DIR]${REMOTE}`,
    options: { ...CLIENT_OPTIONS },
    minArgs: 2,
    maxArgs: 2,
    run: async (args, flags) => (await import('./restart.js')).stopCommand(args, flags),
  },
  start: {
    summary: 'start a stopped (or failed) replica or group',
    usage: `Usage: dynsup start FILE REPLICA|GROUP [--head ADDR] [--creds FILE] [--state-dir DIR]${REMOTE}`,
    options: { ...CLIENT_OPTIONS },
    minArgs: 2,
    maxArgs: 2,
    run: async (args, flags) => (await import('./restart.js')).startCommand(args, flags),
  },
  apply: {
    summary: 'apply a changed cluster file to the running cluster: start, stop, replace (rolling) what changed',
    usage: `Usage: dynsup apply FILE [--dry-run] [--head ADDR] [--creds FILE] [--state-dir DIR]

Checks FILE, compares it with what runs and prints the plan: per group, the replicas kept (untouched,
same process), replaced (what they run changed: command, env, ports, hooks, policies, health check),
started and stopped. Then carries it out: removed replicas stop, new ones start, changed groups are
replaced rolling, rollout.maxUnavailable (default 1) at a time, the next only once the replaced one is
ready again. A group whose gpus or nodes change is placed afresh (stopped, then started).
Exit 2, nothing changed, when the plan cannot be placed (GPUs, ports) or the control plane section,
name, head or lease changed (those need down/up). --dry-run prints the plan only.${REMOTE}`,
    options: { 'dry-run': { type: 'boolean' }, ...CLIENT_OPTIONS },
    minArgs: 1,
    maxArgs: 1,
    run: async (args, flags) => (await import('./apply.js')).applyCommand(args, flags),
  },
  scale: {
    summary: 'change the number of replicas of groups: scale FILE prefill=4 decode=2',
    usage: `Usage: dynsup scale FILE GROUP=N [GROUP=N...] [--head ADDR] [--creds FILE] [--state-dir DIR]

New replicas are placed like the file's (distinct GPUs on the group's nodes); exit 2 if they do not fit.${REMOTE}`,
    options: { ...CLIENT_OPTIONS },
    minArgs: 2,
    maxArgs: 64,
    check: (args) => void scaleSpecs(args.slice(1)),
    run: async (args, flags) => (await import('./scale.js')).scaleCommand(args, flags),
  },
  sbatch: {
    summary: 'submit the cluster as one Slurm batch job (dynsup up --slurm on the allocation)',
    usage: `Usage: dynsup sbatch FILE [--dry-run] [--nodes N] [--time T] [--partition P] [--account A]
                     [--job-name J] [--output PATH] [--state-dir DIR] [-- SBATCH-OPTIONS...]

Renders a batch script from the file's slurm: section (flags win over it), checks the file against an
allocation of that many nodes, submits it with sbatch and prints the job id. The batch step runs
'dynsup up FILE --slurm' on the first node: NATS and etcd there, one dynsup agent step per node running
that node's workers, placed by slurm.roles. scancel JOBID (or the time limit, see slurm.signalLead) stops
everything gracefully.
--dry-run prints the script instead. Options after -- go to sbatch as they are.`,
    options: {
      'dry-run': { type: 'boolean' },
      nodes: { type: 'string', short: 'N' },
      time: { type: 'string', short: 't' },
      partition: { type: 'string', short: 'p' },
      account: { type: 'string', short: 'A' },
      'job-name': { type: 'string', short: 'J' },
      output: { type: 'string', short: 'o' },
    },
    minArgs: 1,
    maxArgs: 1,
    passThrough: true,
    check: async (_args, flags) => void (await import('./sbatch.js')).sbatchFlags(flags),
    run: async (args, flags, extra) => (await import('./sbatch.js')).sbatchCommand(args, flags, extra),
  },
  validate: {
    summary: 'check a cluster file and show where each replica would run',
    usage: `Usage: dynsup validate FILE [--json]

Checks the whole file (syntax, fields, references, dependency cycles, GPU capacity). Every problem is
reported as FILE:LINE:COLUMN: field.path: message; exit code 2 if there is any.`,
    options: { json: { type: 'boolean' } },
    minArgs: 1,
    maxArgs: 1,
    run: async (args, flags) => (await import('./validate.js')).validateCommand(args, flags),
  },
  schema: {
    summary: 'print the JSON Schema of cluster files (for editors)',
    usage: `Usage: dynsup schema`,
    options: {},
    minArgs: 0,
    maxArgs: 0,
    run: async () => (await import('./schema.js')).schemaCommand(),
  },
};
