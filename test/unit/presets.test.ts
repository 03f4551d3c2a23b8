// Presets: parsing, validation messages, ordering, environment variables, hashing, the cache
// chain, lint findings mapped to TOML lines, and the script failure report.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ConfigError } from '../../config/load.js';
import { checkPresets, expandPresetPaths, loadPresets, parsePresetText, type Preset } from '../../config/preset.js';
import { chainKeys, planFrom } from '../../builder/snapshots.js';
import { copyTreeInto } from '../../builder/chroot.js';
import { hostPathInRoot } from '../../builder/root-path.js';
import { describeFailure, errorLine, ERROR_MARK, presetHash, scriptCommand, userCommands } from '../../builder/presets.js';
import { formatFinding, lint, mapShellcheck } from '../../config/lint.js';
import { REPO } from '../helpers/paths.js';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-presets-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const parse = (text: string, env: NodeJS.ProcessEnv = {}) => parsePresetText(text, 'p.toml', { env, checkFiles: false });
const messages = (text: string, env: NodeJS.ProcessEnv = {}) => parse(text, env).problems.map((e) => e.message);

function write(rel: string, text: string, mode?: number): string {
  const p = path.join(tmp, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, text);
  if (mode !== undefined) fs.chmodSync(p, mode);
  return p;
}

describe('parsing', () => {
  test('every key, with the script line mapped to the TOML file', () => {
    const text = [
      '# demo', // 1
      'packages = ["less", "openssh-server"]', // 2
      'environment_variables = ["DEMO_USER"]', // 3
      "script = '''", // 4
      'echo one', // 5: script line 1
      'echo two', // 6
      "'''",
      'shared_directories = ["data"]',
      'files = "rootfs"',
      'hooks = ["hooks/post.sh"]',
      'services = { enable = ["ssh.service"], mask = ["apt-daily.timer"] }',
      '',
      '[[users]]',
      'name = "${DEMO_USER}"',
      'groups = ["adm"]',
      'sudo = true',
      '',
      '[[users]]',
      'name = "guest"',
      'password = "empty"',
    ].join('\n');
    const { preset, problems } = parse(text, { DEMO_USER: 'alice' });
    expect(problems).toEqual([]);
    const p = preset!;
    expect(p.packages).toEqual(['less', 'openssh-server', 'sudo']); // sudo = true brings sudo
    expect(p.script).toBe('echo one\necho two\n');
    expect(p.scriptLine).toBe(5);
    expect(p.sharedDirectories).toEqual(['data']);
    expect(p.files).toBe(path.resolve('rootfs'));
    expect(p.hooks).toEqual([path.resolve('hooks/post.sh')]);
    expect(p.env).toEqual({ DEMO_USER: 'alice' });
    expect(p.services).toEqual({ enable: ['ssh.service'], disable: [], mask: ['apt-daily.timer'] });
    expect(p.users).toEqual([
      { name: 'alice', groups: ['adm'], sudo: true, password: { kind: 'locked' } },
      { name: 'guest', groups: [], sudo: false, password: { kind: 'empty' } },
    ]);
  });

  test('a script on the key line starts there; an empty preset is valid', () => {
    expect(parse('\nscript = "echo hi"\n').preset!.scriptLine).toBe(2);
    expect(parse('script = """echo hi\necho there"""\n').preset!.scriptLine).toBe(1);
    expect(parse('').problems).toEqual([]);
  });

  test('lines inside a script are not mistaken for keys', () => {
    const text = "script = '''\npackages = 3\n'''\npakages = []\n";
    expect(messages(text)).toEqual(['p.toml:4: key "pakages" is unknown (did you mean "packages"?)']);
  });
});

