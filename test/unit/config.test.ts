import { describe, expect, test } from '@jest/globals';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ConfigError,
  ConfigErrors,
  configHash,
  describeConfig,
  findConfigFile,
  loadConfig,
  parseConfigText,
  resolveConfig,
  valueProblem,
} from '../../config/load.js';
import { loadBuildInputs } from '../../config/inputs.js';
import { renderConfigReference, SETTINGS } from '../../config/schema.js';
import type { Config } from '../../config/types.js';

const EXAMPLE = join(process.cwd(), 'mkma.example.toml');

const DEFAULTS: Config = {
  hostname: 'buildhost',
  suite: 'trixie',
  mirror: 'http://deb.debian.org/debian',
  architecture: 'amd64',
  variant: 'minbase',
  components: ['main'],
  packages: [],
  kernelPackage: 'linux-image-amd64',
  kernelModules: 'all',
  initramfsModules: [],
  compressionLevel: 3,
  rootPassword: { kind: 'locked' },
  slim: true,
  installMkma: true,
  ramSize: '50%',
  bootTuning: true,
  baseFormat: 'cpio',
  source: 'mkma.toml',
};

function parse(text: string, opts: { env?: NodeJS.ProcessEnv; hostname?: string; defaultHostname?: string } = {}) {
  return parseConfigText(text, {
    file: 'mkma.toml',
    env: opts.env ?? {},
    hostname: opts.hostname,
    defaultHostname: opts.defaultHostname ?? 'buildhost',
  });
}

/** The ConfigError thrown by fn (fails the test when none is). */
function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfigText', () => {
  test('an empty file gives the defaults', () => {
    expect(parse('')).toEqual(DEFAULTS);
  });

  test('every schema default is a valid value of its setting', () => {
    for (const s of SETTINGS) if (s.default !== null) expect([s.key, valueProblem(s, s.default)]).toEqual([s.key, null]);
  });

  test('a full valid file', () => {
    const text = `
hostname = "kiosk-1.example.org"
suite = "bookworm"
mirror = "http://ftp.de.debian.org/debian"
architecture = "arm64"
variant = "important"
components = ["main", "contrib", "non-free-firmware"]
packages = ["openssh-server", "g++", "libstdc++6", "python3.11"]
kernel_package = "linux-image-cloud-amd64"
kernel_modules = ["virtio_blk", "virtio-net", "ext4"]
initramfs_modules = ["nvme"]
compression_level = 19
root_password = "$y$j9T$abc/def$ghi.jkl"
slim = false
install_mkma = false
ram_size = "4G"
boot_tuning = false
base_format = "erofs"
`;
    expect(parse(text)).toEqual({
      hostname: 'kiosk-1.example.org',
      suite: 'bookworm',
      mirror: 'http://ftp.de.debian.org/debian',
      architecture: 'arm64',
      variant: 'important',
      components: ['main', 'contrib', 'non-free-firmware'],
      packages: ['openssh-server', 'g++', 'libstdc++6', 'python3.11'],
      kernelPackage: 'linux-image-cloud-amd64',
      kernelModules: ['virtio_blk', 'virtio-net', 'ext4'],
      initramfsModules: ['nvme'],
      compressionLevel: 19,
      rootPassword: { kind: 'hash', hash: '$y$j9T$abc/def$ghi.jkl' },
      slim: false,
      installMkma: false,
      ramSize: '4G',
      bootTuning: false,
      baseFormat: 'erofs',
      source: 'mkma.toml',
    });
  });

  test('root_password "empty" and ram_size percentages', () => {
    const c = parse('root_password = "empty"\nram_size = "100%"');
    expect(c.rootPassword).toEqual({ kind: 'empty' });
    expect(c.ramSize).toBe('100%');
  });

  test('source is null without a file', () => {
    expect(parseConfigText('', { file: null, env: {}, defaultHostname: 'h' }).source).toBeNull();
  });

  test('mkma.example.toml parses to the defaults and mentions every key', () => {
    const text = readFileSync(EXAMPLE, 'utf8');
    expect(parse(text)).toEqual(DEFAULTS);
    expect(parse(text)).toEqual(parse('')); // the schema's defaults, not just this test's copy
    for (const s of SETTINGS) expect(text).toMatch(new RegExp(`^#? ?${s.key} = `, 'm'));
  });
});

