// The CLI's surface: every command answers --help from its own module, `mkma --help` lists
// every command of the one table, and errors become exit statuses.
import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { allOptions, optionLabel, parse, renderHelp } from '../../cli/args.js';
import { COMMANDS, main } from '../../cli/main.js';
import { SETTINGS } from '../../config/schema.js';
import { REPO } from '../helpers/paths.js';

let out: string;
let err: string;
beforeEach(() => {
  out = '';
  err = '';
  jest.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  jest.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
});
afterEach(() => {
  jest.restoreAllMocks();
});

describe('mkma --help', () => {
  test('lists every command with its summary', async () => {
    expect(await main(['--help'])).toBe(0);
    for (const [name, c] of Object.entries(COMMANDS))
      expect(out).toMatch(new RegExp(`^  ${name} +${c.summary.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
    expect(Object.keys(COMMANDS).sort()).toEqual([
      'build',
      'chroot',
      'completion',
      'config',
      'install',
      'layers',
      'lint',
      'persist',
      'qemu',
      'unpack',
      'update',
      'verify',
    ]);
  });

  test.each(Object.keys(COMMANDS))("%s: --help and `mkma help` print the command's own text", async (name) => {
    const { HELP } = await COMMANDS[name].load();
    expect(HELP).toMatch(new RegExp(`^Usage: (sudo )?mkma ${name}\\b`));
    expect(await main([name, '--help'])).toBe(0);
    expect(out).toBe(HELP);
    out = '';
    expect(await main(['help', name])).toBe(0);
    expect(out).toBe(HELP);
    expect(err).toBe('');
  });
});

describe('every command is described by a spec', () => {
  test.each(Object.keys(COMMANDS))('%s: its --help is rendered from its SPEC, which takes --quiet and --json', async (name) => {
    const m = await COMMANDS[name].load();
    expect(m.SPEC?.name).toBe(name);
    expect(m.HELP).toBe(renderHelp(m.SPEC!));
    for (const o of allOptions(m.SPEC!)) expect(m.HELP).toContain(optionLabel(o).trim());
    const { values } = parse(m.SPEC!, ['--quiet', '--json']);
    expect([values.quiet, values.json]).toEqual([true, true]);
  });
});

describe('errors', () => {
  test('an unknown command is a usage error (exit 2) naming the commands', async () => {
    expect(await main(['frobnicate'])).toBe(2);
    expect(err).toBe(
      'mkma: unknown command "frobnicate"; commands: build, qemu, install, update, unpack, persist, layers, chroot, verify, lint, config, completion (mkma --help)\n',
    );
  });

  test('a mistyped command: did you mean', async () => {
    expect(await main(['biuld'])).toBe(2);
    expect(err).toMatch(/^mkma: unknown command "biuld" \(did you mean "build"\?\); commands: /);
  });

  test('an unknown option is a usage error naming the command and where the options are', async () => {
    expect(await main(['unpack', '--frob'])).toBe(2);
    expect(err).toBe('mkma: unpack: unknown option --frob; mkma unpack --help lists the options\n');
  });

  test('a mistyped option: did you mean, long and short', async () => {
    expect(await main(['build', '--ot', 'x'])).toBe(2);
    expect(err).toBe('mkma: build: unknown option --ot (did you mean --out?); mkma build --help lists the options\n');
    err = '';
    expect(await main(['persist', '--dryrun'])).toBe(2);
    expect(err).toMatch(/unknown option --dryrun \(did you mean --dry-run\?\)/);
    err = '';
    expect(await main(['qemu', '--interactiv'])).toBe(2);
    expect(err).toMatch(/unknown option --interactiv \(did you mean --interactive\?\)/);
  });

  test('a value missing, an argument too many', async () => {
    expect(await main(['lint', '--config'])).toBe(2);
    expect(err).toMatch(/^mkma: lint: option -c, --config needs a value;/);
    err = '';
    expect(await main(['qemu', 'extra'])).toBe(2);
    expect(err).toBe('mkma: qemu: unexpected argument "extra" (mkma qemu takes no arguments, only options)\n');
  });

  test('`mkma help UNKNOWN` is an error (exit 2), with did you mean', async () => {
    expect(await main(['help', 'persits'])).toBe(2);
    expect(out).toBe('');
    expect(err).toMatch(/^mkma: no help for "persits": there is no such command \(did you mean "persist"\?\); commands: /);
  });

  test('a property of Object.prototype is not a command', async () => {
    expect(await main(['constructor'])).toBe(2);
    expect(await main(['help', 'toString'])).toBe(2);
    expect(out).toBe('');
  });

  test('with --json, an error is JSON on stderr: {"error", "exit"}', async () => {
    expect(await main(['unpack', '--json', '--frob'])).toBe(2);
    expect(JSON.parse(err)).toEqual({ error: 'unpack: unknown option --frob; mkma unpack --help lists the options', exit: 2 });
    expect(out).toBe('');
  });
});

describe('mkma config', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-config-cmd-'));
  const file = path.join(dir, 'mkma.toml');

  test('--json: every setting with its value and where it came from', async () => {
    fs.writeFileSync(file, '# mine\nsuite = "bookworm"\npackages = ["vim", "less"]\n');
    process.env.MKMA_COMPRESSION_LEVEL = '9';
    try {
      expect(await main(['config', 'myhost', '--config', file, '--json'])).toBe(0);
    } finally {
      delete process.env.MKMA_COMPRESSION_LEVEL;
    }
    const j = JSON.parse(out);
    expect(j.config).toEqual({ file, how: 'given with --config' });
    expect(j.settings.suite).toEqual({ value: 'bookworm', origin: { from: 'file', file, line: 2 } });
    expect(j.settings.packages).toEqual({ value: ['vim', 'less'], origin: { from: 'file', file, line: 3 } });
    expect(j.settings.compression_level).toEqual({ value: 9, origin: { from: 'environment', variable: 'MKMA_COMPRESSION_LEVEL' } });
    expect(j.settings.hostname).toEqual({ value: 'myhost', origin: { from: 'command line' } });
    expect(j.settings.mirror).toEqual({ value: 'http://deb.debian.org/debian', origin: { from: 'default' } });
    expect(Object.keys(j.settings)).toEqual(SETTINGS.map((s) => s.key));
    expect(j.presets).toEqual([]);
  });

  test('as text: one line per setting, the origin last', async () => {
    fs.writeFileSync(file, 'slim = false\n');
    expect(await main(['config', 'h', '--config', file])).toBe(0);
    expect(out).toMatch(new RegExp(`^Configuration: ${file} \\(given with --config\\)\n`));
    expect(out).toMatch(new RegExp(`^  slim +false +${file}:1$`, 'm'));
    expect(out).toMatch(/^ {2}suite +"trixie" +default$/m);
    expect(out).toMatch(/^ {2}hostname +"h" +command line$/m);
  });

  test('--arch: the effective architecture, where it came from, and the kernel that follows it', async () => {
    fs.writeFileSync(file, 'architecture = "amd64"\n');
    expect(await main(['config', 'h', '--config', file, '--arch', 'arm64'])).toBe(0);
    expect(out).toMatch(/^Architecture: arm64 \(command line\), built on this amd64 machine through qemu-user$/m);
    expect(out).toMatch(/^ {2}architecture +"arm64" +command line$/m);
    expect(out).toMatch(/^ {2}kernel_package +"linux-image-arm64" /m);
  });

  test('the architecture from the file: its line', async () => {
    fs.writeFileSync(file, 'architecture = "amd64"\n');
    expect(await main(['config', 'h', '--config', file])).toBe(0);
    expect(out).toMatch(new RegExp(`^Architecture: amd64 \\(${file}:1\\)$`, 'm'));
  });

  test('found in the current directory when --config is not given', async () => {
    fs.writeFileSync(file, 'slim = false\n');
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      expect(await main(['config', 'h', '--json'])).toBe(0);
    } finally {
      process.chdir(cwd);
    }
    expect(JSON.parse(out).config).toEqual({ file: './mkma.toml', how: 'found in the current directory' });
  });

  test('what a preset adds', async () => {
    expect(await main(['config', 'h', '--config', file, '--preset', path.join(REPO, 'presets', 'console'), '--json'])).toBe(0);
    const [first] = JSON.parse(out).presets;
    expect(first.file).toMatch(/presets\/console\/.*\.toml$/);
    expect(Array.isArray(first.packages)).toBe(true);
  });

  test('several problems at once, as JSON with --json (exit 2)', async () => {
    fs.writeFileSync(file, 'sute = "x"\nslim = 3\n[pakages]\n');
    expect(await main(['config', 'h', '--config', file, '--json'])).toBe(2);
    expect(out).toBe('');
    const e = JSON.parse(err);
    expect(e.exit).toBe(2);
    expect(e.error).toMatch(/^3 problems in the configuration:\n/);
    expect(e.problems.map((p: { line: number; key: string }) => [p.line, p.key])).toEqual([
      [1, 'sute'],
      [2, 'slim'],
      [3, 'pakages'],
    ]);
  });
});
