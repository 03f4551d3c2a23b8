// `mkma lint`: checks presets (and optionally mkma.toml) without building (config/lint.ts),
// one line `FILE:LINE: message` per finding. Exit 0 and "ok" when nothing is wrong, 1 otherwise.
import { formatFinding, lint } from '../config/lint.js';
import { EXIT, UsageError } from '../lib/errors.js';
import { parse, printHelp } from './args.js';

export const HELP = `Usage: mkma lint [--preset PATH …] [--config FILE]

Checks presets without building: unknown keys, wrong types, missing shared directories and
files folders, hooks that are not executable, environment variables that are not set, and
runs shellcheck (shellcheck -s bash -f gcc -) on each script. Every finding is printed as
FILE:LINE: message, with script findings mapped to their line in the TOML file.
--config FILE checks an mkma.toml as well.

Options:
  -p, --preset PATH    a preset file, or a directory of *.toml presets (repeatable)
  -c, --config FILE    a configuration file to check too

Exit status: 0 and "ok" when nothing is wrong, 1 when something is, 2 bad arguments,
3 shellcheck is not installed.

Example: mkma lint --preset presets/console --preset presets/ssh-server
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parse('lint', argv, {
    preset: { type: 'string', short: 'p', multiple: true },
    config: { type: 'string', short: 'c' },
  });
  if (values.help) return printHelp(HELP);
  const presets = values.preset ?? [];
  if (!presets.length && values.config === undefined)
    throw new UsageError('lint: nothing to check: give --preset PATH (repeatable) and/or --config FILE');
  const findings = lint(presets, values.config, process.env);
  if (!findings.length) {
    process.stdout.write('ok\n');
    return EXIT.ok;
  }
  process.stdout.write(findings.map(formatFinding).join('\n') + '\n');
  process.stderr.write(`mkma lint: ${findings.length} problem${findings.length === 1 ? '' : 's'}\n`);
  return EXIT.failed;
}