describe('errors', () => {
  test('unknown key, with the closest known key and its line', () => {
    const e = errorOf(() => parse('suite = "trixie"\n\n# comment\nslim = true\n\n\n  compresion_level = 5\n'));
    expect(e.message).toBe('mkma.toml:7: key "compresion_level" is unknown (did you mean "compression_level"?)');
    expect([e.file, e.key, e.line]).toEqual(['mkma.toml', 'compresion_level', 7]);
  });

  test('unknown key far from any known key: no suggestion', () => {
    expect(errorOf(() => parse('frobnicate = 1')).message).toBe('mkma.toml:1: key "frobnicate" is unknown');
  });

  test('a table is an unknown key, found by its header', () => {
    const e = errorOf(() => parse('slim = true\n[pakages]\na = 1\n'));
    expect(e.message).toBe('mkma.toml:2: key "pakages" is unknown (did you mean "packages"?)');
  });

  test('wrong type, with line', () => {
    const e = errorOf(() => parse('suite = "trixie"\nslim = true\npackages = 3\n'));
    expect(e.message).toBe('mkma.toml:3: packages must be a list of strings, got integer');
    expect([e.key, e.line]).toEqual(['packages', 3]);
  });

  test('wrong type inside a list', () => {
    expect(errorOf(() => parse('packages = ["vim", 2]')).message).toBe(
      'mkma.toml:1: packages must be a list of strings, got list containing integer',
    );
  });

  test('wrong types of other kinds', () => {
    expect(errorOf(() => parse('slim = "yes"')).message).toBe('mkma.toml:1: slim must be true or false, got string');
    expect(errorOf(() => parse('compression_level = 2.5')).message).toBe(
      'mkma.toml:1: compression_level must be an integer from 1 to 22, got float',
    );
    expect(errorOf(() => parse('kernel_modules = "some"')).message).toBe(
      'mkma.toml:1: kernel_modules must be "all" or a list of strings, got string',
    );
    expect(errorOf(() => parse('variant = "tiny"')).message).toBe(
      'mkma.toml:1: variant must be one of extract, custom, essential, apt, required, minbase, buildd, important, debootstrap, standard, got "tiny"',
    );
  });

  test('bad TOML, with line and column', () => {
    const e = errorOf(() => parse('slim = true\nsuite = = "x"\n'));
    expect(e.message).toBe('mkma.toml:2:9: invalid TOML: invalid value');
    expect([e.key, e.line]).toEqual([null, 2]);
  });

  test('compression_level out of range', () => {
    const e = errorOf(() => parse('compression_level = 23'));
    expect(e.message).toBe('mkma.toml:1: compression_level must be an integer from 1 to 22, got 23');
    expect(errorOf(() => parse('compression_level = 0')).message).toBe(
      'mkma.toml:1: compression_level must be an integer from 1 to 22, got 0',
    );
  });

  test('bad MKMA_COMPRESSION_LEVEL names the variable', () => {
    const e = errorOf(() => parse('', { env: { MKMA_COMPRESSION_LEVEL: 'fast' } }));
    expect(e.message).toBe('MKMA_COMPRESSION_LEVEL must be an integer from 1 to 22, got "fast"');
    expect([e.file, e.key, e.line]).toEqual([null, 'compression_level', null]);
    expect(errorOf(() => parse('', { env: { MKMA_COMPRESSION_LEVEL: '99' } })).message).toBe(
      'MKMA_COMPRESSION_LEVEL must be an integer from 1 to 22, got 99',
    );
  });

  test('bad hostname: from the file, the command line, the build host', () => {
    expect(errorOf(() => parse('hostname = "my_host"')).message).toBe(
      'mkma.toml:1: hostname: "my_host" is not a valid hostname (RFC 1123: dot-separated labels of 1 to 63 letters, digits and hyphens, not starting or ending with a hyphen)',
    );
    expect(errorOf(() => parse('', { hostname: '-bad' })).message).toMatch(
      /^hostname: "-bad" is not a valid hostname .*\(given on the command line\)$/,
    );
    expect(errorOf(() => parse('', { defaultHostname: 'a..b' })).message).toMatch(
      /^hostname: the build host's name "a\.\.b" is not a valid hostname .*; set hostname in mkma\.toml or give one on the command line$/,
    );
    expect(errorOf(() => parse(`hostname = "${'a'.repeat(64)}"`)).key).toBe('hostname');
  });

  test('bad package names', () => {
    expect(errorOf(() => parse('slim = true\npackages = ["vim", "Vim_Tiny"]')).message).toBe(
      'mkma.toml:2: packages: "Vim_Tiny" is not a valid Debian package name (lowercase letters, digits, "+", "-", "."; at least 2 characters, starting with a letter or digit)',
    );
    expect(errorOf(() => parse('kernel_package = "x"')).message).toMatch(
      /^mkma\.toml:1: kernel_package: "x" is not a valid Debian package name/,
    );
  });

  test('bad kernel module names', () => {
    expect(errorOf(() => parse('initramfs_modules = ["ext4.ko"]')).message).toBe(
      'mkma.toml:1: initramfs_modules: "ext4.ko" is not a valid kernel module name (letters, digits, "_" and "-")',
    );
  });

  test('bad root_password does not echo the value', () => {
    const e = errorOf(() => parse('root_password = "hunter2"'));
    expect(e.message).toBe(
      'mkma.toml:1: root_password must be "locked", "empty" or a crypt hash starting with "$" (make one with `mkpasswd -m yescrypt`; a clear-text password is not accepted)',
    );
    expect(e.message).not.toContain('hunter2');
    // ':' would split the /etc/shadow entry
    expect(errorOf(() => parse('root_password = "$6$a:b"')).key).toBe('root_password');
  });

  test('bad ram_size', () => {
    for (const bad of ['0%', '101%', '4T', '0', 'half', '4 G']) {
      expect(errorOf(() => parse(`ram_size = "${bad}"`)).message).toBe(
        `mkma.toml:1: ram_size: "${bad}" is not a tmpfs size (a percentage of RAM from 1% to 100%, or a size with an optional K, M or G suffix, e.g. "4G")`,
      );
    }
  });

  test('the file name is left out when there is none', () => {
    expect(errorOf(() => parseConfigText('slim = 1', { file: null, env: {}, defaultHostname: 'h' })).message).toBe(
      'line 1: slim must be true or false, got integer',
    );
  });
});

