// The one argument parser of every mkma command (node:util parseArgs, strict), and the checks
// commands share. Every command gets -h/--help from here.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { EnvironmentError, EXIT, UsageError } from '../lib/errors.js';

export type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * Parses `argv` for command `name`: the options given plus --help; at most `allowPositionals`
 * positional arguments. Errors are UsageErrors that name the command.
 */
export function parse<T extends Options>(name: string, argv: string[], options: T, allowPositionals = 0) {
  try {
    const r = parseArgs({
      args: argv,
      options: { ...options, help: { type: 'boolean', short: 'h' } } as T & { help: { type: 'boolean'; short: 'h' } },
      allowPositionals: allowPositionals > 0,
      strict: true,
      tokens: true,
    });
    if (r.positionals.length > allowPositionals) throw new UsageError(`${name}: unexpected argument ${r.positionals[allowPositionals]}`);
    return r;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${name}: ${(e as Error).message.replace(/\. To specify.*$/, '')}`);
  }
}

export function requireRoot(what: string, why = 'it bootstraps, mounts and sets file owners'): void {
  if (process.getuid && process.getuid() !== 0) {
    throw new EnvironmentError(`${what} must run as root (${why}): run it with sudo`);
  }
}

/** `--help`: the command's text on stdout, exit 0. */
export function printHelp(text: string): number {
  process.stdout.write(text);
  return EXIT.ok;
}
