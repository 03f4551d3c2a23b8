// The `mkma` command: finds the command in COMMANDS (cli/commands.ts), runs it, and turns what
// it throws into a message and an exit status (0 ok, 1 failed, 2 usage or configuration, 3
// environment: not root or missing tools, 4 the boot test failed; lib/errors.ts), or into
// `{"error": …, "exit": N}` on stderr with --json.
import { EXIT, exitCodeOf, UsageError } from '../lib/errors.js';
import { setDebug } from '../lib/run.js';
import { didYouMean } from '../lib/suggest.js';
import { printHelp } from './args.js';
import { COMMANDS, describedCommands, mainHelp, type CommandModule } from './commands.js';

export { COMMANDS, mainHelp };

export async function main(argvIn: string[]): Promise<number> {
  // --debug, anywhere: every command mkma runs is logged (lib/run.ts), and stack traces shown
  const argv = argvIn.filter((a) => a !== '--debug');
  if (argv.length !== argvIn.length) {
    process.env.MKMA_DEBUG = '1';
    setDebug(true);
  }
  const [cmd, ...rest] = argv;
  try {
    if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
      if (rest[0] === undefined || cmd !== 'help') return printHelp(mainHelp());
      return printHelp((await commandNamed(rest[0], 'help')).HELP);
    }
    if (cmd === '--version' || cmd === '-V') {
      const { mkmaVersion } = await import('../builder/build.js');
      process.stdout.write(`mkma ${mkmaVersion()}\n`);
      return EXIT.ok;
    }
    return await (await commandNamed(cmd)).run(rest, { commands: describedCommands });
  } catch (e) {
    // --json anywhere before `--`: the error as JSON too, so a script reads one format
    const end = argv.indexOf('--');
    return reportError(e, (end < 0 ? argv : argv.slice(0, end)).includes('--json'));
  }
}

/** The command called `name`, or a usage error with the nearest one (`mkma help NAME` too). */
async function commandNamed(name: string, context?: 'help'): Promise<CommandModule> {
  if (!Object.hasOwn(COMMANDS, name)) {
    const names = Object.keys(COMMANDS);
    const what = context === 'help' ? `no help for "${name}": there is no such command` : `unknown command "${name}"`;
    throw new UsageError(`${what}${didYouMean(name, names)}; commands: ${names.join(', ')} (mkma --help)`);
  }
  return COMMANDS[name].load();
}

/** An error as a message and an exit status; as `{"error": …, "exit": N}` on stderr with --json. */
export function reportError(e: unknown, json = false): number {
  const err = e as Error;
  const code = exitCodeOf(e);
  const message = err?.message ?? String(e);
  if (json) {
    const problems = (e as { problems?: Array<{ file: string | null; line: number | null; key: string | null; message: string }> })
      .problems;
    const extra = problems ? { problems: problems.map((p) => ({ file: p.file, line: p.line, key: p.key, message: p.message })) } : {};
    process.stderr.write(JSON.stringify({ error: message, exit: code, ...extra }) + '\n');
  } else process.stderr.write(`mkma: ${message}\n`);
  if (code === EXIT.failed && process.env.MKMA_DEBUG) process.stderr.write(`${err?.stack}\n`);
  return code;
}
