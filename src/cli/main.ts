/** `dynsup` command line: parses arguments, dispatches, maps errors to exit codes (2 input, 1 runtime). */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { DynsupError, EXIT_RUNTIME, EXIT_USAGE, errorMessage, isSystemError } from '../util/errors.js';
import { escapeTerminal } from '../util/terminal-escape.js';
import { closest } from '../config/suggest.js';
import { COMMANDS, type Command } from './commands.js';
import { checkFlags, type Flags } from './flags.js';

const USAGE = `dynsup — supervise NATS, etcd and GPU inference workers across nodes from one cluster file

Usage: dynsup <command> [options]

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

Every command takes --state-dir DIR (overrides the file's stateDir) and --help.
Exit codes: 0 success, 1 runtime failure, 2 bad cluster file or usage.
`;

/** Errors on stderr: they quote arguments, file names and workers' words, so control characters are escaped. */
const say = (s: string) => process.stderr.write(escapeTerminal(s, { keepNewlines: true }));

export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(USAGE);
    return name ? 0 : EXIT_USAGE;
  }
  if (name === '--version' || name === '-V') {
    process.stdout.write('dynsup 0.1.0\n');
    return 0;
  }
  const cmd: Command | undefined = COMMANDS[name];
  if (!cmd) {
    const guess = closest(name, Object.keys(COMMANDS));
    say(`dynsup: unknown command '${name}'${guess ? ` (did you mean '${guess}'?)` : ''}\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  let parsed: ReturnType<typeof parseArgs>;
  // `dynsup sbatch FILE -- --qos=high`: what follows `--` is the command's own business, unparsed.
  const dashes = cmd.passThrough ? rest.indexOf('--') : -1;
  const own = dashes < 0 ? rest : rest.slice(0, dashes);
  const extra = dashes < 0 ? [] : rest.slice(dashes + 1);
  try {
    const options: ParseArgsConfig['options'] = { help: { type: 'boolean', short: 'h' }, 'state-dir': { type: 'string' }, ...cmd.options };
    parsed = parseArgs({ args: [...own], options, allowPositionals: true, strict: true });
  } catch (err) {
    say(`dynsup ${name}: ${errorMessage(err)}\n\n${cmd.usage}\n`);
    return EXIT_USAGE;
  }
  if (parsed.values.help) {
    process.stdout.write(`${cmd.usage}\n`);
    return 0;
  }
  if (parsed.positionals.length < cmd.minArgs || parsed.positionals.length > cmd.maxArgs) {
    say(`dynsup ${name}: wrong number of arguments\n\n${cmd.usage}\n`);
    return EXIT_USAGE;
  }
  const flags = parsed.values as Flags;
  // Every option value and argument is checked before the command starts anything.
  try {
    checkFlags(flags);
    await cmd.check?.(parsed.positionals, flags);
  } catch (err) {
    if (!(err instanceof DynsupError)) throw err;
    say(`dynsup ${name}: ${err.message}\n(see dynsup ${name} --help)\n`);
    return EXIT_USAGE;
  }
  try {
    return await cmd.run(parsed.positionals, flags, extra);
  } catch (err) {
    // A ConfigError (config/load.ts), told by its code and issues: main loads no config code for --help.
    if (err instanceof DynsupError && err.code === 'E_CONFIG' && 'issues' in err) {
      const issues = (err as DynsupError & { issues: readonly { file: string }[] }).issues;
      say(`${err.message}\n${issues.length} error${issues.length === 1 ? '' : 's'} in ${issues[0]?.file ?? 'the cluster file'}\n`);
      return EXIT_USAGE;
    }
    if (err instanceof DynsupError) {
      say(`dynsup ${name}: ${err.message}\n`);
      return err.exitCode;
    }
    if (isSystemError(err)) {
      // A condition of the machine (a file that cannot be read or written, a port taken...), not a bug.
      say(`dynsup ${name}: ${err.message}\n`);
      return EXIT_RUNTIME;
    }
    say(`dynsup ${name}: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return EXIT_RUNTIME;
  }
}

export { EXIT_USAGE };
