// Bad input gets a clear error, a meaningful exit status, and nothing is lost: each case
// fails before touching the previous outputs.
import { beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MKMA } from '../helpers/paths.js';

function mkma(args: string[], opts: { env?: NodeJS.ProcessEnv; user?: string } = {}): SpawnSyncReturns<string> {
  const env = { ...process.env, MKMA_QEMU_TEST: '', ...opts.env };
  if (opts.user) return spawnSync('runuser', ['-u', opts.user, '--', process.execPath, MKMA, ...args], { encoding: 'utf8', env });
  return spawnSync(process.execPath, [MKMA, ...args], { encoding: 'utf8', env, timeout: 300_000 });
}

describe('mkma build refuses bad input', () => {
  let tmp: string;
  let out: string;
  const previous = 'previous good base image';

  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-errors-'));
    out = path.join(tmp, 'out');
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'base.cpio.zst'), previous);
  });

  const untouched = () => expect(fs.readFileSync(path.join(out, 'base.cpio.zst'), 'utf8')).toBe(previous);

  test('--help answers and exits 0; an unknown command or option exits 2', () => {
    const help = mkma(['build', '--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Usage: sudo mkma build \[HOSTNAME\]/);
    expect(help.stdout).toMatch(/--install-deps/);
    expect(mkma(['--help']).stdout).toMatch(/Commands:/);
    const bad = mkma(['frobnicate']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/unknown command "frobnicate"/);
    const opt = mkma(['build', '--frob']);
    expect(opt.status).toBe(2);
    expect(opt.stderr).toMatch(/--frob/);
  });

  test('not root: exit 3 and says to use sudo', () => {
    const r = mkma(['build', '--out', out], { user: 'nobody' });
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/must run as root.*sudo/);
    untouched();
  });

  test('missing host tools: exit 3, names the Debian packages and --install-deps', () => {
    const bin = path.join(tmp, 'bin');
    fs.mkdirSync(bin, { recursive: true });
    const r = mkma(['build', '--out', out], { env: { PATH: bin } });
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/missing host tools: mmdebstrap/);
    expect(r.stderr).toMatch(/apt-get install mmdebstrap zstd attr/);
    expect(r.stderr).toMatch(/--install-deps/);
    untouched();
  });

  test('config errors: unknown key, wrong type, bad TOML — file, key and line; exit 2', () => {
    const cfg = path.join(tmp, 'mkma.toml');
    fs.writeFileSync(cfg, 'suite = "trixie"\n\ncompresion_level = 5\n');
    let r = mkma(['build', '--config', cfg, '--out', out]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`${cfg}:3: key "compresion_level" is unknown (did you mean "compression_level"?)`);
    fs.writeFileSync(cfg, 'packages = 3\n');
    r = mkma(['build', '--config', cfg, '--out', out]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/mkma\.toml:1: packages must be a list of strings, got integer/);
    fs.writeFileSync(cfg, 'suite = "trixie\n');
    r = mkma(['build', '--config', cfg, '--out', out]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/mkma\.toml:1(:\d+)?: invalid TOML/);
    r = mkma(['build', '--config', path.join(tmp, 'nope.toml'), '--out', out]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/nope\.toml/);
    r = mkma(['build', '--out', out], { env: { MKMA_COMPRESSION_LEVEL: 'fast' } });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/MKMA_COMPRESSION_LEVEL/);
    untouched();
  });

  test('an output directory that is not writable or lacks space: exit 1 before doing anything', () => {
    let r = mkma(['build', '--out', '/proc/mkma-out']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/output directory \/proc\/mkma-out is not writable/);
    const ro = path.join(tmp, 'ro');
    fs.mkdirSync(ro);
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1g', 'tmpfs', ro]).status).toBe(0);
    try {
      r = mkma(['build', '--out', ro]);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`output directory ${ro} is not writable (EROFS)`);
    } finally {
      spawnSync('umount', [ro]);
    }
    const small = path.join(tmp, 'small');
    fs.mkdirSync(small);
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', small]).status).toBe(0);
    try {
      r = mkma(['build', '--out', small]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/has \d+(\.\d)? MiB free; this build needs about 2\.0 GiB/);
      expect(fs.readdirSync(small)).toEqual([]);
    } finally {
      spawnSync('umount', [small]);
    }
  });

  test("an unknown package: mmdebstrap's reason, shortened; previous outputs untouched", () => {
    const cfg = path.join(tmp, 'badpkg.toml');
    fs.writeFileSync(cfg, 'packages = ["mkma-no-such-package"]\n');
    const r = mkma(['build', '--config', cfg, '--out', out]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/mmdebstrap failed:\n\s+E: Unable to locate package mkma-no-such-package/);
    expect(r.stderr).toMatch(/check the package names/);
    // short: the reason, the last 8 lines of mmdebstrap's output and where the full log is —
    // not its whole output (which is in the log)
    expect(r.stderr).toMatch(/last lines of its output:/);
    expect(r.stderr).toMatch(/full log: \S+00-bootstrap\.log/);
    expect(r.stderr.split('\n').length).toBeLessThan(32);
    untouched();
    expect(fs.existsSync(path.join(out, 'chroot.new'))).toBe(false);
    expect(fs.readdirSync(out).filter((n) => n.startsWith('.staging'))).toEqual([]);
  }, 300_000);

  test('an unreachable mirror: the reason and a hint; exit 1', () => {
    const cfg = path.join(tmp, 'badmirror.toml');
    fs.writeFileSync(cfg, 'mirror = "http://127.0.0.1:9/debian"\n');
    const r = mkma(['build', '--config', cfg, '--out', out]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/mmdebstrap failed:/);
    expect(r.stderr).toMatch(/check `mirror` and `suite`/);
    untouched();
  }, 300_000);
});
