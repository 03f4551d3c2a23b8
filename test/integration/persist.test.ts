// `mkma persist` end to end on a real overlay: a base image unpacked as the lower tree, changes
// made through the merged view, the CLI writing a layer, and base + layer applied again with
// unpackImages: the result must be the merged view (minus what the rules left out), path by
// path — type, mode, owner, content, symlink target, xattrs, hardlinks, file mtimes.
// Also: --dry-run (text and --json), no terminal without --yes, the lock, the storage device.
// Runs as root (mounts, mknod, chown, setcap).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { unpackImages } from '../../format/apply.js';
import { packTree } from '../../format/pack.js';
import { readManifest } from '../../format/reader.js';
import { scanUpper } from '../../persist/scan.js';
import { savedRecordPath } from '../../persist/saved.js';
import { resolveTarget } from '../../persist/storage.js';
import { pickLayerName, writeLayer } from '../../persist/write.js';
import { describeTree } from '../helpers/tree.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-persist-'));
const T = path.join(WORK, 't'); // a tmpfs: lower, upper and work of the overlay
const SRC = path.join(T, 'src');
const IMAGES = path.join(T, 'images');
const L = path.join(T, 'lower');
const U = path.join(T, 'upper');
const W = path.join(T, 'work');
const M = path.join(T, 'merged');
const mounts: string[] = [];
const loops: string[] = [];

afterAll(() => {
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  for (const l of loops) spawnSync('losetup', ['-d', l]);
  fs.rmSync(WORK, { recursive: true, force: true });
});

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
const mount = (args: string[], at: string) => {
  run('mount', [...args, at]);
  mounts.push(at);
};
function put(root: string, rel: string, data: string | Buffer, mode = 0o644): void {
  const p = path.join(root, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, data);
  fs.chmodSync(p, mode);
}

/** The CLI as users run it: `node bin/mkma.js persist …` */
function cliArgv(args: string[]): string[] {
  return [path.join(REPO, 'bin/mkma.js'), 'persist', ...args];
}
function persist(args: string[]): SpawnSyncReturns<string> {
  // every call here is a first save of its upperdir: what a save records for the next one in
  // the same boot (persist/saved.ts) is test/integration/persist-twice.test.ts's subject
  const u = args.indexOf('--upper');
  if (u >= 0 && fs.existsSync(args[u + 1])) fs.rmSync(savedRecordPath(args[u + 1]), { force: true });
  return spawnSync(process.execPath, cliArgv(args), { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], timeout: 120_000 });
}
const lastLine = (text: string) => text.trimEnd().split('\n').pop();
const layersIn = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((n) => /^persistence\..*\.cpio\.zst$/.test(n))
    .sort();

const TINY_BASE = path.join(T, 'tiny-base.cpio.zst');

beforeAll(async () => {
  // dist/ for the CLI (other modules may have type errors mid-edit: tsc still emits)
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  expect(fs.existsSync(path.join(REPO, 'dist/cli/persist-cmd.js'))).toBe(true);
  fs.mkdirSync(T);
  mount(['-t', 'tmpfs', '-o', 'size=1g', 'tmpfs'], T);
  // a small base for the tests that need one without caring what is in it
  const src = path.join(T, 'tiny-src');
  put(src, 'etc/hostname', 'tiny\n');
  await packTree(src, TINY_BASE, { kind: 'base', level: 3 });
}, 120_000);

