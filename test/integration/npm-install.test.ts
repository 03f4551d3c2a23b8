// mkma as a user installs it: `npm pack`, then `npm install -g` of the tarball into a scratch
// prefix, and from there the commands and the packaged files `mkma build` needs (the init
// templates, mkma-unpack's C source, the presets, the default rules, mkma's own copy into the
// image). npm runs with --prefer-offline: the dependencies' tarballs come from the cache that
// `npm ci` filled; their metadata (not cached by `npm ci`, which reads the lock file) from the
// registry, which is reachable here and in CI. (--offline fails with ENOTCACHED for that
// reason.) The pack skips scripts: the test scripts build dist/ first (`npm run build:test`).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO } from '../helpers/paths.js';

let tmp: string;
let prefix: string;
let installed: string;
let tarball: string;

const run = (cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> =>
  spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, env: { ...process.env, ...opts.env }, timeout: 300_000 });
const mkma = (args: string[]) => run(path.join(prefix, 'bin/mkma'), args, { cwd: tmp });

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-npm-'));
  prefix = path.join(tmp, 'prefix');
  const pack = run('npm', ['pack', '--ignore-scripts', '--silent', '--pack-destination', tmp], { cwd: REPO });
  expect(pack.stderr).toBe('');
  tarball = path.join(tmp, pack.stdout.trim());
  const install = run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball]);
  if (install.status !== 0) throw new Error(`npm install -g ${tarball} failed:\n${install.stdout}${install.stderr}`);
  installed = path.join(prefix, 'lib/node_modules/mkma');
}, 300_000);
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('npm pack, npm install -g --prefix DIR', () => {
  test('the tarball holds the code, the boot templates, the C extractor, the presets and the man pages; no sources or tests', () => {
    const list = run('tar', ['-tzf', tarball]).stdout.split('\n');
    const files = list.filter(Boolean).map((f) => f.replace(/^package\//, ''));
    expect(files).toEqual(
      expect.arrayContaining([
        'bin/mkma.js',
        'dist/cli/main.js',
        'init/templates/main.sh',
        'init/unpack/mkma-unpack.c',
        'persist/default.rules',
        'presets/console/10-settings.toml',
        'presets/ssh-server/files/etc/systemd/system/mkma-ssh-host-keys.service',
        'presets/desktop/30-user.toml',
        'man/mkma.1',
        'man/mkma.toml.5',
        'mkma.example.toml',
      ]),
    );
    expect(files.filter((f) => /^(test|bench)\/|^dist\/(test|bench)\/|\.ts$|\.map$/.test(f) && !f.endsWith('.d.ts'))).toEqual([]);
  });

  test('`mkma --help` and `mkma lint --preset NAME` (a shipped preset, by name) run from the prefix', () => {
    const help = mkma(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: mkma <command>/m);
    // the variables the shipped presets take from the environment
    const env = {
      MKMA_SSH_USER: 'me',
      MKMA_SSH_KEY: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF5m8Jr5yf0E1C1cV2Jb8p6fS2m4eR8o0bJm3x2uQpQK me@host',
      MKMA_DESKTOP_USER: 'me',
      MKMA_DESKTOP_PASSWORD: 'locked',
    };
    const lint = run(path.join(prefix, 'bin/mkma'), ['lint', '--preset', 'console', '--preset', 'ssh-server', '--preset', 'desktop'], {
      cwd: tmp,
      env,
    });
    expect({ stdout: lint.stdout, stderr: lint.stderr, status: lint.status }).toEqual({ stdout: 'ok\n', stderr: '', status: 0 });
    const missing = mkma(['lint', '--preset', 'consol']);
    expect(missing.status).toBe(1);
    expect(missing.stdout).toContain("mkma's own presets: console, desktop, ssh-server");
  });

  test('what `mkma build` takes from the package works there: the init, mkma-unpack compiled from its C source, mkma copied into an image', () => {
    const chroot = path.join(tmp, 'chroot');
    const script = [
      `import { generateInit, templatesDir } from '${installed}/dist/init/generate.js';`,
      `import { buildUnpacker, unpackerSource } from '${installed}/dist/builder/unpacker.js';`,
      `import { installMkma } from '${installed}/dist/builder/configure.js';`,
      `import { defaultRulesPath } from '${installed}/dist/persist/rules.js';`,
      `const init = generateInit({ modules: { storage: [], filesystems: {}, overlay: [] }, defaultRamSize: '50%', deviceTimeoutSec: 30, version: 'x' });`,
      `const unpacker = buildUnpacker({ cacheDir: '${tmp}/unpacker' });`,
      `const copied = installMkma('${chroot}');`,
      `console.log(JSON.stringify({ templates: templatesDir(), source: unpackerSource(), rules: defaultRulesPath(), init: init.length, unpacker, copied }));`,
    ].join('\n');
    const r = run(process.execPath, ['--input-type=module', '-e', script], { cwd: tmp });
    expect(r.stderr).toBe('');
    const o = JSON.parse(r.stdout) as {
      templates: string;
      source: string;
      rules: string;
      init: number;
      unpacker: { path: string | null; reason?: string };
      copied: { bytes: number };
    };
    expect(o.templates).toBe(path.join(installed, 'init/templates'));
    expect(o.source).toBe(path.join(installed, 'init/unpack/mkma-unpack.c'));
    expect(o.rules).toBe(path.join(installed, 'persist/default.rules'));
    expect(o.init).toBeGreaterThan(1000);
    expect(o.unpacker.reason).toBeUndefined();
    expect(fs.statSync(o.unpacker.path!).mode & 0o111).toBeTruthy();
    // mkma's copy in the image (its production dependencies from the prefix) runs on its own
    expect(o.copied.bytes).toBeGreaterThan(1 << 20);
    const inImage = run(process.execPath, [path.join(chroot, 'usr/lib/mkma/app/bin/mkma.js'), 'persist', '--help']);
    expect(inImage.status).toBe(0);
    expect(inImage.stdout).toMatch(/^Usage: sudo mkma persist/m);
  });

  test('`npm link` in the checkout: mkma on the PATH runs the checkout', () => {
    const links = path.join(tmp, 'links');
    // npm link takes the global prefix from the configuration (--prefix would name the package)
    const link = run('npm', ['link', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: REPO, env: { NPM_CONFIG_PREFIX: links } });
    expect(link.status).toBe(0);
    expect(fs.realpathSync(path.join(links, 'bin/mkma'))).toBe(path.join(fs.realpathSync(REPO), 'bin/mkma.js'));
    const help = run(path.join(links, 'bin/mkma'), ['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: mkma <command>/m);
  });
});
