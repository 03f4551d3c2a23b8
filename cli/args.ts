// The commands' options as data, and the one argument parser of every mkma command. A command
// describes itself once (a CommandSpec: usage, description, its options with their values and
// help, further sections, exit statuses, examples); its --help text, `mkma completion` and the
// man page (cli/man.ts) are all rendered from that description, so none of them can drift from
// what parse() accepts. Every command takes the common options (-q/--quiet, --json, --debug,
// -h/--help) from here.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { EnvironmentError, EXIT, UsageError } from '../lib/errors.js';
import { didYouMean } from '../lib/suggest.js';

/** What shell completion offers for a value: files, directories, or a fixed list of words. */
export type Completion = 'file' | 'dir' | readonly string[];

export interface OptionSpec {
  /** the long name, without "--" */
  readonly long: string;
  /** one letter, without "-" */
  readonly short?: string;
  /** the value's placeholder in help (DIR, FILE, N); absent for a flag */
  readonly value?: string;
  /** may be given several times (the values are collected in order) */
  readonly multiple?: boolean;
  /** what it does, hard-wrapped lines as --help shows them */
  readonly help: string;
  readonly complete?: Completion;
}

export interface CommandSpec {
  readonly name: string;
  /** what follows "mkma NAME" in the usage line */
  readonly synopsis: string;
  /** needs root: the usage line says `sudo mkma …` */
  readonly root?: boolean;
  /** paragraphs after the usage line */
  readonly description: string;
  /** positional arguments: how many at most, and what completion offers for them */
  readonly positionals?: { readonly max: number; readonly complete?: Completion };
  readonly options: readonly OptionSpec[];
  /** further sections, each a title and its (indented) text: Environment, Kinds, … */
  readonly sections?: ReadonlyArray<readonly [string, string]>;
  readonly exitStatus: string;
  readonly examples: readonly string[];
}

/** A command with its description, for completion and the man page. */
export interface DescribedCommand {
  name: string;
  /** the line of `mkma --help` */
  summary: string;
  spec: CommandSpec;
}

/** What main() hands every command besides its arguments. */
export interface CommandContext {
  /** every command with its spec (for the commands that describe mkma itself) */
  commands(): Promise<DescribedCommand[]>;
}

/**
 * What a subcommand module exports (`mkma layers SUBCOMMAND`, cli/layers-cmd.ts SUBCOMMANDS):
 * the shape of cli/commands.ts' CommandModule, here so that a command's table of subcommands
 * does not import the table of commands that loads it.
 */
export interface SubcommandModule {
  HELP: string;
  SPEC?: CommandSpec;
  run(argv: string[], context: CommandContext): Promise<number>;
}

/** A line of a table of subcommands: one line of help, and the module, loaded when it runs. */
export interface Subcommand {
  summary: string;
  load(): Promise<SubcommandModule>;
}

/** The options every command takes; a command may describe one of them in its own words. */
export const COMMON_OPTIONS: readonly OptionSpec[] = [
  { long: 'quiet', short: 'q', help: 'no progress output (warnings and errors still show)' },
  { long: 'json', help: 'the result as JSON on stdout; errors as JSON on stderr: {"error": …, "exit": N}' },
  { long: 'debug', help: 'log every program mkma runs, with its duration; stack traces on errors' },
  { long: 'help', short: 'h', help: 'this text' },
];

/** The command's own options followed by the common ones it does not describe itself. */
export function allOptions(spec: Pick<CommandSpec, 'options'>): OptionSpec[] {
  const own = new Set(spec.options.map((o) => o.long));
  return [...spec.options, ...COMMON_OPTIONS.filter((o) => !own.has(o.long))];
}

type OptionValue<O> = O extends { value: string } ? (O extends { multiple: true } ? string[] : string) : boolean;
type CommonValues = { quiet?: boolean; json?: boolean; debug?: boolean; help?: boolean };
/** The parsed options of a spec declared `as const satisfies CommandSpec`, typed by its table. */
export type Values<S extends CommandSpec> = { [O in S['options'][number] as O['long']]?: OptionValue<O> } & CommonValues;

export type Options = NonNullable<ParseArgsConfig['options']>;
type Token = NonNullable<ReturnType<typeof parseArgs>['tokens']>[number];

export interface Parsed<S extends CommandSpec> {
  values: Values<S>;
  positionals: string[];
  /** in command-line order (e.g. persist's --include/--exclude, whose order matters) */
  tokens: Token[];
}

/**
 * Parses `argv` for the command `spec` describes (node:util parseArgs, strict). Errors are
 * UsageErrors that name the command; an unknown option gets the nearest known one.
 *
 * The second form (a name and parseArgs options) is for a command not yet described by a
 * spec: it has no completion and no man page entry, and test/unit/cli.test.ts says so.
 */
