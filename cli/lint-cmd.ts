// `mkma lint`: checks presets (and mkma.toml) without building (config/lint.ts), one line
// `FILE:LINE: message` per finding. Exit 0 and "ok" when nothing is wrong, 1 otherwise.
import { findConfigFile } from '../config/load.js';
import { formatFinding, lint } from '../config/lint.js';
import { EXIT, UsageError } from '../lib/errors.js';
import { parse, printHelp, renderHelp, type CommandSpec } from './args.js';

export const SPEC = {
  name: 'lint',
  synopsis: '[--preset PATH …] [--config FILE]',
  description: `Checks presets without building: unknown keys, wrong types, missing shared directories and
files folders, hooks that are not executable, environment variables that are not set, and
runs shellcheck (shellcheck -s bash -f gcc -) on each script. Every finding is printed as
FILE:LINE: message, with script findings mapped to their line in the TOML file.
The configuration is checked too: --config FILE, else ./mkma.toml or /etc/mkma/mkma.toml
when there is one (as mkma build finds it).`,
  options: [
    {
      long: 'preset',
      short: 'p',
      value: 'PATH',
      multiple: true,
      complete: 'file',
      help: 'a preset file, or a directory of *.toml presets (repeatable)',
    },
    {
      long: 'config',
      short: 'c',
      value: 'FILE',
      complete: 'file',
      help: 'a configuration file to check (default: the one mkma build would use)',
    },
    { long: 'quiet', short: 'q', help: 'print nothing when nothing is wrong' },
    { long: 'json', help: 'the findings as JSON on stdout: {"ok": bool, "findings": [{file, line, column, message}]}' },
  ],
  exitStatus: `0 and "ok" when nothing is wrong, 1 when something is, 2 bad arguments,
3 shellcheck is not installed.`,
  examples: ['mkma lint --preset presets/console --preset presets/ssh-server'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const presets = values.preset ?? [];
  const config = findConfigFile({ given: values.config, cwd: process.cwd() }).file;
  if (!presets.length && config === null)
    throw new UsageError(
      'lint: nothing to check: give --preset PATH (repeatable) and/or --config FILE (no mkma.toml here or in /etc/mkma)',
    );
  const findings = lint(presets, config ?? undefined, process.env);
  if (values.json) {
    process.stdout.write(JSON.stringify({ ok: !findings.length, findings }, null, 2) + '\n');
    return findings.length ? EXIT.failed : EXIT.ok;
  }
  if (!findings.length) {
    if (!values.quiet) process.stdout.write('ok\n');
    return EXIT.ok;
  }
  process.stdout.write(findings.map(formatFinding).join('\n') + '\n');
  process.stderr.write(`mkma lint: ${findings.length} problem${findings.length === 1 ? '' : 's'}\n`);
  return EXIT.failed;
}