describe('precedence', () => {
  test('env overrides the file and the default', () => {
    expect(parse('compression_level = 7', { env: { MKMA_COMPRESSION_LEVEL: '12' } }).compressionLevel).toBe(12);
    expect(parse('', { env: { MKMA_COMPRESSION_LEVEL: '1' } }).compressionLevel).toBe(1);
    expect(parse('compression_level = 7', { env: {} }).compressionLevel).toBe(7);
    // an empty variable counts as unset
    expect(parse('compression_level = 7', { env: { MKMA_COMPRESSION_LEVEL: '' } }).compressionLevel).toBe(7);
  });

  test('hostname: argument > file > build host', () => {
    expect(parse('').hostname).toBe('buildhost');
    expect(parse('hostname = "fromfile"').hostname).toBe('fromfile');
    expect(parse('hostname = "fromfile"', { hostname: 'fromcli' }).hostname).toBe('fromcli');
    expect(parse('', { hostname: 'fromcli', defaultHostname: 'not_valid_but_unused' }).hostname).toBe('fromcli');
  });
});

describe('every problem at once', () => {
  test('unknown keys, wrong types and a bad environment variable: one error listing all, in file order', () => {
    let err: unknown;
    try {
      parse('sute = "trixie"\nslim = "yes"\npackages = ["Vim"]\ncompression_level = 30\n', { env: { MKMA_COMPRESSION_LEVEL: 'x' } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigErrors);
    const e = err as ConfigErrors;
    expect(e.problems.map((p) => [p.line, p.key])).toEqual([
      [1, 'sute'],
      [2, 'slim'],
      [3, 'packages'],
      [4, 'compression_level'],
      [null, 'compression_level'],
    ]);
    expect(e.message).toBe(
      [
        '5 problems in the configuration:',
        '  mkma.toml:1: key "sute" is unknown (did you mean "suite"?)',
        '  mkma.toml:2: slim must be true or false, got string',
        '  mkma.toml:3: packages: "Vim" is not a valid Debian package name (lowercase letters, digits, "+", "-", "."; at least 2 characters, starting with a letter or digit)',
        '  mkma.toml:4: compression_level must be an integer from 1 to 22, got 30',
        '  MKMA_COMPRESSION_LEVEL must be an integer from 1 to 22, got "x"',
      ].join('\n'),
    );
    expect(e.exitCode).toBe(2);
  });

  test('one problem is thrown as itself', () => {
    expect(errorOf(() => parse('slim = 1')).message).toBe('mkma.toml:1: slim must be true or false, got integer');
  });

  test('the configuration and the presets together (mkma build, mkma config)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mkma-inputs-'));
    writeFileSync(join(dir, 'mkma.toml'), 'sute = "x"\n');
    writeFileSync(join(dir, 'p.toml'), 'pakages = ["vim"]\nenvironment_variables = ["MKMA_TEST_SURELY_UNSET"]\n');
    let err: unknown;
    try {
      loadBuildInputs({ cwd: dir, env: {}, defaultHostname: 'h', presetArgs: [join(dir, 'p.toml')] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigErrors);
    const msgs = (err as ConfigErrors).problems.map((p) => p.message);
    expect(msgs).toHaveLength(3);
    expect(msgs[0]).toBe(`${join(dir, 'mkma.toml')}:1: key "sute" is unknown (did you mean "suite"?)`);
    expect(msgs[1]).toMatch(/p\.toml:1: key "pakages" is unknown \(did you mean "packages"\?\)$/);
    expect(msgs[2]).toMatch(/p\.toml:2: environment variable MKMA_TEST_SURELY_UNSET is not set/);
  });
});

describe('where each value came from', () => {
  test('default, file with line, environment, command line, build host', () => {
    const r = resolveConfig('suite = "bookworm"\n\npackages = ["vim"]\n', {
      file: 'mkma.toml',
      env: { MKMA_COMPRESSION_LEVEL: '19' },
      defaultHostname: 'buildhost',
    });
    expect(r.origins.suite).toEqual({ from: 'file', file: 'mkma.toml', line: 1 });
    expect(r.origins.packages).toEqual({ from: 'file', file: 'mkma.toml', line: 3 });
    expect(r.origins.compression_level).toEqual({ from: 'environment', variable: 'MKMA_COMPRESSION_LEVEL' });
    expect(r.origins.mirror).toEqual({ from: 'default' });
    expect(r.origins.hostname).toEqual({ from: 'build host' });
    expect(r.config.compressionLevel).toBe(19);
    const byArg = resolveConfig('hostname = "a"\n', { file: 'f', env: {}, hostname: 'b', defaultHostname: 'c' });
    expect([byArg.config.hostname, byArg.origins.hostname]).toEqual(['b', { from: 'command line' }]);
  });
});

describe('findConfigFile: --config, else ./mkma.toml, else /etc/mkma/mkma.toml', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mkma-find-'));
  const system = join(dir, 'etc', 'mkma.toml');
  const cwd = join(dir, 'work');
  mkdirSync(cwd);
  mkdirSync(join(dir, 'etc'));

  test('nothing anywhere: the defaults, and it says where it looked', () => {
    expect(findConfigFile({ cwd, system })).toEqual({ file: null, how: `no mkma.toml here or in ${join(dir, 'etc')}: defaults` });
  });

  test('the system file when the current directory has none', () => {
    writeFileSync(system, 'slim = false\n');
    expect(findConfigFile({ cwd, system })).toEqual({ file: system, how: 'the system configuration' });
  });

  test('./mkma.toml before the system file', () => {
    writeFileSync(join(cwd, 'mkma.toml'), 'slim = true\n');
    expect(findConfigFile({ cwd, system })).toEqual({ file: join(cwd, 'mkma.toml'), how: 'found in the current directory' });
  });

  test('--config before both, even when it does not exist (then loading it fails loudly)', () => {
    expect(findConfigFile({ given: 'other.toml', cwd, system })).toEqual({ file: 'other.toml', how: 'given with --config' });
  });

  test('a directory named mkma.toml is not a configuration file', () => {
    const d2 = join(dir, 'work2');
    mkdirSync(join(d2, 'mkma.toml'), { recursive: true });
    expect(findConfigFile({ cwd: d2, system: join(dir, 'none.toml') }).file).toBeNull();
  });
});