describe('validation messages', () => {
  test('unknown keys, with a suggestion when one is near', () => {
    expect(messages('pakages = ["less"]\n')).toEqual(['p.toml:1: key "pakages" is unknown (did you mean "packages"?)']);
    expect(messages('\n\nfrobnicate = 1\n')).toEqual(['p.toml:3: key "frobnicate" is unknown']);
    expect(messages('[services]\nstart = ["x.service"]\n')).toEqual(['p.toml:2: services: key "start" is unknown']);
    expect(messages('[[users]]\nname = "a"\nsudoo = true\n')).toEqual([
      'p.toml:3: users[1]: key "sudoo" is unknown (did you mean "sudo"?)',
    ]);
  });

  test('wrong types and values', () => {
    expect(messages('packages = 3\n')).toEqual(['p.toml:1: packages must be a list of strings, got integer']);
    expect(messages('packages = ["Less"]\n')).toEqual([
      'p.toml:1: packages: "Less" is not a valid Debian package name (lowercase letters, digits, "+", "-", "."; at least 2 characters, starting with a letter or digit)',
    ]);
    expect(messages('script = ["echo"]\n')).toEqual(['p.toml:1: script must be a string, got list of strings']);
    expect(messages('shared_directories = ["../etc"]\n')).toEqual([
      'p.toml:1: shared_directories: "../etc" must be the name of a folder next to the preset (letters, digits, ".", "_", "-"; no "/")',
    ]);
    expect(messages('environment_variables = ["1X"]\n')).toEqual([
      'p.toml:1: environment_variables: "1X" is not a valid environment variable name (letters, digits and "_", not starting with a digit)',
    ]);
    expect(messages('services = ["ssh"]\n')).toEqual([
      'p.toml:1: services must be a table (enable = [...], disable = [...], mask = [...]), got list of strings',
    ]);
    expect(messages('[services]\nenable = "ssh"\n')).toEqual(['p.toml:2: services.enable must be a list of strings, got string']);
    expect(messages('users = "me"\n')).toEqual([
      'p.toml:1: users must be an array of tables ([[users]] with name, groups, sudo, password), got string',
    ]);
    expect(messages('[[users]]\nname = "a"\nsudo = "yes"\n')).toEqual(['p.toml:3: users[1].sudo must be true or false, got string']);
    expect(messages('[[users]]\ngroups = ["adm"]\n')).toEqual(['p.toml:1: users[1].name is required']);
    expect(messages('[[users]]\nname = "Bad Name"\n')).toEqual([
      'p.toml:2: users[1].name: "Bad Name" is not a valid user name (lowercase letters, digits, "_" and "-", starting with a letter or "_", at most 32)',
    ]);
    expect(messages('[[users]]\nname = "a"\npassword = "hunter2"\n')).toEqual([
      'p.toml:3: users[1].password must be "locked", "empty" or a crypt hash starting with "$" (make one with `mkpasswd -m yescrypt`; a clear-text password is not accepted)',
    ]);
    expect(messages('[[users]]\nname = "${WHO}"\n')).toEqual([
      'p.toml:2: users[1].name uses ${WHO}, which is not in environment_variables',
    ]);
  });

  test('bad TOML: line and column', () => {
    expect(messages('packages = ["less"\n')[0]).toMatch(/^p\.toml:\d+:\d+: invalid TOML: /);
  });

  test('several problems are all reported, in line order; errors are ConfigErrors', () => {
    const r = parse('frob = 1\npackages = 3\n');
    expect(r.problems.map((e) => e.line)).toEqual([1, 2]);
    expect(r.problems[0]).toBeInstanceOf(ConfigError);
  });
});

describe('environment variables', () => {
  test('a declared variable that is not set (or empty) is an error naming it', () => {
    const text = 'environment_variables = ["MKMA_A", "MKMA_B"]\n';
    expect(messages(text, { MKMA_A: 'x', MKMA_B: '' })).toEqual([
      'p.toml:1: environment variable MKMA_B is not set (this preset needs it: export it; with sudo, keep it with sudo --preserve-env=MKMA_B)',
    ]);
    expect(parse(text, { MKMA_A: 'x', MKMA_B: 'y', OTHER: 'z' }).preset!.env).toEqual({ MKMA_A: 'x', MKMA_B: 'y' });
  });

  test('loadPresets throws the first problem before anything runs', () => {
    const f = write('env/10-needs.toml', 'environment_variables = ["MKMA_TEST_UNSET_VAR"]\n');
    expect(() => loadPresets([f], {})).toThrow(/10-needs\.toml:1: environment variable MKMA_TEST_UNSET_VAR is not set/);
    expect(loadPresets([f], { MKMA_TEST_UNSET_VAR: '1' })[0].env).toEqual({ MKMA_TEST_UNSET_VAR: '1' });
  });
});

