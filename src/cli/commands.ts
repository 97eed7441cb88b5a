/** The command table: options, argument counts and usage text of each `dynsup` command. */
import type { ParseArgsConfig } from 'node:util';
import { downCommand } from './down.js';
import { logsCommand } from './logs.js';
import { restartCommand } from './restart.js';
import { schemaCommand } from './schema.js';
import { statusCommand } from './status.js';
import { upCommand } from './up.js';
import { validateCommand } from './validate.js';

export type Flags = Record<string, string | boolean | undefined>;

export interface Command {
  readonly summary: string;
  readonly usage: string;
  readonly options: NonNullable<ParseArgsConfig['options']>;
  readonly minArgs: number;
  readonly maxArgs: number;
  run(args: string[], flags: Flags): Promise<number>;
}

export const COMMANDS: Record<string, Command> = {
  up: {
    summary: 'start the control plane and all workers, supervise them (foreground, or -d)',
    usage: `Usage: dynsup up FILE [-d|--detach] [--state-dir DIR] [--timeout SECONDS]

Starts nats-server and etcd on the head, then every worker group in dependsOn order, streams their
output prefixed with the replica name, and restarts what crashes. Ctrl-C or SIGTERM stops everything
gracefully (exit 0). With -d the supervisor runs in the background and 'up' returns once every replica
is running (ready, for groups with a health check), or exits 1 if that does not happen within --timeout
(default 300).`,
    options: { detach: { type: 'boolean', short: 'd' }, timeout: { type: 'string' }, 'supervisor-child': { type: 'boolean' } },
    minArgs: 1,
    maxArgs: 1,
    run: upCommand,
  },
  down: {
    summary: 'stop every worker and the control plane; nothing is left running',
    usage: `Usage: dynsup down FILE [--state-dir DIR]

Asks the running supervisor to stop everything (workers in reverse dependency order, then etcd and NATS).
If the supervisor is gone, kills whatever it left behind from its runtime files.`,
    options: {},
    minArgs: 1,
    maxArgs: 1,
    run: downCommand,
  },
  status: {
    summary: 'show every replica: node, state, pid, restarts, last exit, GPUs, uptime',
    usage: `Usage: dynsup status FILE [--json] [--state-dir DIR]

Exit code 0 when the supervisor is running, 1 when it is not (the last known state is shown).`,
    options: { json: { type: 'boolean' } },
    minArgs: 1,
    maxArgs: 1,
    run: statusCommand,
  },
  logs: {
    summary: 'print worker logs; -f follows',
    usage: `Usage: dynsup logs FILE [REPLICA|GROUP|nats|etcd|dynsup] [-f|--follow] [-n|--lines N] [--state-dir DIR]

Prints <stateDir>/logs/<replica>.log. With several replicas each line is prefixed with its name.`,
    options: { follow: { type: 'boolean', short: 'f' }, lines: { type: 'string', short: 'n' } },
    minArgs: 1,
    maxArgs: 2,
    run: logsCommand,
  },
  restart: {
    summary: 'restart a replica or every replica of a group (not counted as a crash)',
    usage: `Usage: dynsup restart FILE REPLICA|GROUP [--state-dir DIR]`,
    options: {},
    minArgs: 2,
    maxArgs: 2,
    run: restartCommand,
  },
  validate: {
    summary: 'check a cluster file and show where each replica would run',
    usage: `Usage: dynsup validate FILE [--json]

Checks the whole file (syntax, fields, references, dependency cycles, GPU capacity). Every problem is
reported as FILE:LINE:COLUMN: field.path: message; exit code 2 if there is any.`,
    options: { json: { type: 'boolean' } },
    minArgs: 1,
    maxArgs: 1,
    run: validateCommand,
  },
  schema: {
    summary: 'print the JSON Schema of cluster files (for editors)',
    usage: `Usage: dynsup schema`,
    options: {},
    minArgs: 0,
    maxArgs: 0,
    run: schemaCommand,
  },
};
