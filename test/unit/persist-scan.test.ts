// The upperdir scan on hand-made upper/lower trees: whiteouts (device 0/0 and xattr whiteouts),
// opaque directories ("y" opaque, "x" not), containers, added/modified/metadata, type changes,
// lower paths behind symlinks, hardlinks, xattrs, and what cannot be saved. Runs as root
// (mknod, trusted.* xattrs, setcap, a tmpfs mount).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { ChangeEntry } from '../../persist/model.js';
import { scanHelper } from '../../persist/scan-helper.js';
import { scanUpper } from '../../persist/scan.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-scan-'));
const L = path.join(TMP, 'lower');
const U = path.join(TMP, 'upper');
const mounted: string[] = [];
afterAll(() => {
  for (const m of mounted.reverse()) spawnSync('umount', [m]);
  fs.rmSync(TMP, { recursive: true, force: true });
});

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
function file(root: string, rel: string, data: string | Buffer, mode = 0o644): void {
  const p = path.join(root, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, data);
  fs.chmodSync(p, mode);
}
function dir(root: string, rel: string, mode = 0o755): void {
  const p = path.join(root, rel);
  fs.mkdirSync(p, { recursive: true });
  fs.chmodSync(p, mode);
}
const whiteout = (rel: string) => sh('mknod', [path.join(U, rel), 'c', '0', '0']);
const setx = (rel: string, name: string, value: string) => sh('setfattr', ['-h', '-n', name, '-v', value, path.join(U, rel)]);

const BIG = (16 << 20) + 1;

beforeAll(() => {
  // ---- lower
  dir(L, 'etc');
  file(L, 'etc/hostname', 'old\n');
  file(L, 'etc/same', 'same\n');
  fs.symlinkSync('a', path.join(L, 'etc/link'));
  fs.symlinkSync('b', path.join(L, 'etc/link2'));
  file(L, 'etc/gone', 'bye');
  file(L, 'gonedir/sub/f', 'f');
  file(L, 'opq/old', 'old');
  file(L, 'opq/new', 'lower');
  file(L, 'xw/xwf', 'x');
  file(L, 'xw/keep', 'k');
  dir(L, 'meta');
  file(L, 'plain/existing', 'e');
  file(L, 'ftod', 'file');
  file(L, 'dtof/inner', 'i');
  file(L, 'realdir/x', 'x');
  fs.symlinkSync('realdir', path.join(L, 'lnkdir'));
  file(L, 'big/bigsame', Buffer.alloc(BIG));
  file(L, 'big/bigdiff', Buffer.alloc(BIG));
  dir(L, 'dev');
  sh('mknod', ['-m', '666', path.join(L, 'dev/null'), 'c', '1', '3']);
  sh('mknod', ['-m', '666', path.join(L, 'dev/zero'), 'c', '1', '5']);

  // ---- upper
  dir(U, 'etc');
  file(U, 'etc/hostname', 'new\n'); // same size, other bytes
  setx('etc/hostname', 'trusted.overlay.origin', 'junk');
  file(U, 'etc/same', 'same\n', 0o600);
  fs.symlinkSync('a', path.join(U, 'etc/link'));
  fs.symlinkSync('c', path.join(U, 'etc/link2'));
  whiteout('etc/gone');
  file(U, 'etc/new', 'n');
  setx('etc/new', 'user.test', 'hello');
  whiteout('gonedir');
  dir(U, 'opq');
  setx('opq', 'trusted.overlay.opaque', 'y');
  file(U, 'opq/new', 'upper');
  dir(U, 'xw');
  setx('xw', 'trusted.overlay.opaque', 'x');
  file(U, 'xw/xwf', '');
  setx('xw/xwf', 'trusted.overlay.whiteout', '');
  dir(U, 'meta', 0o700);
  dir(U, 'plain');
  file(U, 'plain/added.txt', '12345');
  file(U, 'ftod/inner', 'i');
  file(U, 'dtof', 'f');
  file(U, 'lnkdir/x', 'x');
  file(U, 'newdir/a', 'abc');
  file(U, 'newdir/b', 'abcde');
  file(U, 'h1', 'hl');
  fs.linkSync(path.join(U, 'h1'), path.join(U, 'h2'));
  sh('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', path.join(U, 'sock')]);
  sh('mkfifo', [path.join(U, 'fifo')]);
  file(U, 'redir/child', 'c');
  setx('redir', 'trusted.overlay.redirect', '/elsewhere');
  file(U, 'mc', Buffer.alloc(10));
  setx('mc', 'trusted.overlay.metacopy', '');
  file(U, 'sp ace\nnl', 's');
  fs.copyFileSync(process.execPath, path.join(U, 'cap'));
  sh('setcap', ['cap_net_raw+ep', path.join(U, 'cap')]);
  const bs = Buffer.alloc(BIG);
  bs[0] = 1;
  file(U, 'big/bigsame', bs); // differs, but > 16 MiB with the same size and mtime: taken as unchanged
  file(U, 'big/bigdiff', Buffer.alloc(BIG));
  const t = fs.statSync(path.join(L, 'big/bigsame')).mtime;
  fs.utimesSync(path.join(U, 'big/bigsame'), t, t);
  fs.utimesSync(path.join(U, 'big/bigdiff'), new Date(t.getTime() + 5000), new Date(t.getTime() + 5000));
  dir(U, 'dev');
  sh('mknod', ['-m', '600', path.join(U, 'dev/null'), 'c', '1', '3']);
  sh('mknod', ['-m', '666', path.join(U, 'dev/zero'), 'c', '1', '7']);
  dir(U, 'mnt');
  sh('mount', ['-t', 'tmpfs', 'tmpfs', path.join(U, 'mnt')]);
  mounted.push(path.join(U, 'mnt'));
  file(U, 'mnt/inside', 'not part of the upperdir');
});