describe('ordering', () => {
  test('a directory means its *.toml files in order of file name; arguments keep their order', () => {
    for (const n of ['20-b.toml', '10-a.toml', '9-c.toml', 'README.md', '15-x.toml.orig']) write(`order/${n}`, '');
    fs.mkdirSync(path.join(tmp, 'order/30-dir.toml'), { recursive: true }); // not a file: ignored
    const single = write('single.toml', '');
    const names = expandPresetPaths([path.join(tmp, 'order'), single]).map((f) => path.relative(tmp, f));
    expect(names).toEqual(['order/10-a.toml', 'order/20-b.toml', 'order/9-c.toml', 'single.toml']);
    expect(expandPresetPaths([single, path.join(tmp, 'order')])[0]).toBe(single);
  });

  test('a missing path or a directory without presets is an error', () => {
    expect(() => expandPresetPaths([path.join(tmp, 'nope')])).toThrow(/nope: cannot read the preset: no such file or directory/);
    fs.mkdirSync(path.join(tmp, 'empty'), { recursive: true });
    expect(() => expandPresetPaths([path.join(tmp, 'empty')])).toThrow(/empty: no \*\.toml presets in this directory/);
  });

  test('presets with the same file name in two collections are told apart', () => {
    write('c1/10-base.toml', '');
    write('c2/10-base.toml', '');
    const ps = loadPresets([path.join(tmp, 'c1'), path.join(tmp, 'c2')], {});
    expect(ps.map((p) => p.name)).toEqual(['c1/10-base.toml', 'c2/10-base.toml']);
    expect(loadPresets([path.join(tmp, 'c1')], {})[0].name).toBe('10-base.toml');
  });
});

describe('folders and hooks on disk', () => {
  test('missing shared directories and files folders, hooks missing or not executable', () => {
    const f = write(
      'disk/p.toml',
      [
        'shared_directories = ["data", "missing"]',
        'files = "rootfs"',
        'hooks = ["hooks/ok.sh", "hooks/noexec.sh", "hooks/absent.sh"]',
      ].join('\n'),
    );
    fs.mkdirSync(path.join(tmp, 'disk/data'), { recursive: true });
    write('disk/hooks/ok.sh', '#!/bin/sh\n', 0o755);
    write('disk/hooks/noexec.sh', '#!/bin/sh\n', 0o644);
    const dir = path.join(tmp, 'disk');
    const { problems } = checkPresets([f], { env: {} });
    const rel = path.relative(process.cwd(), f);
    const shown = rel.startsWith('..') ? f : rel;
    expect(problems.map((e) => e.message)).toEqual([
      `${shown}:1: shared_directories: "missing" is not a directory next to the preset (${dir}/missing)`,
      `${shown}:2: files: "rootfs" is not a directory (${dir}/rootfs)`,
      `${shown}:3: hooks: "hooks/noexec.sh" is not executable (chmod +x ${dir}/hooks/noexec.sh)`,
      `${shown}:3: hooks: "hooks/absent.sh" does not exist (${dir}/hooks/absent.sh)`,
    ]);
  });
});

