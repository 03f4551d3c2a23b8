// Presets for real (root): chroot sessions in a minimal root — a failing script's report and
// nothing left mounted, also when mkma is interrupted — and `mkma build` with two presets where
// the second needs what the first set up, rebuilt from the cache after the second changes.
// Both builds start from the test image's bootstrap when the e2e global setup made one
// (test/helpers/seed-out.ts), and the shipped presets' build is the one presets-boot boots.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parsePresetText } from '../../config/preset.js';
import { mountsUnder } from '../../builder/chroot.js';
import { PresetError, runPreset } from '../../builder/presets.js';
import { MKMA, REPO, TEST_CONFIG, WORK } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';
import { seedFromTestImage } from '../helpers/seed-out.js';
import { baseFile, baseNames, buildShippedPresets, SHIPPED_OUT, SSH_USER } from '../helpers/shipped-presets.js';

const mounted = (dir: string) => mountsUnder(fs.realpathSync(dir));
const stage = { progress: () => {}, step: () => {}, count: () => {}, done: () => 0 };

/** A root with bash and a few coreutils (and their libraries): enough for chroot scripts. */
function minimalRoot(dir: string): void {
  const bins = ['bash', 'sh', 'cat', 'sleep', 'touch', 'ls']
    .map((b) => spawnSync('bash', ['-c', `command -v ${b}`], { encoding: 'utf8' }).stdout.trim())
    .filter((b) => b.startsWith('/'));
  const files = new Set<string>(bins.map((b) => fs.realpathSync(b)));
  for (const b of bins) {
    for (const m of spawnSync('ldd', [b], { encoding: 'utf8' }).stdout.matchAll(/(\/\S+)/g)) files.add(m[1]);
  }
  for (const f of files) {
    const dest = path.join(dir, f);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.copyFileSync(fs.realpathSync(f), dest);
    fs.chmodSync(dest, 0o755);
  }
  for (const b of bins) {
    const dest = path.join(dir, 'bin', path.basename(b));
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    if (!fs.existsSync(dest)) fs.copyFileSync(fs.realpathSync(b), dest);
    fs.chmodSync(dest, 0o755);
  }
  for (const d of ['proc', 'sys', 'dev/pts', 'run', 'etc', 'usr/sbin', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.writeFileSync(path.join(dir, 'etc/resolv.conf'), "# the image's own\n");
}

describe('chroot sessions (minimal root)', () => {
  let tmp: string;
  let root: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-chroot-'));
    root = path.join(tmp, 'root');
    minimalRoot(root);
    fs.mkdirSync(path.join(tmp, 'presets/data'), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'presets/data/greeting'), 'hello\n');
  });
  afterAll(() => {
    expect(mounted(root)).toEqual([]);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const preset = (name: string, text: string, env: NodeJS.ProcessEnv = {}) => {
    const file = path.join(tmp, 'presets', name);
    fs.writeFileSync(file, text);
    const r = parsePresetText(text, file, { env });
    expect(r.problems).toEqual([]);
    return r.preset!;
  };

  const untouched = () => {
    expect(mounted(root)).toEqual([]);
    expect(fs.existsSync(path.join(root, 'usr/sbin/policy-rc.d'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'shared_dirs'))).toBe(false);
    expect(fs.readFileSync(path.join(root, 'etc/resolv.conf'), 'utf8')).toBe("# the image's own\n");
    expect(fs.readdirSync(path.join(root, 'run'))).toEqual([]);
  };

  test('a script sees /proc, its variables, DEBIAN_FRONTEND, policy-rc.d and read-only shared directories', async () => {
    const p = preset(
      '10-ok.toml',
      [
        'environment_variables = ["MKMA_T_VALUE"]',
        'shared_directories = ["data"]',
        "script = '''",
        'exec > /tmp/report 2>&1',
        'echo "value=$MKMA_T_VALUE frontend=$DEBIAN_FRONTEND"',
        'test -r /proc/self/status && echo proc-ok',
        'test -c /dev/null && echo dev-ok',
        '/usr/sbin/policy-rc.d || echo "policy=$?"',
        'cat /shared_dirs/data/greeting',
        'touch /shared_dirs/data/x 2>/dev/null || echo read-only',
        "'''",
      ].join('\n'),
      { MKMA_T_VALUE: 'v1' },
    );
    await expect(runPreset({ root, preset: p, stage, interactive: false, apt: { updated: null } })).resolves.toBe('ran');
    expect(fs.readFileSync(path.join(root, 'tmp/report'), 'utf8')).toBe(
      'value=v1 frontend=noninteractive\nproc-ok\ndev-ok\npolicy=101\nhello\nread-only\n',
    );
    untouched();
  });

  test('a failing script: the error names the preset, the line (also in the TOML file) and the last output; nothing stays mounted', async () => {
    const p = preset(
      '20-fail.toml',
      [
        '# fails at its third line', // 1
        'shared_directories = ["data"]', // 2
        "script = '''", // 3
        'echo preparing', // 4: script line 1
        'echo "step two"', // 5
        'cat /shared_dirs/data/missing', // 6: fails
        'echo never',
        "'''",
      ].join('\n'),
    );
    let err: unknown;
    try {
      await runPreset({ root, preset: p, stage, interactive: false, apt: { updated: null } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PresetError);
    expect((err as Error).message).toBe(
      [
        `preset 20-fail.toml: the script failed at line 3 (${p.file}:6), exit status 1`,
        '  last output:',
        '    preparing',
        '    step two',
        '    cat: /shared_dirs/data/missing: No such file or directory',
      ].join('\n'),
    );
    untouched();
  });

  test('on a terminal: retry, a shell, then skip — and still nothing stays mounted', async () => {
    const p = preset('30-flaky.toml', "script = '''\necho try >> /tmp/tries\nfalse\n'''\n");
    const answers = ['r', 's'];
    const asked: string[] = [];
    const r = await runPreset({
      root,
      preset: p,
      stage,
      interactive: true,
      apt: { updated: null },
      ask: async (q) => {
        asked.push(q);
        return answers.shift()!;
      },
    });
    expect(r).toBe('skipped');
    expect(asked).toHaveLength(2);
    expect(asked[0]).toMatch(/\[r\]etry this step, \[s\]kip this preset, \[o\]pen a shell in the chroot, \[a\]bort/);
    expect(fs.readFileSync(path.join(root, 'tmp/tries'), 'utf8')).toBe('try\ntry\n');
    await expect(runPreset({ root, preset: p, stage, interactive: true, apt: { updated: null }, ask: async () => 'a' })).rejects.toThrow(
      /\(aborted\)/,
    );
    untouched();
  });

  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    test(`interrupted by ${sig} while a script runs: the script is stopped and every mount undone`, async () => {
      // a duration no other program on the machine uses: pgrep below must find only this one
      const nap = `600.${process.pid}`;
      const p = preset(`40-slow-${sig}.toml`, `shared_directories = ["data"]\nscript = '''\necho started\nsleep ${nap}\n'''\n`);
      const driver = path.join(tmp, `driver-${sig}.mjs`);
      fs.writeFileSync(
        driver,
        [
          `import { runPreset } from ${JSON.stringify(path.join(REPO, 'dist/builder/presets.js'))};`,
          `const preset = ${JSON.stringify(p)};`,
          `await runPreset({ root: ${JSON.stringify(root)}, preset, interactive: false, apt: { updated: null },`,
          `  stage: { progress: (l) => console.log(l), done: () => 0 } });`,
        ].join('\n'),
      );
      const child = spawn(process.execPath, [driver], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => d.toString().includes('started') && resolve()));
      expect(mounted(root).length).toBeGreaterThanOrEqual(5);
      child.kill(sig);
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
      expect({ code, signal }).toEqual({ code: null, signal: sig });
      untouched();
      // the script's sleep is gone too
      const sleeping = spawnSync('pgrep', ['-f', `^sleep ${nap.replace('.', '\\.')}$`], { encoding: 'utf8' }).stdout.trim();
      expect(sleeping).toBe('');
    });
  }
});

describe('mkma build --preset', () => {
  const OUT = ownWorkDir('presets-out');
  const SRC = path.join(WORK, 'presets-src');
  const env = { ...process.env, MKMA_QEMU_TEST: '', MKMA_DEMO_VALUE: 'hello' };

  interface Result {
    stages: Array<{ stage: string; status: string; reason?: string }>;
    timings: Record<string, number>;
    cache: { snapshots: number };
  }
  /** the bootstrap and the presets (the stages after them report reuse too, with a reason) */
  const chain = (r: Result) =>
    r.stages.filter((s) => s.stage === 'bootstrap' || s.stage.startsWith('preset ')).map(({ stage, status }) => ({ stage, status }));
  const build = (presets: string[]) => {
    const t0 = Date.now();
    const r = spawnSync(
      process.execPath,
      [MKMA, 'build', '--config', TEST_CONFIG, '--out', OUT, '--json', ...presets.flatMap((p) => ['--preset', p])],
      {
        encoding: 'utf8',
        env,
        timeout: 900_000,
      },
    );
    const seconds = (Date.now() - t0) / 1000;
    return { ...r, seconds, result: r.status === 0 ? (JSON.parse(r.stdout) as Result) : null };
  };
  const fromBase = (file: string) => baseFile(OUT, file);
  const listBase = () => baseNames(OUT);
  const put = (rel: string, text: string, mode = 0o644) => {
    const p = path.join(SRC, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, text);
    fs.chmodSync(p, mode);
  };
  const second = (version: number) =>
    [
      '# needs the group, the configuration file and the package of 10-first.toml',
      'environment_variables = ["MKMA_DEMO_VALUE"]',
      'shared_directories = ["data"]',
      'files = "files-second"',
      'hooks = ["hooks/mark.sh"]',
      'services = { enable = ["mkmademo.service"] }',
      "script = '''",
      'getent group mkmademo >/dev/null || { echo "group mkmademo missing" >&2; exit 1; }',
      "grep -q '^setting=from-first$' /etc/mkmademo.conf",
      'command -v less >/dev/null',
      'id -nG mkmademo-user | grep -qw mkmademo',
      'gid=$(getent group mkmademo | cut -d: -f3)',
      `printf 'value=%s gid=%s data=%s version=${version}\\n' "$MKMA_DEMO_VALUE" "$gid" "$(cat /shared_dirs/data/greeting)" > /etc/mkmademo-marker`,
      "'''",
      '',
      '[[users]]',
      'name = "mkmademo-user"',
      'groups = ["mkmademo"]',
      'password = "locked"',
    ].join('\n') + '\n';

  let seeded = '';
  beforeAll(() => {
    seeded = seedFromTestImage(OUT);
    fs.rmSync(SRC, { recursive: true, force: true });
    put(
      '10-first.toml',
      [
        `# creates what 20-second.toml needs (run ${Date.now()}: this preset runs in every test run)`,
        'packages = ["less"]',
        'files = "files-first"',
        "script = '''",
        'groupadd --system mkmademo',
        'echo "setting=from-first" >> /etc/mkmademo.conf',
        "'''",
      ].join('\n') + '\n',
    );
    put('files-first/etc/mkmademo.conf', '# mkmademo configuration\n');
    put('20-second.toml', second(1));
    put('data/greeting', 'hello from data\n');
    put(
      'files-second/etc/systemd/system/mkmademo.service',
      '[Unit]\nDescription=mkma preset demo\n[Service]\nType=oneshot\nExecStart=/bin/cat /etc/mkmademo-marker\n[Install]\nWantedBy=multi-user.target\n',
    );
    put('hooks/mark.sh', '#!/bin/sh\necho "hook-root=$1" > "$1/etc/mkmademo-hook"\n', 0o755);
    put('fail/99-fail.toml', "# fails on purpose\nscript = '''\necho about to fail\nls /no/such/dir\necho never\n'''\n");
  });
  // (ownWorkDir's removal may have run first: it refuses to delete through a mount itself)
  afterAll(() => expect(fs.existsSync(OUT) ? mounted(OUT) : []).toEqual([]));

  test('lint: the test presets are clean', () => {
    const r = spawnSync(process.execPath, [MKMA, 'lint', '--preset', SRC], { encoding: 'utf8', env });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('ok\n');
    expect(r.status).toBe(0);
  });

  test('a missing environment variable stops the build before anything runs (exit 2)', () => {
    const r = spawnSync(
      process.execPath,
      [MKMA, 'build', '--config', TEST_CONFIG, '--out', path.join(WORK, 'presets-never'), '--preset', SRC],
      {
        encoding: 'utf8',
        env: { ...env, MKMA_DEMO_VALUE: '' },
      },
    );
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('20-second.toml:2: environment variable MKMA_DEMO_VALUE is not set');
    expect(fs.existsSync(path.join(WORK, 'presets-never'))).toBe(false);
  });

  test('two presets in order; a change to the second rebuilds from the cache without bootstrapping', () => {
    const first = build([SRC]);
    expect(first.stderr).not.toMatch(/^mkma: /m);
    expect(first.status).toBe(0);
    const r1 = first.result!;
    expect(chain(r1).slice(1)).toEqual([
      { stage: 'preset 10-first.toml', status: 'ran' },
      { stage: 'preset 20-second.toml', status: 'ran' },
    ]);
    expect(fromBase('etc/mkmademo-marker')).toMatch(/^value=hello gid=\d+ data=hello from data version=1\n$/);
    expect(fromBase('etc/mkmademo.conf')).toBe('# mkmademo configuration\nsetting=from-first\n');
    expect(fromBase('etc/mkmademo-hook')).toBe(`hook-root=${OUT}/chroot\n`);
    expect(fromBase('etc/group')).toMatch(/^mkmademo:x:\d+:mkmademo-user$/m);
    const files = listBase();
    expect(files).toEqual(expect.arrayContaining(['usr/bin/less', 'etc/systemd/system/multi-user.target.wants/mkmademo.service']));
    expect(files.filter((f) => /^(shared_dirs|usr\/sbin\/policy-rc\.d|run\/mkma)/.test(f))).toEqual([]);
    expect(r1.cache.snapshots).toBe(2);

    fs.writeFileSync(path.join(SRC, '20-second.toml'), second(2));
    const again = build([SRC]);
    expect(again.status).toBe(0);
    const r2 = again.result!;
    expect(chain(r2)).toEqual([
      { stage: 'bootstrap', status: 'reused' },
      { stage: 'preset 10-first.toml', status: 'reused' },
      { stage: 'preset 20-second.toml', status: 'ran' },
    ]);
    expect(r2.timings['preset 10-first.toml']).toBeUndefined();
    expect(fromBase('etc/mkmademo-marker')).toMatch(/version=2\n$/);
    process.stderr.write(
      `[presets] first build ${first.seconds.toFixed(1)} s (bootstrap ${chain(r1)[0].status}, OUT ${seeded}), ` +
        `rebuild after changing the last preset ${again.seconds.toFixed(1)} s\n`,
    );

    // unchanged: everything from OUT/chroot as it is
    const same = build([SRC]);
    expect(same.result!.stages.map((s) => s.status)).toEqual(['reused', 'reused', 'reused', 'reused', 'reused', 'reused', 'reused']);
    expect(mounted(OUT)).toEqual([]);
  }, 1_800_000);

  test('a failing preset: exit 1, the preset, its line and last output; nothing mounted; the next build is not fooled', () => {
    const r = spawnSync(
      process.execPath,
      [
        MKMA,
        'build',
        '--config',
        TEST_CONFIG,
        '--out',
        OUT,
        '--preset',
        path.join(SRC, '10-first.toml'),
        '--preset',
        path.join(SRC, 'fail'),
      ],
      {
        encoding: 'utf8',
        env,
        timeout: 900_000,
      },
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(
      `mkma: preset 99-fail.toml: the script failed at line 2 (${path.join(SRC, 'fail/99-fail.toml')}:4), exit status 2\n  last output:\n    about to fail\n    ls: cannot access '/no/such/dir': No such file or directory\n`,
    );
    expect(mounted(OUT)).toEqual([]);
    // the tree is marked unknown: without presets, the build starts from the bootstrapped tree again
    const plain = spawnSync(process.execPath, [MKMA, 'build', '--config', TEST_CONFIG, '--out', OUT, '--json'], {
      encoding: 'utf8',
      env,
      timeout: 900_000,
    });
    expect(plain.status).toBe(0);
    expect(chain(JSON.parse(plain.stdout) as Result)).toEqual([{ stage: 'bootstrap', status: 'reused' }]);
    expect(listBase().filter((f) => f.includes('mkmademo'))).toEqual([]);
  }, 1_800_000);

  test('the shipped console and ssh-server presets: no SSH host keys in the base, a unit that makes them on first boot', () => {
    const b = buildShippedPresets();
    expect(b.stderr).not.toMatch(/^mkma: /m);
    expect(b.status).toBe(0);
    process.stderr.write(`[presets] console + ssh-server: ${b.seconds.toFixed(1)} s (${b.seeded}; bootstrap ${b.stages[0].status})\n`);
    // --no-snapshots: no copy of the tree was kept between the presets
    expect(b.cache).toEqual({ snapshots: 0, bytes: 0 });
    expect(
      fs.existsSync(path.join(SHIPPED_OUT, '.cache/snapshots')) ? fs.readdirSync(path.join(SHIPPED_OUT, '.cache/snapshots')) : [],
    ).toEqual([]);
    const files = baseNames(SHIPPED_OUT);
    // openssh-server's installation made keys in the chroot; none may reach the image
    expect(files.filter((f) => /^etc\/ssh\/ssh_host_/.test(f))).toEqual([]);
    expect(files).toEqual(
      expect.arrayContaining([
        'usr/sbin/sshd',
        'etc/systemd/system/mkma-ssh-host-keys.service',
        'etc/systemd/system/ssh.service.wants/mkma-ssh-host-keys.service',
        `home/${SSH_USER}/.ssh/authorized_keys`,
        'usr/bin/vim.tiny',
      ]),
    );
    expect(baseFile(SHIPPED_OUT, `home/${SSH_USER}/.ssh/authorized_keys`)).toBe(`${b.publicKey}\n`);
    const unit = baseFile(SHIPPED_OUT, 'etc/systemd/system/mkma-ssh-host-keys.service');
    expect(unit).toMatch(/^Before=ssh\.service/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/ssh-keygen -A$/m);
    // the image's own systemd finds nothing wrong with it
    const verify = spawnSync(
      'chroot',
      [path.join(SHIPPED_OUT, 'chroot'), 'systemd-analyze', 'verify', '--man=no', 'mkma-ssh-host-keys.service'],
      {
        encoding: 'utf8',
      },
    );
    expect(verify.stderr.split('\n').filter((l) => l.includes('mkma-ssh-host-keys'))).toEqual([]);
    expect(verify.status).toBe(0);
  }, 1_800_000);
});