describe('persist through a real overlay', () => {
  const blob = crypto.randomBytes(200_000);
  const EXCLUDES = ['--exclude', '/srv/skipme/', '--exclude', '/etc/excluded.conf'];
  let result: SpawnSyncReturns<string>;

  beforeAll(async () => {
    // ---- the base image, unpacked as the boot does
    for (const d of ['etc', 'usr/bin', 'usr/share/doc', 'srv/shared', 'var/lib', 'root', 'tmp'])
      fs.mkdirSync(path.join(SRC, d), { recursive: true });
    fs.chmodSync(path.join(SRC, 'tmp'), 0o1777);
    fs.chmodSync(path.join(SRC, 'root'), 0o700);
    put(SRC, 'etc/hostname', 'base-host\n');
    put(SRC, 'etc/old.conf', 'old\n');
    put(SRC, 'etc/motd', 'welcome\n');
    put(SRC, 'etc/excluded.conf', 'base excluded\n');
    put(SRC, 'etc/owned', 'owned\n');
    put(SRC, 'etc/keep.conf', 'unchanged\n');
    run('setfattr', ['-n', 'user.base', '-v', 'b', path.join(SRC, 'etc/keep.conf')]);
    put(SRC, 'etc/note', 'note\n');
    fs.symlinkSync('/usr/share/zoneinfo/UTC', path.join(SRC, 'etc/localtime'));
    put(SRC, 'usr/bin/tool', fs.readFileSync('/usr/bin/true'), 0o755);
    put(SRC, 'usr/share/doc/readme', 'readme\n');
    put(SRC, 'usr/share/doc/a', 'linked in base\n');
    fs.linkSync(path.join(SRC, 'usr/share/doc/a'), path.join(SRC, 'usr/share/doc/b'));
    put(SRC, 'opt/oldapp/bin/run', '#!/bin/sh\n', 0o755);
    put(SRC, 'opt/oldapp/lib/x.so', 'so');
    put(SRC, 'opt/oldapp/README', 'r');
    put(SRC, 'var/lib/app/old1', '1');
    put(SRC, 'var/lib/app/old2', '2');
    put(SRC, 'srv/dir2/inner', 'inner\n');
    put(SRC, 'srv/file3', 'file3\n');
    put(SRC, 'srv/olddir/content', 'c\n');
    fs.mkdirSync(IMAGES);
    await packTree(SRC, path.join(IMAGES, 'base.cpio.zst'), { kind: 'base', level: 3 });
    await unpackImages(IMAGES, L);
    for (const d of [U, W, M]) fs.mkdirSync(d);
    mount(['-t', 'overlay', 'overlay', '-o', `lowerdir=${L},upperdir=${U},workdir=${W},redirect_dir=off,metacopy=off`], M);

    // ---- changes, through the merged view
    const m = (rel: string) => path.join(M, rel);
    fs.writeFileSync(m('etc/new.conf'), 'new config\n'); // create
    fs.writeFileSync(m('etc/hostname'), 'layer-host\n'); // modify
    fs.chmodSync(m('usr/bin/tool'), 0o700); // chmod only
    fs.rmSync(m('etc/old.conf')); // delete a file
    fs.rmSync(m('opt/oldapp'), { recursive: true }); // delete a tree
    fs.rmSync(m('var/lib/app'), { recursive: true }); // rmdir, then recreate: opaque
    fs.mkdirSync(m('var/lib/app'));
    fs.writeFileSync(m('var/lib/app/state'), 'fresh\n');
    fs.renameSync(m('etc/motd'), m('etc/motd.bak')); // rename a file
    fs.linkSync(m('etc/new.conf'), m('etc/new-link.conf')); // hardlink of a new file
    fs.linkSync(m('usr/share/doc/readme'), m('usr/share/doc/readme.hard')); // hardlink of a lower file
    fs.mkdirSync(m('etc/alt'));
    fs.symlinkSync('../new.conf', m('etc/alt/link')); // symlink
    fs.mkdirSync(m('srv/data'));
    fs.writeFileSync(m('srv/data/name with spaces\nand newline'), 'odd\n');
    fs.writeFileSync(m('srv/data/blob'), blob);
    fs.copyFileSync(m('usr/bin/tool'), m('usr/bin/pingy')); // a file capability
    run('setcap', ['cap_net_raw+ep', m('usr/bin/pingy')]);
    fs.rmSync(m('srv/dir2'), { recursive: true }); // a directory replaced by a file
    fs.writeFileSync(m('srv/dir2'), 'now a file\n');
    fs.rmSync(m('srv/file3')); // a file replaced by a directory
    fs.mkdirSync(m('srv/file3'));
    fs.writeFileSync(m('srv/file3/inner'), 'inside\n');
    fs.chownSync(m('etc/owned'), 1234, 5678);
    run('setfattr', ['-n', 'user.note', '-v', 'hello', m('etc/note')]);
    fs.chmodSync(m('srv/shared'), 0o750); // chmod of a directory
    run('mkfifo', [m('srv/pipe')]);
    run('mv', [m('srv/olddir'), m('srv/newdir')]); // a directory rename (EXDEV: copy + delete)
    fs.utimesSync(m('etc/keep.conf'), new Date('2001-02-03T04:05:06Z'), new Date('2001-02-03T04:05:06Z'));
    // left out: /tmp by the default rules, two more by --exclude
    fs.writeFileSync(m('tmp/junk'), 'junk\n');
    fs.mkdirSync(m('root/.cache'));
    fs.writeFileSync(m('root/.cache/x'), 'cache\n');
    fs.mkdirSync(m('srv/skipme'));
    fs.writeFileSync(m('srv/skipme/big'), 'skip me\n');
    fs.writeFileSync(m('etc/excluded.conf'), 'changed but excluded\n');

    result = persist(['--yes', '--upper', U, '--lower', L, '--path', IMAGES, '--message', 'integration', ...EXCLUDES]);
  }, 120_000);

  test('the CLI saves a layer and says what it saved', () => {
    expect(result.stderr).not.toMatch(/warning/);
    expect(result.status).toBe(0);
    const layers = layersIn(IMAGES);
    expect(layers).toHaveLength(1);
    const mf = readManifest(path.join(IMAGES, layers[0]));
    const lines = result.stdout.split('\n');
    expect(lines[0]).toMatch(
      new RegExp(
        // the entries counted (persist/counts.ts) are the layer's archive entries
        `^mkma: saved 29 changes, ${mf.entries} entries incl. parent directories, 4 deletions, 2 replaced directories ` +
          `\\([0-9.]+ KiB before compression, [0-9.]+ KiB compressed\\)$`,
      ),
    );
    expect(lines[1]).toBe(`  ${layers[0]}`);
    expect(lines[2]).toBe(`  in ${IMAGES}`);
    expect(lines[3]).toMatch(/^ {2}left out by the rules: 6 change\(s\), /);
    expect(fs.statSync(path.join(IMAGES, layers[0])).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(IMAGES).sort()).toEqual(['base.cpio.zst', layers[0]]); // no lock, no temporary file
    expect(mf.kind).toBe('layer');
    expect(mf.message).toBe('integration');
    expect(mf.deleted).toEqual(['etc/motd', 'etc/old.conf', 'opt/oldapp', 'srv/olddir']);
    expect(mf.opaque).toEqual(['srv/file3', 'var/lib/app']);
    expect(mf.xattrs.map((r) => [r.path, r.attrs.map(([n]) => n)])).toEqual([
      ['etc/keep.conf', ['user.base']],
      ['etc/note', ['user.note']],
      ['usr/bin/pingy', ['security.capability']],
    ]);
  });

  test('base + layer == the merged view, except what was left out', async () => {
    const fresh = path.join(T, 'fresh');
    const report = await unpackImages(IMAGES, fresh);
    expect(report.layers.map((l) => [l.applied, l.reason])).toEqual([[true, undefined]]);
    const merged = describeTree(M, { skipRoot: true });
    const base = describeTree(L, { skipRoot: true });
    const expected: Record<string, string> = { ...merged };
    for (const k of ['tmp/junk', 'root/.cache', 'root/.cache/x', 'srv/skipme', 'srv/skipme/big']) {
      expect(expected[JSON.stringify(k)]).toBeDefined();
      delete expected[JSON.stringify(k)];
    }
    expected['"etc/excluded.conf"'] = base['"etc/excluded.conf"'];
    const got = describeTree(fresh, { skipRoot: true });
    expect(got).toEqual(expected);
    // spot checks, so that a wrong comparison cannot pass by accident
    expect(fs.readFileSync(path.join(fresh, 'etc/excluded.conf'), 'utf8')).toBe('base excluded\n');
    expect(fs.existsSync(path.join(fresh, 'tmp/junk'))).toBe(false);
    expect(fs.existsSync(path.join(fresh, 'var/lib/app/old1'))).toBe(false);
    expect(fs.readFileSync(path.join(fresh, 'srv/data/blob')).equals(blob)).toBe(true);
    expect(got['"usr/bin/pingy"']).toMatch(/xattrs=security\.capability=0x/);
    expect(got['"etc/new.conf"']).toMatch(/nlink=2 links=\["etc\/new-link.conf","etc\/new.conf"\]/);
    expect(got['"usr/share/doc/b"']).toMatch(/nlink=2 links=\["usr\/share\/doc\/a","usr\/share\/doc\/b"\]/);
    expect(got['"etc/owned"']).toMatch(/^file 0644 1234:5678 /);
    expect(got['"srv/shared"']).toBe('dir 0750 0:0');
    expect(got['"srv/dir2"']).toMatch(/^file /);
    expect(got['"srv/file3"']).toBe('dir 0755 0:0');
    expect(got['"srv/data/name with spaces\\nand newline"']).toMatch(/^file 0644 0:0 size=4 /);
    expect(got['"etc/keep.conf"']).toMatch(/mtime=981173106 .*xattrs=user\.base=0x62$/);
    expect(got['"etc/motd"']).toBeUndefined();
    expect(got['"opt/oldapp"']).toBeUndefined();
  });

  test('--dry-run --json lists every change with its kind, decision and the rule that decided', () => {
    const r = persist(['--dry-run', '--json', '--upper', U, '--lower', L, ...EXCLUDES]);
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as {
      entries: Array<{ path: string; kind: string; included: boolean; rule: { source: string } | null }>;
      totals: Record<string, number>;
      skipped: unknown[];
    };
    const changes = out.entries.filter((e) => e.kind !== 'container');
    expect(changes.map((e) => [e.path, e.kind, e.included])).toEqual([
      ['/etc/alt', 'added', true],
      ['/etc/alt/link', 'added', true],
      ['/etc/excluded.conf', 'modified', false],
      ['/etc/hostname', 'modified', true],
      ['/etc/keep.conf', 'metadata', true],
      ['/etc/motd', 'deleted', true],
      ['/etc/motd.bak', 'added', true],
      ['/etc/new-link.conf', 'added', true],
      ['/etc/new.conf', 'added', true],
      ['/etc/note', 'metadata', true],
      ['/etc/old.conf', 'deleted', true],
      ['/etc/owned', 'metadata', true],
      ['/opt/oldapp', 'deleted', true],
      ['/root/.cache', 'added', false],
      ['/root/.cache/x', 'added', false],
      ['/srv/data', 'added', true],
      ['/srv/data/blob', 'added', true],
      ['/srv/data/name with spaces\nand newline', 'added', true],
      ['/srv/dir2', 'modified', true],
      ['/srv/file3', 'replaced', true],
      ['/srv/file3/inner', 'added', true],
      ['/srv/newdir', 'added', true],
      ['/srv/newdir/content', 'added', true],
      ['/srv/olddir', 'deleted', true],
      ['/srv/pipe', 'added', true],
      ['/srv/shared', 'metadata', true],
      ['/srv/skipme', 'added', false],
      ['/srv/skipme/big', 'added', false],
      ['/tmp/junk', 'added', false],
      ['/usr/bin/pingy', 'added', true],
      ['/usr/bin/tool', 'metadata', true],
      ['/usr/share/doc/readme', 'metadata', true],
      ['/usr/share/doc/readme.hard', 'added', true],
      ['/var/lib/app', 'replaced', true],
      ['/var/lib/app/state', 'added', true],
    ]);
    expect(out.entries.filter((e) => e.kind === 'container').map((e) => e.path)).toEqual([
      '/etc',
      '/opt',
      '/root',
      '/srv',
      '/tmp',
      '/usr',
      '/usr/bin',
      '/usr/share',
      '/usr/share/doc',
      '/var',
      '/var/lib',
    ]);
    const source = (p: string) => out.entries.find((e) => e.path === p)!.rule?.source;
    expect(source('/etc/excluded.conf')).toBe('--exclude');
    expect(source('/srv/skipme/big')).toBe('--exclude');
    expect(source('/tmp/junk')).toMatch(/^default:\d+$/);
    expect(source('/root/.cache/x')).toMatch(/^default:\d+$/);
    expect(source('/etc/hostname')).toBeUndefined();
    const included = changes.filter((e) => e.included);
    expect(out.totals).toEqual({
      changes: 35,
      included: 29,
      includedBytes: out.totals.includedBytes,
      excluded: 6,
      excludedBytes: 'changed but excluded\n'.length + 'cache\n'.length + 'skip me\n'.length + 'junk\n'.length,
    });
    expect(included).toHaveLength(29);
    expect(out.totals.includedBytes).toBeGreaterThan(blob.length);
    expect(out.skipped).toEqual([]);
    // a dry run writes nothing
    expect(layersIn(IMAGES)).toHaveLength(1);
  });

  test('--dry-run as text: kind, size, path; totals; what the rules left out', () => {
    const r = persist(['--dry-run', '--upper', U, '--lower', L, ...EXCLUDES]);
    expect(r.status).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines).toContain('A       11 B  /etc/new.conf');
    expect(lines).toContain('M       11 B  /etc/hostname');
    expect(lines).toContain('D          -  /etc/old.conf');
    expect(lines).toContain('R          -  /var/lib/app/');
    expect(lines).toContain('P          -  /srv/shared/');
    expect(lines).toContain('A       11 B  /etc/alt/link');
    expect(lines).toContain('A        4 B  /srv/data/name with spaces\\012and newline');
    expect(lines).not.toContain('A        5 B  /tmp/junk');
    expect(lines.filter((l) => /^[AMPDR] /.test(l))).toHaveLength(29);
    expect(lines.filter((l) => /^would save 29 of 35 change\(s\), [0-9.]+ KiB before compression$/.test(l))).toHaveLength(1);
    expect(lines).toContain('left out by /etc/excluded.conf (--exclude): 1 change(s), 21 B');
    expect(lines).toContain('left out by /srv/skipme/ (--exclude): 2 change(s), 8 B');
    expect(lines.some((l) => /^left out by \/tmp\/ \(default:\d+\): 1 change\(s\), 5 B$/.test(l))).toBe(true);
    expect(lines.some((l) => /^left out by \/root\/\.cache\/ \(default:\d+\): 2 change\(s\), 6 B$/.test(l))).toBe(true);
  });

  test('no terminal and no --yes: refused with exit status 2', () => {
    const r = persist(['--upper', U, '--lower', L, '--path', IMAGES]);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe('mkma: no terminal: use --yes to save everything the rules allow, or --dry-run to list it\n');
    expect(r.stdout).toBe('');
    expect(layersIn(IMAGES)).toHaveLength(1);
  });
});