describe('loadConfig', () => {
  test('reads a file and records its path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mkma-config-'));
    const file = join(dir, 'mkma.toml');
    writeFileSync(file, 'packages = ["vim"]\n');
    const c = loadConfig({ file, env: {}, defaultHostname: 'h' });
    expect([c.packages, c.source]).toEqual([['vim'], file]);
  });

  test('a missing file is a ConfigError', () => {
    const e = errorOf(() => loadConfig({ file: '/nonexistent/mkma.toml', env: {}, defaultHostname: 'h' }));
    expect(e.message).toBe('/nonexistent/mkma.toml: cannot read the configuration file: no such file');
    expect(e.file).toBe('/nonexistent/mkma.toml');
  });

  test('no file: defaults', () => {
    expect(loadConfig({ env: {}, defaultHostname: 'buildhost' })).toEqual({ ...DEFAULTS, source: null });
  });
});

describe('configHash', () => {
  const base = parse('packages = ["vim"]\ncomponents = ["main"]');
  const h = configHash(base);

  test('is a sha256 hex digest, stable across key order', () => {
    expect(h).toMatch(/^[0-9a-f]{64}$/);
    const reordered = Object.fromEntries(Object.entries(base).reverse()) as unknown as Config;
    expect(configHash(reordered)).toBe(h);
    expect(configHash(parse('components = ["main"]\npackages = ["vim"]'))).toBe(h);
    const policyReordered = { ...base, rootPassword: { hash: '$y$x', kind: 'hash' as const } };
    expect(configHash(policyReordered)).toBe(configHash({ ...base, rootPassword: { kind: 'hash', hash: '$y$x' } }));
  });

  test('changes with what affects the tree', () => {
    expect(configHash({ ...base, packages: ['vim', 'git'] })).not.toBe(h);
    expect(configHash(base, ['mkma 0.1.0'])).not.toBe(h);
  });

  test('ignores packing, boot, source, and what configure applies on every build', () => {
    // hostname and root password are written by the configure stage, which runs again when
    // they change (builder/stage.ts): a new hostname must not cost a bootstrap
    expect(configHash({ ...base, hostname: 'other' })).toBe(h);
    expect(configHash({ ...base, rootPassword: { kind: 'empty' } })).toBe(h);
    expect(configHash({ ...base, compressionLevel: 19 })).toBe(h);
    expect(configHash({ ...base, ramSize: '4G' })).toBe(h);
    expect(configHash({ ...base, source: '/elsewhere/mkma.toml' })).toBe(h);
  });
});