// Both walks: mkma-scan (native) and the fallback over find + getfattr.
describe.each(['native', 'find'] as const)('scanUpper on a hand-made upperdir (%s walk)', (walker) => {
  const scan = (u: string, l: string | null) => scanUpper(u, l, { walker });
  let entries: ChangeEntry[];
  let byPath: Map<string, ChangeEntry>;
  let skipped: Array<{ path: string; reason: string }>;
  beforeAll(async () => {
    const r = await scan(U, L);
    entries = r.entries;
    skipped = r.skipped;
    byPath = new Map(entries.map((e) => [e.path, e]));
    expect(r.stats.entries).toBe(entries.length);
  });

  test('every entry classified, in pre-order with siblings sorted by bytes', () => {
    expect(entries.map((e) => [e.path, e.kind, e.type])).toEqual([
      ['big', 'container', 'dir'],
      ['big/bigdiff', 'modified', 'file'],
      ['big/bigsame', 'metadata', 'file'],
      ['cap', 'added', 'file'],
      ['dev', 'container', 'dir'],
      ['dev/null', 'metadata', 'char'],
      ['dev/zero', 'modified', 'char'],
      ['dtof', 'modified', 'file'],
      ['etc', 'container', 'dir'],
      ['etc/gone', 'deleted', 'whiteout'],
      ['etc/hostname', 'modified', 'file'],
      ['etc/link', 'metadata', 'symlink'],
      ['etc/link2', 'modified', 'symlink'],
      ['etc/new', 'added', 'file'],
      ['etc/same', 'metadata', 'file'],
      ['fifo', 'added', 'fifo'],
      ['ftod', 'modified', 'dir'],
      ['ftod/inner', 'added', 'file'],
      ['gonedir', 'deleted', 'whiteout'],
      ['h1', 'added', 'file'],
      ['h2', 'added', 'file'],
      ['lnkdir', 'modified', 'dir'],
      ['lnkdir/x', 'added', 'file'], // lower has lnkdir/x only through a symlink: not there
      ['meta', 'metadata', 'dir'],
      ['newdir', 'added', 'dir'],
      ['newdir/a', 'added', 'file'],
      ['newdir/b', 'added', 'file'],
      ['opq', 'replaced', 'dir'],
      ['opq/new', 'added', 'file'], // the lower opq/new is hidden by the opaque directory
      ['plain', 'container', 'dir'],
      ['plain/added.txt', 'added', 'file'],
      ['sp ace\nnl', 'added', 'file'],
      ['xw', 'container', 'dir'], // opaque "x": holds xattr whiteouts, is not opaque
      ['xw/xwf', 'deleted', 'whiteout'],
    ]);
  });

  test('what cannot be saved is reported, with its subtree left out', () => {
    expect(skipped.map((s) => [s.path, s.reason.split(/[:;(]/)[0]])).toEqual([
      ['mc', 'overlayfs metacopy entry '],
      ['mnt', 'another filesystem is mounted here'],
      ['redir', 'overlayfs redirect entry '],
      ['sock', 'a socket belongs to the program that listens on it'],
    ]);
    expect(byPath.has('redir/child')).toBe(false);
    expect(byPath.has('mnt/inside')).toBe(false);
  });

  test('sizes, subtree totals, modes, symlink targets, what a whiteout deletes', () => {
    expect(byPath.get('newdir')).toMatchObject({ size: 0, totalSize: 8 });
    expect(byPath.get('etc')).toMatchObject({ size: 0, totalSize: 4 + 5 + 1 + 1 + 1 });
    expect(byPath.get('etc/link2')).toMatchObject({ size: 1, totalSize: 1, target: 'c', mode: 0o120777, lowerType: 'symlink' });
    expect(byPath.get('etc/same')).toMatchObject({ mode: 0o100600, uid: 0, gid: 0, lowerType: 'file' });
    expect(byPath.get('etc/gone')).toMatchObject({ size: 0, lowerType: 'file' });
    expect(byPath.get('gonedir')).toMatchObject({ lowerType: 'dir' });
    expect(byPath.get('xw/xwf')).toMatchObject({ lowerType: 'file', size: 0 });
    expect(byPath.get('opq')).toMatchObject({ lowerType: 'dir' });
    expect(byPath.get('ftod')!.lowerType).toBe('file');
    expect(byPath.get('newdir')!.lowerType).toBeUndefined();
    expect(byPath.get('sp ace\nnl')!.size).toBe(1);
    const mtime = Math.floor(fs.statSync(path.join(U, 'etc/new')).mtimeMs / 1000);
    expect(byPath.get('etc/new')!.mtime).toBe(mtime);
  });

  test('hardlinks within the upperdir (whiteouts sharing an inode are not links)', () => {
    expect(byPath.get('h1')!.hardlinks).toEqual(['h2']);
    expect(byPath.get('h2')!.hardlinks).toEqual(['h1']);
    expect(byPath.get('etc/new')!.hardlinks).toEqual([]);
    fs.linkSync(path.join(U, 'etc/gone'), path.join(TMP, 'extra-link-to-whiteout'));
    return scan(U, L).then((r) => {
      expect(r.entries.find((e) => e.path === 'etc/gone')!.hardlinks).toEqual([]);
      fs.unlinkSync(path.join(TMP, 'extra-link-to-whiteout'));
    });
  });

  test("xattrs: the others kept (getfattr base64 spelling), overlayfs' own left out", () => {
    expect(byPath.get('etc/new')!.xattrs).toEqual([['user.test', '0saGVsbG8=']]);
    expect(byPath.get('etc/hostname')!.xattrs).toEqual([]);
    expect(byPath.get('opq')!.xattrs).toEqual([]);
    expect(byPath.get('xw/xwf')!.xattrs).toEqual([]);
    const cap = byPath.get('cap')!.xattrs;
    expect(cap.map(([n]) => n)).toEqual(['security.capability']);
    expect(cap[0][1]).toMatch(/^0s/);
  });

  test('without a lower tree: everything but whiteouts and opaque directories is added', async () => {
    const r = await scan(U, null);
    const kinds = new Map(r.entries.map((e) => [e.path, e.kind]));
    expect(kinds.get('etc')).toBe('added');
    expect(kinds.get('etc/hostname')).toBe('added');
    expect(kinds.get('etc/gone')).toBe('deleted');
    expect(kinds.get('opq')).toBe('replaced');
    expect(r.entries.length).toBe(entries.length);
  });
});

describe('the native walk and the find walk give the same scan', () => {
  test('over the hand-made upperdir, with and without the lower tree', async () => {
    for (const lower of [L, null]) {
      const native = await scanUpper(U, lower, { walker: 'native' });
      const find = await scanUpper(U, lower, { walker: 'find' });
      expect(native.entries.length).toBeGreaterThan(30);
      expect(native.entries).toEqual(find.entries);
      expect(native.skipped).toEqual(find.skipped);
      expect(native.stats.bytes).toBe(find.stats.bytes);
    }
  });

  test('over a real overlayfs upperdir: whiteouts, opaque dirs, xattrs, caps, ACLs, links, devices', async () => {
    const R = path.join(TMP, 'real');
    const [lo, up, work, merged] = ['lower', 'upper', 'work', 'merged'].map((d) => path.join(R, d));
    for (const d of [up, work, merged]) fs.mkdirSync(d, { recursive: true });
    file(lo, 'etc/keep', 'k');
    file(lo, 'etc/gone', 'g');
    file(lo, 'etc/chmod', 'c');
    file(lo, 'etc/same-size', 'abc');
    file(lo, 'var/cache/a/1', '1');
    file(lo, 'var/cache/a/2', '2');
    file(lo, 'usr/bin/tool', 'tool');
    dir(lo, 'srv/deep/er');
    fs.symlinkSync('keep', path.join(lo, 'etc/lnk'));
    // overlayfs keeps its own xattrs under trusted.overlay.* in the upperdir (as root), and
    // replaces a removed-then-made directory by an opaque one, a removed file by a 0/0 device
    sh('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lo},upperdir=${up},workdir=${work},redirect_dir=off,metacopy=off`, merged]);
    try {
      const m = (rel: string) => path.join(merged, rel);
      fs.rmSync(m('etc/gone'));
      fs.chmodSync(m('etc/chmod'), 0o600);
      fs.writeFileSync(m('etc/same-size'), 'xyz');
      fs.rmSync(m('var/cache/a'), { recursive: true });
      fs.mkdirSync(m('var/cache/a'));
      fs.writeFileSync(m('var/cache/a/new'), 'n');
      fs.writeFileSync(m('etc/new name\twith tab'), 'x');
      // names with bytes above 0x7f sort after 'z' (by bytes, in both walks)
      fs.writeFileSync(m('etc/\u00e9t\u00e9'), 'e');
      fs.writeFileSync(m('etc/zz'), 'z');
      sh('setfattr', ['-n', 'user.note', '-v', 'hello', m('etc/keep')]);
      sh('setfattr', ['-n', 'user.empty', '-v', '', m('etc/keep')]);
      sh('setfacl', ['-m', 'u:nobody:r', m('etc/keep')]);
      fs.copyFileSync(process.execPath, m('usr/bin/pinger'));
      sh('setcap', ['cap_net_raw+ep', m('usr/bin/pinger')]);
      fs.linkSync(m('usr/bin/pinger'), m('usr/bin/pinger2'));
      fs.rmSync(m('etc/lnk'));
      fs.symlinkSync('elsewhere', m('etc/lnk'));
      sh('mknod', [m('srv/deep/er/null'), 'c', '1', '3']);
      sh('mkfifo', [m('srv/deep/fifo')]);
      fs.chownSync(m('srv/deep'), 1234, 5678);
    } finally {
      sh('umount', [merged]);
    }
    const native = await scanUpper(up, lo, { walker: 'native' });
    const find = await scanUpper(up, lo, { walker: 'find' });
    const kinds = new Map(native.entries.map((e) => [e.path, e.kind]));
    // the upperdir is what a real overlay made of it, and both walks see it so
    expect([kinds.get('etc/gone'), kinds.get('var/cache/a'), kinds.get('etc/chmod'), kinds.get('srv/deep')]).toEqual([
      'deleted',
      'replaced',
      'metadata',
      'metadata',
    ]);
    expect(native.entries.find((e) => e.path === 'usr/bin/pinger')!.xattrs.map(([n]) => n)).toEqual(['security.capability']);
    expect(native.entries.find((e) => e.path === 'etc/keep')!.xattrs.map(([n]) => n)).toEqual([
      'system.posix_acl_access',
      'user.empty',
      'user.note',
    ]);
    const etc = native.entries.filter((e) => e.path.startsWith('etc/')).map((e) => e.path);
    expect(etc.slice(-2)).toEqual(['etc/zz', Buffer.from('etc/\u00e9t\u00e9').toString('latin1')]);
    expect(native.entries).toEqual(find.entries);
    expect(native.skipped).toEqual(find.skipped);
  });

  test('a tree deeper than the soft descriptor limit allows at two per level is walked whole', async () => {
    // 600 levels on both sides need ~1,200 descriptors; a soft limit of 256 (1024 is systemd's
    // default) used to end the walk at ~125 levels with "Too many open files"
    const D = path.join(TMP, 'deep');
    for (const side of ['u', 'l']) {
      const p = path.join(D, side, ...Array<string>(600).fill('d'));
      fs.mkdirSync(p, { recursive: true });
      fs.writeFileSync(path.join(p, 'f'), side);
    }
    const helper = scanHelper().path;
    expect(helper).not.toBeNull();
    const r = spawnSync('sh', ['-c', 'ulimit -Sn 256 && exec "$0" -l "$1" "$2"', helper!, path.join(D, 'l'), path.join(D, 'u')], {
      maxBuffer: 1 << 26,
    });
    expect(r.stderr.toString()).toBe('');
    expect(r.status).toBe(0);
    const headers = r.stdout
      .toString('latin1')
      .split('\0')
      .filter((f) => /^40755 /.test(f));
    expect(headers).toHaveLength(600);
  });
});

// Scan speed (100k entries vs find -printf) is measured by `npm run bench` (figure 4), not
// asserted here: timed tests fail on a busy machine.