describe('one persist at a time', () => {
  const U2 = path.join(T, 'upper2');
  const IMG2 = path.join(T, 'images2');
  beforeAll(() => {
    fs.mkdirSync(IMG2);
    fs.copyFileSync(TINY_BASE, path.join(IMG2, 'base.cpio.zst'));
    // ~40 MB that compresses slowly at a high level: a write that takes a while
    for (let i = 0; i < 40; i++) put(U2, `srv/f${String(i).padStart(2, '0')}`, crypto.randomBytes(1 << 20));
  });

  test("a lock held by a live process refuses; a dead owner's lock and temporary file are cleaned up", async () => {
    const lock = path.join(IMG2, '.mkma-persist.lock');
    // flock(1) holding the lock file, which names it as its owner, a persist (-o: its command
    // does not hold the lock too, so killing flock frees it)
    const holder = spawn(
      'flock',
      ['--exclusive', '--close', lock, 'sh', '-c', `echo "$PPID mkma persist" > '${lock}'; echo locked; exec sleep 60`],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
        detached: true,
      },
    );
    await new Promise((r) => holder.stdout.once('data', r));
    const busy = persist(['--yes', '--upper', U2, '--path', IMG2, '--level', '1']);
    expect(busy.status).toBe(1);
    expect(lastLine(busy.stderr)).toBe(
      `mkma: another mkma persist (pid ${holder.pid}) is writing a layer to ${IMG2}; wait for it to finish and run mkma persist again`,
    );
    expect(layersIn(IMG2)).toEqual([]);
    const dead = holder.pid!;
    process.kill(-dead, 'SIGKILL'); // flock and its sleep
    await new Promise((r) => holder.on('exit', r));
    // the lock file stays, naming a dead process, unlocked: it is free
    const stale = path.join(IMG2, `.persistence.20000101T000000Z.cpio.zst.tmp-${dead}`);
    fs.writeFileSync(stale, 'partial');
    const ok = persist(['--yes', '--upper', U2, '--path', IMG2, '--level', '1']);
    expect(ok.status).toBe(0);
    expect(ok.stderr).toContain(`removed .persistence.20000101T000000Z.cpio.zst.tmp-${dead} (left by an interrupted persist)`);
    expect(fs.readdirSync(IMG2).filter((n) => n.startsWith('.'))).toEqual([]);
    expect(layersIn(IMG2)).toHaveLength(1);
    for (const l of layersIn(IMG2)) fs.rmSync(path.join(IMG2, l));
  }, 60_000);

  test('a second persist while the first one writes is refused by the lock', async () => {
    const first = spawn(process.execPath, cliArgv(['--yes', '--upper', U2, '--path', IMG2, '--level', '12']), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let firstErr = '';
    first.stderr.on('data', (d: Buffer) => {
      firstErr += d.toString();
    });
    const exited = new Promise<number | null>((r) => first.on('exit', (c) => r(c)));
    const lock = path.join(IMG2, '.mkma-persist.lock');
    const t0 = Date.now();
    // the pid is written once the lock is taken
    const owner = () => (fs.existsSync(lock) ? fs.readFileSync(lock, 'utf8') : '');
    while (!owner() && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 5));
    expect(owner()).toBe(`${first.pid} mkma persist\n`);
    const second = persist(['--yes', '--upper', U2, '--path', IMG2, '--level', '1']);
    const stillWriting = fs.existsSync(lock);
    expect(second.status).toBe(1);
    expect(lastLine(second.stderr)).toBe(
      `mkma: another mkma persist (pid ${first.pid}) is writing a layer to ${IMG2}; wait for it to finish and run mkma persist again`,
    );
    expect(stillWriting).toBe(true);
    expect(await exited).toBe(0);
    expect(firstErr).not.toMatch(/mkma: /);
    expect(layersIn(IMG2)).toHaveLength(1);
    expect(fs.existsSync(lock)).toBe(false);
  }, 120_000);
});