describe('hashing and the cache chain', () => {
  test("a preset's hash follows its file, its variables' values and its folders' contents", () => {
    const f = write('hash/p.toml', 'environment_variables = ["V"]\nshared_directories = ["data"]\nfiles = "root"\n');
    write('hash/data/a', 'one');
    write('hash/root/etc/x', 'x');
    const load = (env: NodeJS.ProcessEnv) => loadPresets([f], env)[0];
    const h1 = presetHash(load({ V: '1' }));
    expect(presetHash(load({ V: '1' }))).toBe(h1);
    expect(presetHash(load({ V: '2' }))).not.toBe(h1);
    write('hash/data/a', 'two');
    const h2 = presetHash(load({ V: '1' }));
    expect(h2).not.toBe(h1);
    fs.chmodSync(path.join(tmp, 'hash/root/etc/x'), 0o600);
    expect(presetHash(load({ V: '1' }))).not.toBe(h2);
  });

  test('chain keys depend on everything before them; the plan takes the latest available state', () => {
    const a = chainKeys('cfg', ['p1', 'p2', 'p3']);
    const b = chainKeys('cfg', ['p1', 'p2', 'p3-changed']);
    const c = chainKeys('cfg', ['p1-changed', 'p2', 'p3']);
    expect(a).toHaveLength(4);
    expect(a[0]).toBe('cfg');
    expect(b.slice(0, 3)).toEqual(a.slice(0, 3));
    expect(b[3]).not.toBe(a[3]);
    expect(c[2]).not.toBe(a[2]); // preset 2 unchanged, but after a changed preset 1
    const snaps = new Set(a.slice(0, 3)); // before each preset of the last build
    // unchanged: OUT/chroot itself
    expect(planFrom(a, a[3], (k) => snaps.has(k))).toEqual({ start: 3, from: 'in-place' });
    // last preset changed: the snapshot before it
    expect(planFrom(b, a[3], (k) => snaps.has(k))).toEqual({ start: 2, from: 'snapshot' });
    // first preset changed: the bootstrapped tree
    expect(planFrom(c, a[3], (k) => snaps.has(k))).toEqual({ start: 0, from: 'snapshot' });
    // an interrupted build (state unknown) restarts from the latest snapshot
    expect(planFrom(a, null, (k) => snaps.has(k))).toEqual({ start: 2, from: 'snapshot' });
    // another configuration: bootstrap
    expect(planFrom(chainKeys('other', ['p1']), a[3], (k) => snaps.has(k))).toEqual({ start: -1, from: null });
  });
});

describe('lint', () => {
  test("shellcheck's findings are mapped to the script's lines in the TOML file", () => {
    const out = '-:2:6: warning: Double quote to prevent globbing and word splitting. [SC2086]\n';
    expect(mapShellcheck(out, { file: 'x.toml', scriptLine: 7 })).toEqual([
      { file: 'x.toml', line: 8, column: 6, message: 'script: warning: Double quote to prevent globbing and word splitting. [SC2086]' },
    ]);
  });

  test('a preset with a shellcheck warning and a bad key: every finding with file and line', () => {
    const f = write(
      'lint/10-bad.toml',
      [
        '# a preset with problems', // 1
        'pakages = ["less"]', // 2
        "script = '''", // 3
        'echo start', // 4: script line 1
        'cp /etc/hostname $(cat /tmp/dest)', // 5: SC2046 here
        "'''",
      ].join('\n') + '\n',
    );
    const shown = path.relative(process.cwd(), f).startsWith('..') ? f : path.relative(process.cwd(), f);
    const findings = lint([f], undefined, {}).map(formatFinding);
    expect(findings[0]).toBe(`${shown}:2: key "pakages" is unknown (did you mean "packages"?)`);
    expect(findings.slice(1)).toEqual([`${shown}:5:18: script: warning: Quote this to prevent word splitting. [SC2046]`]);
  });

  test('the shipped presets are clean (with their variables set)', () => {
    const env = {
      MKMA_SSH_USER: 'me',
      MKMA_SSH_KEY: 'ssh-ed25519 AAAA me@host',
      MKMA_DESKTOP_USER: 'me',
      MKMA_DESKTOP_PASSWORD: '$y$j9T$salt$hash',
    };
    const dirs = ['console', 'ssh-server', 'desktop'].map((d) => path.join(REPO, 'presets', d));
    expect(lint(dirs, undefined, env).map(formatFinding)).toEqual([]);
    expect(lint(dirs, undefined, {}).map((f) => f.message)).toEqual([
      expect.stringMatching(/MKMA_SSH_USER is not set/),
      expect.stringMatching(/MKMA_SSH_KEY is not set/),
      expect.stringMatching(/MKMA_DESKTOP_USER is not set/),
      expect.stringMatching(/MKMA_DESKTOP_PASSWORD is not set/),
    ]);
  });
});

