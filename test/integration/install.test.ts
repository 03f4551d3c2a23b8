// mkma install and mkma update on disk image files, as root, without QEMU: the partition table
// sgdisk reads back, the files on the ESP (mtools) and on the data partition (debugfs, at the
// partition's offset: nothing mounted), a second hostname added beside the first, an update
// keeping the layers and the previous generation, and every refusal with its exit status and
// the target's bytes unchanged. The images are small stand-ins: GRUB boots nothing here (the
// e2e test boots a real one).
import { beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parsePartitionTable, type PartitionRow } from '../../install/layout.js';
import { fakeBuild, useScratchDir } from '../helpers/fake-build.js';
import { MKMA } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';

const TMP = ownWorkDir('install-it');

function mkma(args: string[]): SpawnSyncReturns<string> {
  // stdin is not a terminal: without --yes, install stops before writing (the confirmation)
  return spawnSync(process.execPath, [MKMA, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const table = (img: string): PartitionRow[] => parsePartitionTable(sh('sgdisk', ['--print', img]));
const offset = (img: string, n: number) => table(img).find((r) => r.number === n)!.startSector * 512;
/** `ls` of a directory on the ESP, names lower-cased (FAT). */
const espLs = (img: string, dir: string) =>
  sh('mdir', ['-i', `${img}@@${offset(img, 2)}`, '-b', `::${dir}`])
    .split('\n')
    .filter(Boolean)
    .map((l) => path.posix.basename(l.replace(/\/$/, '')).toLowerCase())
    .sort();
const espCat = (img: string, file: string) => sh('mtype', ['-i', `${img}@@${offset(img, 2)}`, `::${file}`]);
const espSha256 = (img: string, file: string) =>
  createHash('sha256')
    .update(spawnSync('mtype', ['-i', `${img}@@${offset(img, 2)}`, `::${file}`]).stdout)
    .digest('hex');
const debugfs = (img: string, req: string, write = false) =>
  sh('debugfs', [...(write ? ['-w'] : []), '-R', req, `${img}?offset=${offset(img, 3)}`]);
/** name → inode of a directory on the data partition */
function dataLs(img: string, dir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of debugfs(img, `ls -l ${dir}`).split('\n')) {
    const m = /^\s*([0-9]+)\s+[0-7]+\s.*\s(\S+)\s*$/.exec(line);
    if (m && m[2] !== '.' && m[2] !== '..') out.set(m[2], Number(m[1]));
  }
  return out;
}

/** What says "nothing was written": the file's bytes and mtime. */
function fingerprint(file: string): string {
  const st = fs.statSync(file);
  return `${createHash('sha256').update(fs.readFileSync(file)).digest('hex')} ${st.mtimeMs} ${st.size}`;
}

useScratchDir(TMP);

describe('mkma install onto a disk image file', () => {
  const img = path.join(TMP, 'stick.img');
  let alpha: string;

  beforeAll(() => {
    alpha = fakeBuild(path.join(TMP, 'alpha'), 'alpha', 'alpha-1');
  });

  test('a GPT with BIOS boot 1 MiB, an ESP (FAT32) and the data partition (ext4 "MKMA"), named by UUID on the command line', () => {
    const r = mkma(['install', img, '--size', '400M', '--esp-size', '64M', '--yes', '--out', alpha, '--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const result = JSON.parse(r.stdout) as { dataUuid: string; cmdline: string; partitioned: boolean; hosts: string[] };
    expect(result.partitioned).toBe(true);
    expect(result.hosts).toEqual(['alpha']);
    expect(table(img)).toEqual([
      { number: 1, startSector: 2048, endSector: 4095, code: 'EF02', name: 'mkma-bios' },
      { number: 2, startSector: 4096, endSector: 4096 + 64 * 2048 - 1, code: 'EF00', name: 'mkma-esp' },
      { number: 3, startSector: 4096 + 64 * 2048, endSector: 400 * 2048 - 2048 - 1, code: '8300', name: 'mkma-data' },
    ]);
    const esp = spawnSync('blkid', ['-p', '-O', String(offset(img, 2)), '-o', 'export', img], { encoding: 'utf8' }).stdout;
    expect(esp).toMatch(/^TYPE=vfat$/m);
    expect(esp).toMatch(/^VERSION=FAT32$/m);
    expect(esp).toMatch(/^LABEL=MKMA-ESP$/m);
    const data = spawnSync('blkid', ['-p', '-O', String(offset(img, 3)), '-o', 'export', img], { encoding: 'utf8' }).stdout;
    expect(data).toMatch(/^TYPE=ext4$/m);
    expect(data).toMatch(/^LABEL=MKMA$/m);
    expect(data).toContain(`UUID=${result.dataUuid}`);
    expect(result.cmdline).toBe(`mkma_storage_device=UUID=${result.dataUuid} mkma_images_path=/images/alpha mkma_base=base.g1.cpio.zst`);
    // GRUB for BIOS: boot.img in the MBR's code area, core.img in the BIOS boot partition
    const mbr = fs.readFileSync(img).subarray(0, 512);
    expect(mbr.subarray(510).toString('hex')).toBe('55aa');
    expect(mbr.subarray(0, 440).some((b) => b !== 0)).toBe(true);
    const core = Buffer.alloc(512);
    const fd = fs.openSync(img, 'r');
    fs.readSync(fd, core, 0, 512, offset(img, 1));
    fs.closeSync(fd);
    expect(core.some((b) => b !== 0)).toBe(true);
  });

  test('the ESP: GRUB for UEFI on the removable path, the menu, kernel and initramfs of the hostname', () => {
    expect(espLs(img, '/EFI/BOOT')).toEqual(['bootx64.efi']);
    expect(espLs(img, '/boot/grub')).toEqual(expect.arrayContaining(['grub.cfg', 'menu.cfg', 'i386-pc', 'x86_64-efi']));
    expect(espLs(img, '/mkma/alpha/g1')).toEqual(['generation.json', 'initramfs.cpio.zst', 'vmlinuz']);
    const built = JSON.parse(fs.readFileSync(path.join(alpha, 'mkma.json'), 'utf8')) as { outputs: Record<string, { sha256: string }> };
    expect(espSha256(img, '/mkma/alpha/g1/vmlinuz')).toBe(built.outputs.kernel.sha256);
    expect(espSha256(img, '/mkma/alpha/g1/initramfs.cpio.zst')).toBe(built.outputs.initramfs.sha256);
    const menu = espCat(img, '/boot/grub/menu.cfg');
    expect(menu).toMatch(/menuentry 'mkma: alpha' --id 'mkma-alpha'/);
    expect(menu).toMatch(/menuentry 'mkma: alpha, recovery \(no layers\)'.*\n.*\n.*mkma_layers=none/);
    expect(menu).not.toMatch(/\/dev\//);
  });

  test('the data partition: images/alpha/ with the base (its generation file and base.cpio.zst, one inode)', () => {
    const files = dataLs(img, '/images/alpha');
    expect([...files.keys()].sort()).toEqual(['base.cpio.zst', 'base.g1.cpio.zst']);
    expect(files.get('base.cpio.zst')).toBe(files.get('base.g1.cpio.zst'));
    expect(debugfs(img, 'cat /images/alpha/base.g1.cpio.zst').startsWith('alpha-1')).toBe(true);
  });

  test('a second hostname is added beside the first, whose files and layers stay as they were', () => {
    // a layer alpha's running system would have written
    const layer = path.join(TMP, 'persistence.20261201T000000Z.cpio.zst');
    fs.writeFileSync(layer, 'a layer');
    debugfs(img, `write ${layer} /images/alpha/persistence.20261201T000000Z.cpio.zst`, true);
    const alphaBefore = dataLs(img, '/images/alpha');
    const alphaEsp = espCat(img, '/mkma/alpha/g1/generation.json');
    const beta = fakeBuild(path.join(TMP, 'beta'), 'beta', 'beta-1');
    const r = mkma(['install', img, '--yes', '--out', beta, '--json']);
    expect(r.status).toBe(0);
    expect((JSON.parse(r.stdout) as { partitioned: boolean; hosts: string[] }).hosts).toEqual(['alpha', 'beta']);
    expect(dataLs(img, '/images/alpha')).toEqual(alphaBefore);
    expect(espCat(img, '/mkma/alpha/g1/generation.json')).toBe(alphaEsp);
    expect([...dataLs(img, '/images/beta').keys()].sort()).toEqual(['base.cpio.zst', 'base.g1.cpio.zst']);
    const menu = espCat(img, '/boot/grub/menu.cfg');
    expect([...menu.matchAll(/--id '([^']*)'/g)].map((m) => m[1])).toEqual([
      'mkma-alpha',
      'mkma-alpha-recovery',
      'mkma-beta',
      'mkma-beta-recovery',
    ]);
    // the same hostname again is update's job: refused, nothing written
    const before = fingerprint(img);
    const again = mkma(['install', img, '--yes', '--out', beta]);
    expect(again.status).toBe(2);
    expect(again.stderr).toMatch(/beta is already on .*stick\.img: use mkma update/);
    expect(fingerprint(img)).toBe(before);
  });

  test('mkma update: the new generation current, the layers kept, the previous one with its own entry; the one before goes', () => {
    fakeBuild(alpha, 'alpha', 'alpha-2');
    let r = mkma(['update', img, 'alpha', '--out', alpha, '--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      updated: true,
      generation: 2,
      previous: 1,
      layers: ['persistence.20261201T000000Z.cpio.zst'],
    });
    let files = dataLs(img, '/images/alpha');
    expect([...files.keys()].sort()).toEqual([
      'base.cpio.zst',
      'base.g1.cpio.zst',
      'base.g2.cpio.zst',
      'persistence.20261201T000000Z.cpio.zst',
    ]);
    expect(files.get('base.cpio.zst')).toBe(files.get('base.g2.cpio.zst'));
    expect(debugfs(img, 'cat /images/alpha/persistence.20261201T000000Z.cpio.zst')).toBe('a layer');
    let menu = espCat(img, '/boot/grub/menu.cfg');
    expect(menu).toMatch(
      /menuentry 'mkma: alpha' [^\n]*\n[^\n]*\n {2}linux \/mkma\/alpha\/g2\/vmlinuz [^\n]*mkma_base=base\.g2\.cpio\.zst\n/,
    );
    expect(menu).toMatch(
      /menuentry 'mkma: alpha, previous generation[^\n]*\n[^\n]*\n {2}linux \/mkma\/alpha\/g1\/vmlinuz [^\n]*mkma_base=base\.g1\.cpio\.zst\n/,
    );
    expect(menu).toMatch(/--id 'mkma-beta'/);

    // an unchanged build writes nothing
    const before = fingerprint(img);
    r = mkma(['update', img, 'alpha', '--out', alpha, '--json']);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ updated: false });
    expect(fingerprint(img)).toBe(before);

    // a third generation: g1 goes, g2 is the previous
    fakeBuild(alpha, 'alpha', 'alpha-3');
    expect(mkma(['update', img, '--out', alpha]).status).toBe(0);
    files = dataLs(img, '/images/alpha');
    expect([...files.keys()].sort()).toEqual([
      'base.cpio.zst',
      'base.g2.cpio.zst',
      'base.g3.cpio.zst',
      'persistence.20261201T000000Z.cpio.zst',
    ]);
    expect(espLs(img, '/mkma/alpha')).toEqual(['g2', 'g3']);
    menu = espCat(img, '/boot/grub/menu.cfg');
    expect(menu).toMatch(/previous generation[^\n]*\n[^\n]*\n {2}linux \/mkma\/alpha\/g2\/vmlinuz/);

    // a build of another hostname is not put in alpha's place
    const beta = fakeBuild(path.join(TMP, 'beta'), 'beta', 'beta-2');
    const wrong = mkma(['update', img, 'alpha', '--out', beta]);
    expect(wrong.status).toBe(2);
    expect(wrong.stderr).toMatch(/beta/);
  });
});

describe('refusals: exit status 2 and nothing written', () => {
  let images: string;
  beforeAll(() => {
    images = fakeBuild(path.join(TMP, 'gamma'), 'gamma', 'gamma-1');
  });

  test('neither a block device nor a regular file', () => {
    for (const [target, what] of [
      [TMP, 'a directory'],
      ['/dev/null', 'a character device'],
    ]) {
      const r = mkma(['install', target, '--yes', '--out', images]);
      expect(r.status).toBe(2);
      expect(r.stderr).toContain(`refusing ${target} is ${what}: mkma install writes to a block device (/dev/sdX) or a disk image file`);
    }
    expect(mkma(['install', path.join(TMP, 'none.img'), '--yes', '--out', images]).stderr).toMatch(/does not exist \(give --size/);
  });

  test('too small, with the size the images need; --size too small creates nothing', () => {
    const small = path.join(TMP, 'small.img');
    fs.writeFileSync(small, randomBytes(4096));
    fs.truncateSync(small, 100 * 1024 * 1024);
    const before = fingerprint(small);
    const r = mkma(['install', small, '--yes', '--out', images]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/refusing .*small\.img is too small: 100 MiB, and the images need at least [0-9.]+ MiB: 512 MiB for the ESP/);
    expect(fingerprint(small)).toBe(before);
    const created = path.join(TMP, 'created.img');
    const c = mkma(['install', created, '--size', '50M', '--yes', '--out', images]);
    expect(c.status).toBe(2);
    expect(c.stderr).toMatch(/--size 50 MiB is too small: the images need at least/);
    expect(fs.existsSync(created)).toBe(false);
  });

  test('a mounted device, and a file attached to a loop device', () => {
    const file = path.join(TMP, 'mounted.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 700 * 1024 * 1024);
    sh('mkfs.ext4', ['-q', '-F', file]);
    const loop = sh('losetup', ['--find', '--show', file]).trim();
    const mnt = path.join(TMP, 'mnt');
    fs.mkdirSync(mnt, { recursive: true });
    try {
      sh('mount', ['-o', 'ro', loop, mnt]);
      try {
        const before = fingerprint(file);
        const r = mkma(['install', loop, '--yes', '--out', images]);
        expect(r.status).toBe(2);
        expect(r.stderr).toContain(`refusing ${loop} is in use: ${loop} on ${mnt}; unmount it first`);
        const f = mkma(['install', file, '--yes', '--out', images]);
        expect(f.status).toBe(2);
        expect(f.stderr).toContain(`is attached to ${loop}; detach it first`);
        expect(fingerprint(file)).toBe(before);
      } finally {
        sh('umount', [mnt]);
      }
    } finally {
      sh('losetup', ['--detach', loop]);
    }
  });

  test("the running system's disk", () => {
    const root = sh('findmnt', ['-n', '-o', 'SOURCE', '/']).trim();
    const disk = root.startsWith('/dev/') ? sh('lsblk', ['-n', '-d', '-o', 'PKNAME', root]).trim() || path.basename(root) : '';
    if (!disk) {
      // a container's overlay root: no disk to refuse; the decision itself is in test/unit/install.test.ts
      expect(root).not.toMatch(/^\/dev\//);
      return;
    }
    const node = `/dev/${disk}`;
    // its first MiB (partition table, boot code); a sandbox may forbid reading the host's disk
    const head = () => {
      let fd: number;
      try {
        fd = fs.openSync(node, 'r');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EPERM') return 'unreadable';
        throw e;
      }
      const b = Buffer.alloc(1024 * 1024);
      fs.readSync(fd, b, 0, b.length, 0);
      fs.closeSync(fd);
      return createHash('sha256').update(b).digest('hex');
    };
    const before = head();
    // no --yes: were the check ever wrong, the missing confirmation still stops it
    const r = mkma(['install', node, '--out', images]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`refusing ${node} holds the running system's root filesystem`));
    expect(head()).toBe(before);
  });
});