describe('the storage device', () => {
  let loop = '';
  const label = `MKMAT${process.pid % 100000}`;
  const upper = path.join(T, 'upper3');
  beforeAll(() => {
    const img = path.join(WORK, 'storage.img'); // not on the tmpfs: a loop device over a file
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 64 << 20);
    run('mkfs.ext4', ['-q', '-L', label, '-d', IMAGES_ON_DISK(), img]);
    loop = run('losetup', ['-f', '--show', img]).trim();
    loops.push(loop);
    put(upper, 'etc/hello', 'from the device test\n');
  });
  /** a directory tree for mkfs -d: /mkma/base.cpio.zst */
  function IMAGES_ON_DISK(): string {
    const d = path.join(WORK, 'disk-root');
    fs.mkdirSync(path.join(d, 'mkma'), { recursive: true });
    fs.copyFileSync(TINY_BASE, path.join(d, 'mkma/base.cpio.zst'));
    return d;
  }
  const mountsOf = (dev: string) =>
    fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => {
        const f = l.split(' ');
        return f[f.indexOf('-', 6) + 2] === dev;
      });
  const listDisk = () => {
    const mp = fs.mkdtempSync(path.join(WORK, 'inspect-'));
    run('mount', ['-o', 'ro', loop, mp]);
    try {
      return fs.readdirSync(path.join(mp, 'mkma')).sort();
    } finally {
      run('umount', [mp]);
    }
  };

  test('resolveTarget: the kernel command line (LABEL=), a private mount while writing, unmounted after', () => {
    const t = resolveTarget({ cmdline: `quiet mkma_storage_device=LABEL=${label} mkma_images_path=/mkma/ ro`, mountBase: WORK });
    expect(t.imagesDir).toMatch(new RegExp(`^${WORK}/mkma-storage-[^/]+/mkma$`));
    expect(t.description).toBe(`${loop}:/mkma (mounted at ${path.dirname(t.imagesDir)} while writing)`);
    expect(mountsOf(loop)).toHaveLength(1);
    expect(fs.readdirSync(t.imagesDir)).toEqual(['base.cpio.zst']);
    t.release();
    t.release();
    expect(mountsOf(loop)).toEqual([]);
    expect(fs.existsSync(path.dirname(t.imagesDir))).toBe(false);
  });

  test('resolveTarget: boot.env when the command line says nothing; a wrong path fails and unmounts', () => {
    const t = resolveTarget({ cmdline: 'quiet', bootEnv: `device=LABEL=${label}\nimages_path=/mkma\n`, mountBase: WORK });
    expect(t.imagesDir.endsWith('/mkma')).toBe(true);
    t.release();
    expect(() => resolveTarget({ cmdline: '', device: loop, path: '/nope', mountBase: WORK })).toThrow(
      `${loop}: no directory /nope (check mkma_images_path= / --path)`,
    );
    expect(mountsOf(loop)).toEqual([]);
    expect(() => resolveTarget({ cmdline: '' })).toThrow(/^cannot tell where the images are: no mkma_storage_device=/);
    expect(() => resolveTarget({ cmdline: '', device: 'LABEL=no-such-label-mkma', path: '/mkma' })).toThrow(
      'no block device has LABEL=no-such-label-mkma (blkid found none): is the storage device attached?',
    );
  });

  test('persist --device writes the layer onto the device and leaves it unmounted', () => {
    const r = persist(['--yes', '--upper', upper, '--device', `LABEL=${label}`, '--path', '/mkma', '--level', '1']);
    expect(r.stderr).not.toMatch(/warning/);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`  in ${loop}:/mkma (mounted at `);
    expect(mountsOf(loop)).toEqual([]);
    const files = listDisk();
    expect(files).toHaveLength(2);
    expect(files[0]).toBe('base.cpio.zst');
    expect(files[1]).toMatch(/^persistence\.\d{8}T\d{6}Z(-\d+)?@trial-3-0\.cpio\.zst$/);
  });

  test('already mounted read-write: written through that mount, which stays; read-only: refused', () => {
    const mp = path.join(WORK, 'owner-mount');
    fs.mkdirSync(mp);
    run('mount', [loop, mp]);
    try {
      const r = persist(['--yes', '--upper', upper, '--device', loop, '--path', '/mkma', '--level', '1']);
      expect(r.status).toBe(0);
      expect(r.stdout).toContain(`  in ${loop}:/mkma (through its mount at ${mp})`);
      expect(mountsOf(loop)).toHaveLength(1);
      expect(layersIn(path.join(mp, 'mkma'))).toHaveLength(2);
      run('mount', ['-o', 'remount,ro', mp]);
      const ro = persist(['--yes', '--upper', upper, '--device', loop, '--path', '/mkma', '--level', '1']);
      expect(ro.status).toBe(3);
      expect(lastLine(ro.stderr)).toBe(
        `mkma: ${loop} is mounted read-only at ${mp}. mkma persist does not make someone else's read-only mount writable; ` +
          `remount it read-write (mount -o remount,rw ${mp}) or unmount it, then run mkma persist again`,
      );
    } finally {
      run('umount', [mp]);
    }
  });
});