describe('running scripts', () => {
  test('bash -e with the ERR trap reports the failing line, also inside a function', () => {
    const script = write('run/s.sh', 'echo one\nf() {\n  echo in f\n  false\n}\nf\necho never\n');
    const [bash, ...args] = scriptCommand(script);
    const r = spawnSync(bash, args, { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout).not.toMatch(/never/);
    expect(errorLine(r.stderr.split('\n'))).toBe(4);
    const ok = write('run/ok.sh', 'true\n');
    expect(spawnSync(bash, scriptCommand(ok).slice(1)).status).toBe(0);
  });

  test('the failure report names the preset, the script line and its TOML line, and the last output', () => {
    const p = { name: '20-ssh.toml', file: '/p/20-ssh.toml', scriptLine: 8 } as Preset;
    const tail = Array.from({ length: 14 }, (_, i) => `line ${i + 1}`);
    const msg = describeFailure(
      p,
      { step: 'script', what: 'the script', code: 1, signal: null, scriptLine: 3, tail },
      '/out/.cache/logs/02-20-ssh.toml.log',
    );
    expect(msg).toBe(
      [
        'preset 20-ssh.toml: the script failed at line 3 (/p/20-ssh.toml:10), exit status 1',
        '  last output:',
        ...tail.slice(-10).map((l) => `    ${l}`),
        '  full log: /out/.cache/logs/02-20-ssh.toml.log',
      ].join('\n'),
    );
    expect(
      describeFailure(p, {
        step: 'packages',
        what: 'apt-get install nope',
        code: 100,
        signal: null,
        scriptLine: null,
        tail: ['E: Unable to locate package nope'],
      }),
    ).toBe('preset 20-ssh.toml: apt-get install nope failed (exit status 100)\n  last output:\n    E: Unable to locate package nope');
    expect(errorLine(['x', `${ERROR_MARK}7`, `${ERROR_MARK}9`])).toBe(7);
  });

  test('user commands: create or update, sudo group, password field', () => {
    expect(userCommands({ name: 'al', groups: ['adm'], sudo: true, password: { kind: 'locked' } }, false)).toEqual([
      ['useradd', '--create-home', '--shell', '/bin/bash', '--groups', 'adm,sudo', 'al'],
      ['usermod', '-p', '!', 'al'],
    ]);
    expect(userCommands({ name: 'al', groups: [], sudo: false, password: { kind: 'hash', hash: '$y$x' } }, true)).toEqual([
      ['usermod', '-p', '$y$x', 'al'],
    ]);
  });
});

describe('copying a files folder into an image', () => {
  test("directories are resolved as the image sees them; files and links replace what's there", () => {
    const root = path.join(tmp, 'img');
    fs.mkdirSync(path.join(root, 'usr/lib/systemd'), { recursive: true });
    fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
    fs.symlinkSync('usr/lib', path.join(root, 'lib'));
    fs.symlinkSync('/usr/lib/systemd', path.join(root, 'etc/sd')); // absolute: inside the image
    fs.symlinkSync('/etc/hostname', path.join(root, 'etc/mtab')); // would point at the host's
    const src = path.join(tmp, 'files');
    write('files/lib/systemd/system/x.service', '[Unit]\n');
    write('files/etc/sd/y.conf', 'y');
    write('files/etc/mtab', 'mine', 0o600);
    fs.symlinkSync('x.service', path.join(src, 'lib/systemd/system/alias.service'));
    expect(copyTreeInto(src, root)).toBe(4);
    expect(fs.readFileSync(path.join(root, 'usr/lib/systemd/system/x.service'), 'utf8')).toBe('[Unit]\n');
    expect(fs.readFileSync(path.join(root, 'usr/lib/systemd/y.conf'), 'utf8')).toBe('y');
    expect(fs.lstatSync(path.join(root, 'etc/mtab')).isFile()).toBe(true);
    expect(fs.statSync(path.join(root, 'etc/mtab')).mode & 0o777).toBe(0o600);
    expect(fs.readlinkSync(path.join(root, 'usr/lib/systemd/system/alias.service'))).toBe('x.service');
    expect(hostPathInRoot(root, 'etc/sd/../../etc')).toBe(path.join(root, 'usr/etc'));
    expect(hostPathInRoot(root, '../../..')).toBe(root);
  });
});