export function parse<S extends CommandSpec>(spec: S, argv: string[]): Parsed<S>;
export function parse<T extends Options>(
  name: string,
  argv: string[],
  options: T,
  allowPositionals?: number,
): ReturnType<
  typeof parseArgs<{
    args: string[];
    options: T & { help: { type: 'boolean'; short: 'h' } };
    allowPositionals: boolean;
    strict: true;
    tokens: true;
  }>
>;
export function parse(specOrName: CommandSpec | string, argv: string[], legacy?: Options, allowPositionals = 0) {
  const spec: CommandSpec =
    typeof specOrName === 'string'
      ? {
          name: specOrName,
          synopsis: '',
          description: '',
          options: Object.entries(legacy ?? {}).map(([long, o]) => ({
            long,
            short: o.short,
            value: o.type === 'string' ? 'VALUE' : undefined,
            multiple: o.multiple,
            help: '',
          })),
          positionals: { max: allowPositionals },
          exitStatus: '',
          examples: [],
        }
      : specOrName;
  const options: Options = {};
  for (const o of allOptions(spec)) {
    options[o.long] = {
      type: o.value === undefined ? 'boolean' : 'string',
      ...(o.short ? { short: o.short } : {}),
      ...(o.multiple ? { multiple: true } : {}),
    };
  }
  const r = parseOrExplain(spec.name, argv, options, spec.positionals?.max ?? 0, allOptions(spec));
  return { values: r.values, positionals: r.positionals, tokens: r.tokens ?? [] };
}

function parseOrExplain(name: string, argv: string[], options: Options, maxPositionals: number, known: readonly OptionSpec[]) {
  let r;
  try {
    r = parseArgs({ args: argv, options, allowPositionals: true, strict: true, tokens: true });
  } catch (e) {
    throw new UsageError(`${name}: ${explain(e as Error & { code?: string }, known)}; mkma ${name} --help lists the options`);
  }
  if (r.positionals.length > maxPositionals) {
    const extra = r.positionals[maxPositionals];
    throw new UsageError(
      `${name}: unexpected argument ${JSON.stringify(extra)}${maxPositionals === 0 ? ` (mkma ${name} takes no arguments, only options)` : ''}`,
    );
  }
  return r;
}

/** parseArgs' message in mkma's words, with the nearest known option for an unknown one. */
function explain(e: Error & { code?: string }, known: readonly OptionSpec[]): string {
  const unknown = /^Unknown option '(-{1,2})([^'=]*)/.exec(e.message);
  if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && unknown) {
    const [, dashes, given] = unknown;
    const names = dashes === '--' ? known.map((o) => o.long) : known.filter((o) => o.short).map((o) => o.short!);
    const hint = didYouMean(given, names, (n) => (dashes === '--' ? `--${n}` : `-${n}`));
    return `unknown option ${dashes}${given}${hint}`;
  }
  // "Option '-o, --out <value>' argument missing" and the like
  return e.message.replace(/\. To specify.*$/s, '').replace(/^Option '([^']*) <value>' argument missing$/, 'option $1 needs a value');
}

/** The label of an option in --help: `-o, --out DIR`. */
export function optionLabel(o: OptionSpec): string {
  return `${o.short ? `-${o.short}, ` : '    '}--${o.long}${o.value ? ` ${o.value}` : ''}`;
}

/** Labels wider than this put their help on the next line. */
const LABEL_COLUMN = 22;

/** `mkma NAME --help`: everything the spec says, in the order a reader needs it. */
export function renderHelp(spec: CommandSpec): string {
  const opts = allOptions(spec);
  const width = Math.min(LABEL_COLUMN, Math.max(...opts.map((o) => optionLabel(o).length)));
  const pad = ' '.repeat(2 + width + 2);
  const optionLines = opts.map((o) => {
    const label = optionLabel(o);
    const [first, ...rest] = o.help.split('\n');
    const head = label.length > width ? `  ${label}\n${pad}${first}` : `  ${label.padEnd(width)}  ${first}`;
    return [head, ...rest.map((l) => pad + l.trimStart())].join('\n');
  });
  const parts = [
    `Usage: ${spec.root ? 'sudo ' : ''}mkma ${spec.name}${spec.synopsis ? ` ${spec.synopsis}` : ''}`,
    spec.description.trimEnd(),
    `Options:\n${optionLines.join('\n')}`,
    ...(spec.sections ?? []).map(([title, text]) => `${title}:\n${text.trimEnd()}`),
    `Exit status: ${spec.exitStatus.trimEnd()}`,
    `${spec.examples.length > 1 ? 'Examples' : 'Example'}:\n${spec.examples.map((e) => `  ${e}`).join('\n')}`,
  ];
  return parts.join('\n\n') + '\n';
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
