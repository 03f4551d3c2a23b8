// `mkma config`: the configuration `mkma build` would use, every value with where it came from
// (default, mkma.toml and its line, environment variable, command line), and what each preset
// adds, as text or JSON — mkosi's `summary` for mkma. Reads only: no root needed.
import type { Origin } from '../config/load.js';
import { SETTINGS, tomlLiteral } from '../config/schema.js';
import type { Preset } from '../config/preset.js';
import { EXIT } from '../lib/errors.js';
import { parse, printHelp, renderHelp, type CommandSpec } from './args.js';

export const SPEC = {
  name: 'config',
  synopsis: '[HOSTNAME] [--config FILE] [--preset PATH …] [--arch ARCH] [--json]',
  description: `Prints the configuration mkma build would use with the same arguments: every setting of
mkma.toml with its value and where that value came from (the default, the file and line,
an environment variable, the command line), then what each preset adds (packages, users,
services, files, hooks, script). Every problem of the file and the presets is reported, as
mkma build would report it. The file is --config FILE, else ./mkma.toml, else
/etc/mkma/mkma.toml, else none (the defaults).`,
  positionals: { max: 1 },
  options: [
    { long: 'config', short: 'c', value: 'FILE', complete: 'file', help: 'configuration file (default: discovered, above)' },
    { long: 'preset', short: 'p', value: 'PATH', multiple: true, complete: 'file', help: 'presets, as mkma build takes them (repeatable)' },
    {
      long: 'arch',
      value: 'ARCH',
      complete: ['amd64', 'arm64'],
      help: 'the Debian architecture, as mkma build --arch takes it (beats `architecture` in the config)',
    },
    {
      long: 'json',
      help: `{"config": {file, how}, "settings": {KEY: {value, origin}}, "presets": […]} on stdout;
origin is {"from": "default" | "file" (file, line) | "environment" (variable) |
"command line" | "build host"}`,
    },
  ],
  exitStatus: '0 the configuration is valid, 2 it is not (every problem is listed).',
  examples: ['mkma config', 'mkma config myhost --preset presets/console --json', 'mkma config --arch arm64'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

function originText(o: Origin): string {
  switch (o.from) {
    case 'default':
      return 'default';
    case 'file':
      return o.line === null ? o.file : `${o.file}:${o.line}`;
    case 'environment':
      return `$${o.variable}`;
    case 'command line':
      return 'command line';
    case 'build host':
      return "this machine's hostname";
  }
}

/** What a preset adds, in the words of its TOML keys (no variable values: they may be secrets). */
function presetSummary(p: Preset) {
  return {
    file: p.file,
    packages: p.packages,
    users: p.users.map((u) => ({ name: u.name, groups: u.groups, sudo: u.sudo, password: u.password.kind })),
    services: p.services,
    files: p.files,
    hooks: p.hooks,
    script: p.script === null ? null : { lines: p.script.split('\n').length, line: p.scriptLine },
    sharedDirectories: p.sharedDirectories,
    environmentVariables: p.environmentVariables,
  };
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const { buildInputsFromArgs } = await import('./build-inputs.js');
  const { describeConfig } = await import('../config/load.js');
  const { displayPath } = await import('../config/preset.js');
  const inputs = buildInputsFromArgs(values, positionals[0]);
  const { config, origins, found } = inputs;
  const presets = inputs.presets.map((p) => ({ ...p, file: displayPath(p.file) }));
  const shown = describeConfig(config);
  if (values.json) {
    const settings = Object.fromEntries(SETTINGS.map((s) => [s.key, { value: shown[s.key], origin: origins[s.key] }]));
    process.stdout.write(JSON.stringify({ config: found, settings, presets: presets.map(presetSummary) }, null, 2) + '\n');
    return EXIT.ok;
  }
  const keyWidth = Math.max(...SETTINGS.map((s) => s.key.length));
  const rows = SETTINGS.map((s) => [s.key.padEnd(keyWidth), tomlLiteral(shown[s.key] as never), originText(origins[s.key])]);
  const valueWidth = Math.min(40, Math.max(...rows.map((r) => r[1].length)));
  const lines = [`Configuration: ${found.file ?? 'none'} (${found.how})`];
  // another architecture than this machine's is bootstrapped through qemu-user (builder/foreign.ts)
  const { hostArch } = await import('../lib/arch.js');
  const arch = `Architecture: ${config.architecture} (${originText(origins.architecture)})`;
  lines.push(config.architecture === hostArch() ? arch : `${arch}, built on this ${hostArch()} machine through qemu-user`, '');
  for (const [k, v, o] of rows) lines.push(`  ${k}  ${v.padEnd(valueWidth)}  ${o}`);
  for (const p of presets) {
    const s = presetSummary(p);
    lines.push('', `Preset ${s.file}:`);
    const add = (what: string, list: readonly string[]) => list.length && lines.push(`  ${what.padEnd(keyWidth)}  ${list.join(' ')}`);
    add('packages', s.packages);
    add(
      'users',
      s.users.map((u) => `${u.name}${u.sudo ? ' (sudo)' : ''}${u.groups.length ? ` [${u.groups.join(',')}]` : ''}`),
    );
    add('enable', s.services.enable);
    add('disable', s.services.disable);
    add('mask', s.services.mask);
    add('files', s.files ? [s.files] : []);
    add('hooks', s.hooks);
    add('script', s.script ? [`${s.script.lines} lines (from line ${s.script.line})`] : []);
    add('environment', s.environmentVariables);
  }
  process.stdout.write(lines.join('\n') + '\n');
  return EXIT.ok;
}
