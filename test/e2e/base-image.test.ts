// base_format = erofs, booted (QEMU, TCG): the shared test image re-packed — base.erofs made
// from its base.cpio.zst by the build's writer, its initramfs with MKMA_BASE_FORMAT='erofs' —
// with a layer that deletes a base file, replaces a base directory and adds a file. The guest
// lists /usr and /etc of the booted tree as the layers left it (/overlay/base, the view
// middle:image that `mkma persist` compares with; the merged / has this boot's own changes in
// /etc on top), and the listing must equal that of `mkma unpack` of the same images.
import { describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { initramfsWithBaseFormat, writeBaseImage } from '../../builder/base-image.js';
import { createReporter } from '../../lib/progress.js';
import { collectHardlinks, packEntries, walkTree } from '../../format/tree.js';
import { XattrReader } from '../../format/xattrs.js';
import { ArchiveWriter } from '../../format/writer.js';
import { readDiskFile } from '../../qemu/disk.js';
import { describeSmoke, DISK_LABEL, smokeBoot } from '../../qemu/smoke.js';
import { IMAGE_OUT, MKMA, WORK } from '../helpers/paths.js';

/** The listing, the same command on both sides: type, mode, owner, size, mtime, name, link target. */
// (a directory's size is its filesystem's, erofs/overlayfs or the host's ext4: not part of the tree)
const LIST = `{ find usr etc ! -type d -printf '%y %m %U:%G %s %T@ %p -> %l\\n'; find usr etc -type d -printf '%y %m %U:%G %T@ %p\\n'; } | LC_ALL=C sort`;

/** the guest's listing, gzipped, on the storage disk's root */
const LISTING = 'erofs-listing.gz';

describe('boot with base_format = erofs (QEMU, TCG)', () => {
  const dir = path.join(WORK, 'e2e-erofs');

  test("the guest's /usr and /etc equal `mkma unpack` of the same images", async () => {
    fs.rmSync(dir, { recursive: true, force: true });
    const images = path.join(dir, 'images');
    const out = path.join(dir, 'out');
    fs.mkdirSync(images, { recursive: true });
    fs.mkdirSync(out, { recursive: true });
    fs.linkSync(path.join(IMAGE_OUT, 'base.cpio.zst'), path.join(images, 'base.cpio.zst'));
    fs.linkSync(path.join(IMAGE_OUT, 'vmlinuz'), path.join(out, 'vmlinuz'));
    initramfsWithBaseFormat(path.join(IMAGE_OUT, 'initramfs.cpio.zst'), path.join(out, 'initramfs.cpio.zst'), dir, 'erofs');
    await writeBaseImage({ format: 'erofs', basePath: path.join(images, 'base.cpio.zst'), outDir: images, workDir: dir, unpacker: null });

    // a layer: a deleted base file, a base directory replaced by a file (whiteout + opaque
    // work in the middle directory), an added file
    const upper = path.join(dir, 'upper');
    fs.mkdirSync(path.join(upper, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(upper, 'etc/mkma-e2e-erofs'), 'from a layer\n');
    fs.writeFileSync(path.join(upper, 'etc/apt'), 'was a directory\n');
    const layer = path.join(images, 'persistence.20260101T000000Z.cpio.zst');
    const w = new ArchiveWriter(layer, { kind: 'layer', level: 3, mode: 0o600 });
    const x = new XattrReader(upper);
    await packEntries(w, walkTree(upper), collectHardlinks(walkTree(upper)), (e) => x.add(e.rel));
    for (const r of (await x.finish()).records) w.addXattrs(r);
    w.addDeleted('etc/issue.net');
    w.addDeleted('etc/apt');
    await w.finish();

    const data = path.join(dir, 'data');
    fs.mkdirSync(data);
    fs.writeFileSync(
      path.join(data, 'run.sh'),
      [
        'echo "root: $(findmnt -n -o FSTYPE /) lower: $(findmnt -n -o FSTYPE /overlay/image)"',
        // onto the storage disk, read back on the host: 10,000 lines through the console can be
        // cut by the kernel's own messages (seen in CI: a corrupt gzip stream)
        `mkdir -p /run/listing && mount "$(blkid -L ${DISK_LABEL})" /run/listing`,
        `(cd /overlay/base && ${LIST}) | gzip -c > /run/listing/${LISTING} && sync && umount /run/listing && echo "listing written"`,
      ].join('\n') + '\n',
    );
    const r = await smokeBoot({
      out,
      imagesDir: images,
      reporter: createReporter({ quiet: true }),
      env: { MKMA_QEMU_ACCEL: 'tcg' },
      fresh: true,
      testDataDir: data,
      timeoutSec: 480,
      logPath: path.join(dir, 'console.log'),
    });
    process.stderr.write(`\n${describeSmoke(r)}\n`);
    expect(r.reason).toBe(r.ok ? r.reason : 'passed');
    expect(r.log).toMatch(/phase base-mounted /);
    expect(r.log).not.toMatch(/phase unpack-base/);
    expect(r.log).toMatch(/phase layer-applied persistence\.20260101T000000Z\.cpio\.zst/);
    expect(r.log).toMatch(/MKMA-TEST-OUT: root: overlay lower: erofs/);
    expect(r.log).toMatch(/MKMA-TEST-OUT: listing written/);
    const listing = path.join(dir, LISTING);
    await readDiskFile(r.diskPath, `/${LISTING}`, listing);
    const guest = gunzipSync(fs.readFileSync(listing)).toString('utf8');

    const tree = path.join(dir, 'unpacked');
    execFileSync('node', [MKMA, 'unpack', '--quiet', '--images', images, '--into', tree]);
    const host = spawnSync('sh', ['-c', `cd ${tree} && ${LIST}`], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout;
    expect(guest.split('\n').length).toBeGreaterThan(1000);
    expect(guest).toMatch(/^f 644 0:0 13 [\d.]+ etc\/mkma-e2e-erofs -> $/m);
    expect(guest).toMatch(/^f 644 0:0 16 [\d.]+ etc\/apt -> $/m);
    expect(guest).not.toMatch(/ etc\/issue\.net /);
    // a diff, not two 10,000-line strings
    const g = new Set(guest.split('\n'));
    const h = new Set(host.split('\n'));
    expect({
      onlyInGuest: [...g].filter((l) => !h.has(l)).slice(0, 20),
      onlyUnpacked: [...h].filter((l) => !g.has(l)).slice(0, 20),
    }).toEqual({
      onlyInGuest: [],
      onlyUnpacked: [],
    });
  }, 900_000);
});