describe('small cases', () => {
  const IMG3 = path.join(T, 'images3');
  beforeAll(() => {
    fs.mkdirSync(IMG3);
    fs.copyFileSync(TINY_BASE, path.join(IMG3, 'base.cpio.zst'));
  });

  test('nothing the rules allow: nothing written, exit 0', () => {
    const up = path.join(T, 'upper-only-tmp');
    put(up, 'tmp/x', 'x');
    const r = persist(['--yes', '--upper', up, '--path', IMG3]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('mkma: nothing to save (2 change(s), all left out by the rules)\n');
    expect(fs.readdirSync(IMG3)).toEqual(['base.cpio.zst']);
  });

  test('a real overlay with nothing left in its upperdir: nothing written, said so, exit 0', () => {
    const o = path.join(T, 'nothing');
    for (const d of ['lower', 'upper', 'work', 'merged']) fs.mkdirSync(path.join(o, d), { recursive: true });
    put(path.join(o, 'lower'), 'etc/hostname', 'tiny\n');
    const merged = path.join(o, 'merged');
    mount(
      ['-t', 'overlay', 'overlay', '-o', `lowerdir=${o}/lower,upperdir=${o}/upper,workdir=${o}/work,redirect_dir=off,metacopy=off`],
      merged,
    );
    // a file made and removed again: overlayfs leaves nothing of it in the upperdir
    put(merged, 'scratch', 'gone soon');
    fs.rmSync(path.join(merged, 'scratch'));
    const before = fs.readdirSync(IMG3).map((n) => [n, fs.statSync(path.join(IMG3, n)).mtimeMs]);
    const r = persist(['--yes', '--upper', path.join(o, 'upper'), '--lower', path.join(o, 'lower'), '--path', IMG3]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('mkma: nothing to save (no changes since boot)\n');
    const j = persist(['--yes', '--json', '--upper', path.join(o, 'upper'), '--lower', path.join(o, 'lower'), '--path', IMG3]);
    expect(j.status).toBe(0);
    expect(JSON.parse(j.stdout)).toMatchObject({ saved: false, reason: 'nothing to save', detail: 'no changes since boot' });
    // the images directory is unchanged: no layer, no lock file, the base untouched
    expect(fs.readdirSync(IMG3).map((n) => [n, fs.statSync(path.join(IMG3, n)).mtimeMs])).toEqual(before);
  });

  test('--yes --json: the result as JSON', () => {
    const up = path.join(T, 'upper-json');
    put(up, 'etc/a', 'abc');
    put(up, 'tmp/x', 'x');
    const r = persist(['--yes', '--json', '--upper', up, '--path', IMG3, '--level', '1']);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout);
    const name = layersIn(IMG3)[0];
    expect(out).toEqual({
      saved: true,
      name,
      file: path.join(IMG3, name),
      // the zstd level the layer was written with (--level 1)
      level: 1,
      entries: 2,
      bytesIn: out.bytesIn,
      bytesOut: fs.statSync(path.join(IMG3, name)).size,
      deleted: 0,
      replaced: 0,
      cleaned: [],
      target: IMG3,
      totals: { changes: 4, included: 2, includedBytes: 3, excluded: 2, excludedBytes: 1 },
      skipped: [],
      warnings: [],
    });
    // bytesIn: the cpio stream before compression
    expect(out.bytesIn).toBe(execFileSync('zstd', ['-dc', path.join(IMG3, name)]).length);
    fs.rmSync(path.join(IMG3, name));
  });

  test('not enough space on the storage: refused before writing, with the numbers', () => {
    const small = path.join(T, 'small-images');
    fs.mkdirSync(small);
    mount(['-t', 'tmpfs', '-o', 'size=20m', 'tmpfs'], small);
    fs.copyFileSync(TINY_BASE, path.join(small, 'base.cpio.zst'));
    const up = path.join(T, 'upper-big');
    put(up, 'srv/big', crypto.randomBytes(8 << 20));
    const r = persist(['--yes', '--upper', up, '--path', small, '--level', '1']);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toMatch(
      new RegExp(
        `^mkma: not enough space in ${small}: the layer may need up to 8\\.0 MiB \\(before compression\\) \\+ 16\\.0 MiB to spare, and (19\\.\\d|20\\.0) MiB is free\\. `,
      ),
    );
    expect(fs.readdirSync(small)).toEqual(['base.cpio.zst']);
  });

  test('not root: refused, except a dry run of a readable upperdir', () => {
    const up = path.join(T, 'upper-readable');
    put(up, 'etc/a', 'abc');
    fs.chmodSync(WORK, 0o755); // mkdtemp made it 0700
    fs.chmodSync(T, 0o755);
    const asNobody = (args: string[]) =>
      spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...cliArgv(args)], { encoding: 'utf8' });
    const yes = asNobody(['--yes', '--upper', up, '--path', IMG3]);
    expect(yes.status).toBe(3);
    expect(yes.stderr).toBe(
      "mkma: mkma persist must run as root (it reads every file of the upperdir, overlayfs' trusted.* xattrs, and mounts the storage device): run it with sudo\n",
    );
    const dry = asNobody(['--dry-run', '--upper', up]);
    expect(dry.status).toBe(0);
    expect(dry.stdout.split('\n').slice(0, 3)).toEqual(['A          -  /etc/', 'A        3 B  /etc/a', '']);
    expect(dry.stderr).toMatch(/^warning: not root: /);
  });
});