describe('describeConfig', () => {
  test('snake_case keys, TOML forms', () => {
    const d = describeConfig(parse('root_password = "$6$salt$hash"\npackages = ["vim"]'));
    expect(d).toEqual({
      hostname: 'buildhost',
      suite: 'trixie',
      mirror: 'http://deb.debian.org/debian',
      architecture: 'amd64',
      variant: 'minbase',
      components: ['main'],
      packages: ['vim'],
      kernel_package: 'linux-image-amd64',
      kernel_modules: 'all',
      initramfs_modules: [],
      compression_level: 3,
      root_password: 'a crypt hash (not recorded)',
      slim: true,
      install_mkma: true,
      ram_size: '50%',
      boot_tuning: true,
      base_format: 'cpio',
      source: 'mkma.toml',
    });
    expect(JSON.parse(JSON.stringify(d))).toEqual(d);
    expect(JSON.stringify(d)).not.toContain('$6$');
    expect(describeConfig(parse('root_password = "empty"')).root_password).toBe('empty');
  });
});

describe('renderConfigReference', () => {
  const ref = renderConfigReference();

  test('has a row for every key', () => {
    const lines = ref.trimEnd().split('\n');
    expect(lines[0]).toBe('| Key | Type | Default | Env | Description |');
    expect(lines).toHaveLength(2 + SETTINGS.length);
    for (const s of SETTINGS) expect(ref).toContain(`| \`${s.key}\` |`);
  });

  test('shows types, defaults and env vars', () => {
    expect(ref).toContain(
      '| `compression_level` | integer 1..22 | `3` | `MKMA_COMPRESSION_LEVEL` | zstd level for the base image and layers (higher: smaller, much slower to build); recorded in the image, so `mkma persist` writes its layers at the same level. |',
    );
    expect(ref).toContain("| `hostname` | string | the build host's hostname |  |");
    expect(ref).toContain('| `components` | list of strings | `["main"]` |');
    expect(ref).toContain('| `kernel_modules` | "all" or list of strings | `"all"` |');
  });
});