describe('writeLayer directly', () => {
  test('a layer of the same second gets -2, -3; the include function decides; mode 0600', async () => {
    const dir = path.join(T, 'images-direct');
    fs.mkdirSync(dir);
    fs.copyFileSync(TINY_BASE, path.join(dir, 'base.cpio.zst'));
    const up = path.join(T, 'upper-direct');
    put(up, 'a/keep', 'k');
    put(up, 'a/drop', 'd');
    const scan = await scanUpper(up, null);
    const now = new Date('2026-11-22T02:15:00.500Z');
    const names: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await writeLayer({ upper: up, scan, include: (e) => e.path !== 'a/drop', imagesDir: dir, level: 1, now, message: `#${i}` });
      names.push(path.basename(r.file));
      expect(r).toMatchObject({ entries: 2, deleted: 0, replaced: 0, cleaned: [] });
    }
    // new layers are on trial (NEW_LAYER_STATE) until a boot with them is marked good
    expect(names).toEqual([
      'persistence.20261122T021500Z@trial-3-0.cpio.zst',
      'persistence.20261122T021500Z-2@trial-3-0.cpio.zst',
      'persistence.20261122T021500Z-3@trial-3-0.cpio.zst',
    ]);
    expect(pickLayerName(dir, now)).toBe('persistence.20261122T021500Z-4@trial-3-0.cpio.zst');
    // an id is taken whatever its state: a blessed or disabled layer of that second is not reused
    fs.renameSync(path.join(dir, names[2]), path.join(dir, 'persistence.20261122T021500Z-3@disabled.cpio.zst'));
    fs.writeFileSync(path.join(dir, 'persistence.20261122T021500Z-4.cpio.zst'), '');
    expect(pickLayerName(dir, now)).toBe('persistence.20261122T021500Z-5@trial-3-0.cpio.zst');
    fs.rmSync(path.join(dir, 'persistence.20261122T021500Z-4.cpio.zst'));
    names[2] = 'persistence.20261122T021500Z-3@disabled.cpio.zst';
    const m = readManifest(path.join(dir, names[2]));
    expect([m.created, m.message, m.entries]).toEqual(['2026-11-22T02:15:00Z', '#2', 2]);
    expect(execFileSync('sh', ['-c', `zstd -dc '${path.join(dir, names[0])}' | cpio -it --quiet`]).toString()).toBe('a\na/keep\n');
    expect(fs.statSync(path.join(dir, names[0])).mode & 0o777).toBe(0o600);
  });
});
