// base_format = erofs and squashfs, booted (QEMU, TCG): the shared test image re-packed — the
// base image made from its base.cpio.zst by the build's writer, its initramfs with
// MKMA_BASE_FORMAT changed — with a layer that deletes a base file, replaces a base directory
// and adds a file. The guest lists /usr and /etc of the tree as the layers left it
// (/overlay/base, the view middle:image that `mkma persist` compares with; the merged / has this
// boot's own changes in /etc on top), and the listing must equal that of `mkma unpack` of the
// same images.
//
// erofs, three boots: (1) the comparison above, then changes in the guest (a deleted base file,
// a replaced directory, an added and a modified file), `mkma persist --yes`, and the listing of
// the root overlay as it was saved; (2) a reboot from the same disk: the tree the layers give
// equals what the overlay showed; `mkma layers`, `mkma layers compact` and `mkma unpack` on the
// host (--path) on those images; (3) a boot of the compacted images: the same tree again.
//
// squashfs, one boot. squashfs keeps only user., trusted. and security. xattrs, and the test
// image, like every Debian image with systemd, has POSIX ACLs (system.posix_acl_* on
// /var/log/journal): the build must refuse it (checked here), and the boot uses a variant of
// the same base whose manifest leaves those ACLs out (the same data: no second pack). The test
// image itself keeps them: it is the ACL fixture of the cpio and erofs paths.
import { describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { initramfsWithBaseFormat, writeBaseImage, type ImageFormat } from '../../builder/base-image.js';
import { createReporter } from '../../lib/progress.js';
import { encodeManifestFrame } from '../../format/manifest.js';
import { readManifest } from '../../format/reader.js';
import { collectHardlinks, packEntries, walkTree } from '../../format/tree.js';
import { XattrReader } from '../../format/xattrs.js';
import { ArchiveWriter } from '../../format/writer.js';
import { listDiskFiles, readDiskFile } from '../../qemu/disk.js';
import { describeSmoke, DISK_LABEL, IMAGES_PATH, smokeBoot, type SmokeResult } from '../../qemu/smoke.js';
import { IMAGE_OUT, MKMA } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';
import { layerInAnyState } from '../helpers/layer-names.js';
import { layerId } from '../../format/names.js';

/** The listing, the same command on both sides: type, mode, owner, size, mtime, name, link target. */
// (a directory's size is its filesystem's, erofs/overlayfs or the host's ext4: not part of the
// tree; mtimes in whole seconds, as a layer stores them)
const LIST = `{ find usr etc ! -type d -printf '%y %m %U:%G %s %Ts %p -> %l\\n'; find usr etc -type d -printf '%y %m %U:%G %Ts %p\\n'; } | LC_ALL=C sort`;

const FIRST_LAYER = 'persistence.20260101T000000Z.cpio.zst';

/** Shell for run.sh: the listing of DIR, gzipped, into /run/NAME (copied to the disk by `toDisk`). */
const listInto = (dir: string, name: string) => `(cd ${dir} && ${LIST}) | gzip -c > /run/${name}`;

/**
 * Shell for run.sh: /run's listings onto the storage disk's root, read back on the host (10,000
 * lines through the console can be cut by the kernel's own messages: seen in CI, a corrupt gzip
 * stream). Mounted only now: `mkma persist` mounts the same device itself.
 */
const toDisk = (names: string[]) =>
  [
    `mkdir -p /run/listing && mount "$(blkid -L ${DISK_LABEL})" /run/listing`,
    `cp ${names.map((n) => `/run/${n}`).join(' ')} /run/listing/ && sync && umount /run/listing && echo "listings written"`,
  ].join('\n');

/** The images of a test boot in `dir` (new): the test image's base.cpio.zst (or `base`), its base image, the first layer. */
async function prepare(dir: string, format: ImageFormat, base = path.join(IMAGE_OUT, 'base.cpio.zst')) {
  const images = path.join(dir, 'images');
  const out = path.join(dir, 'out');
  fs.mkdirSync(images, { recursive: true });
  fs.mkdirSync(out, { recursive: true });
  fs.linkSync(base, path.join(images, 'base.cpio.zst'));
  fs.linkSync(path.join(IMAGE_OUT, 'vmlinuz'), path.join(out, 'vmlinuz'));
  initramfsWithBaseFormat(path.join(IMAGE_OUT, 'initramfs.cpio.zst'), path.join(out, 'initramfs.cpio.zst'), dir, format);
  await writeBaseImage({ format, basePath: path.join(images, 'base.cpio.zst'), outDir: images, workDir: dir, unpacker: null });

  // a layer: a deleted base file, a base directory replaced by a file (whiteout + opaque work in
  // the middle directory), an added file
  const upper = path.join(dir, 'upper');
  fs.mkdirSync(path.join(upper, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(upper, 'etc/mkma-e2e-erofs'), 'from a layer\n');
  fs.writeFileSync(path.join(upper, 'etc/apt'), 'was a directory\n');
  const w = new ArchiveWriter(path.join(images, FIRST_LAYER), { kind: 'layer', level: 3, mode: 0o600 });
  const x = new XattrReader(upper);
  await packEntries(w, walkTree(upper), collectHardlinks(walkTree(upper)), (e) => x.add(e.rel));
  for (const r of (await x.finish()).records) w.addXattrs(r);
  w.addDeleted('etc/issue.net');
  w.addDeleted('etc/apt');
  await w.finish();
  return { images, out };
}

/** One boot with a run.sh; prints its time. */
async function boot(o: { dir: string; name: string; out: string; images: string; script: string[]; fresh: boolean }): Promise<SmokeResult> {
  const data = path.join(o.dir, `data-${o.name}`);
  fs.rmSync(data, { recursive: true, force: true });
  fs.mkdirSync(data);
  fs.writeFileSync(path.join(data, 'run.sh'), o.script.join('\n') + '\n');
  const r = await smokeBoot({
    out: o.out,
    imagesDir: o.images,
    reporter: createReporter({ quiet: true }),
    env: { MKMA_QEMU_ACCEL: 'tcg' },
    fresh: o.fresh,
    testDataDir: data,
    timeoutSec: 480,
    logPath: path.join(o.dir, `${o.name}.log`),
  });
  process.stderr.write(`\n${path.basename(o.dir)} ${o.name}: ${r.durationSec.toFixed(1)} s\n${describeSmoke(r)}\n`);
  expect(r.reason).toBe(r.ok ? r.reason : 'passed');
  expect(r.log).toMatch(/phase base-mounted /);
  expect(r.log).not.toMatch(/phase unpack-base/);
  expect(r.log).toMatch(/MKMA-TEST-OUT: listings written/);
  return r;
}

/** A listing the guest wrote onto the storage disk's root. */
async function guestListing(r: SmokeResult, dir: string, name: string): Promise<string> {
  const file = path.join(dir, name);
  await readDiskFile(r.diskPath, `/${name}`, file);
  const text = gunzipSync(fs.readFileSync(file)).toString('utf8');
  expect(text.split('\n').length).toBeGreaterThan(1000);
  return text;
}

/** The listing of `mkma unpack` of the images in `images`. */
function unpackedListing(images: string, tree: string): string {
  fs.rmSync(tree, { recursive: true, force: true });
  execFileSync('node', [MKMA, 'unpack', '--quiet', '--images', images, '--into', tree]);
  const text = spawnSync('sh', ['-c', `cd ${tree} && ${LIST}`], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout;
  fs.rmSync(tree, { recursive: true, force: true });
  return text;
}

/** A diff, not two 10,000-line strings: what is only in one of the listings (first 20 lines each). */
function difference(a: string, b: string): { onlyInFirst: string[]; onlyInSecond: string[] } {
  const sa = new Set(a.split('\n'));
  const sb = new Set(b.split('\n'));
  return {
    onlyInFirst: [...sa].filter((l) => !sb.has(l)).slice(0, 20),
    onlyInSecond: [...sb].filter((l) => !sa.has(l)).slice(0, 20),
  };
}
const SAME = { onlyInFirst: [], onlyInSecond: [] };

/** The first layer's changes, seen in a listing. */
function expectFirstLayer(listing: string): void {
  expect(listing).toMatch(/^f 644 0:0 13 \d+ etc\/mkma-e2e-erofs -> $/m);
  expect(listing).toMatch(/^f 644 0:0 16 \d+ etc\/apt -> $/m);
  expect(listing).not.toMatch(/ etc\/issue\.net /);
}

/** `phase layer-applied NAME` as a pattern */
const applied = (name: string) => new RegExp(`phase layer-applied ${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`);

const mkmaJson = (args: string[]) => JSON.parse(execFileSync('node', [MKMA, ...args, '--json'], { encoding: 'utf8' }));

// What the guest changes before `mkma persist`: a deleted base file, a base directory replaced by
// a directory with other contents (an opaque directory in the layer), an added and a modified file.
const CHANGES = [
  'rm /etc/issue',
  'rm -rf /etc/skel && mkdir /etc/skel && echo replaced >/etc/skel/only-this',
  'echo added >/usr/local/share/mkma-e2e-added',
  'echo modified >>/etc/mkma-e2e-erofs',
];

describe('boot with base_format = erofs (QEMU, TCG): persist, reboot, compact, boot', () => {
  const dir = ownWorkDir('e2e-erofs');

  test("the guest's /usr and /etc equal `mkma unpack` of the same images, after a persist and after a compaction", async () => {
    fs.rmSync(dir, { recursive: true, force: true });
    const { images, out } = await prepare(dir, 'erofs');

    // boot 1: the layers' tree, then changes saved by `mkma persist`, and the overlay as saved
    // (a non-recursive bind mount of /: the overlay itself, without the mounts systemd put on it)
    const first = await boot({
      dir,
      name: 'boot1',
      out,
      images,
      fresh: true,
      script: [
        'echo "root: $(findmnt -n -o FSTYPE /) lower: $(findmnt -n -o FSTYPE /overlay/image)"',
        listInto('/overlay/base', 'base-1.gz'),
        ...CHANGES,
        'mkma persist --yes --message "e2e erofs" 2>&1; echo "persist exit: $?"',
        'mkdir -p /run/rootview && mount --bind / /run/rootview',
        listInto('/run/rootview', 'merged-1.gz'),
        'umount /run/rootview',
        toDisk(['base-1.gz', 'merged-1.gz']),
      ],
    });
    expect(first.log).toMatch(applied(FIRST_LAYER));
    expect(first.log).toMatch(/MKMA-TEST-OUT: root: overlay lower: erofs/);
    expect(first.log).toMatch(/MKMA-TEST-OUT: persist exit: 0/);
    const base1 = await guestListing(first, dir, 'base-1.gz');
    expectFirstLayer(base1);
    expect(difference(base1, unpackedListing(images, path.join(dir, 'unpacked')))).toEqual(SAME);
    const merged1 = await guestListing(first, dir, 'merged-1.gz');
    expect(merged1).toMatch(/^f 644 0:0 6 \d+ usr\/local\/share\/mkma-e2e-added -> $/m);
    expect(merged1).not.toMatch(/ etc\/issue -> /);
    const saved = (await listDiskFiles(first.diskPath, IMAGES_PATH)).filter((n) => n.startsWith('persistence.') && n !== FIRST_LAYER);
    expect(saved).toHaveLength(1);

    // boot 2, same disk: the tree the two layers give is the overlay as it was saved
    const second = await boot({
      dir,
      name: 'boot2',
      out,
      images,
      fresh: false,
      script: [listInto('/overlay/base', 'base-2.gz'), toDisk(['base-2.gz'])],
    });
    // a new layer is on trial: boot 2 spends a try on it (renamed) before applying it
    expect(second.log).toMatch(new RegExp(`phase layer-applied ${layerInAnyState(saved[0])}`));
    const base2 = await guestListing(second, dir, 'base-2.gz');
    expect(base2).toMatch(/^d 755 0:0 \d+ etc\/skel$/m);
    expect(base2.split('\n').filter((l) => l.includes(' etc/skel/'))).toEqual([
      expect.stringMatching(/^f 644 0:0 9 \d+ etc\/skel\/only-this -> $/),
    ]);
    expect(difference(merged1, base2)).toEqual(SAME);

    // on the host: the stick's images (the guest's layer read back from the disk), listed and compacted
    const stick = path.join(dir, 'stick');
    fs.mkdirSync(stick);
    for (const n of fs.readdirSync(images)) fs.linkSync(path.join(images, n), path.join(stick, n));
    const now = (await listDiskFiles(second.diskPath, IMAGES_PATH)).filter((n) => new RegExp(`^${layerInAnyState(saved[0])}$`).test(n));
    expect(now).toHaveLength(1);
    await readDiskFile(second.diskPath, `${IMAGES_PATH}/${now[0]}`, path.join(stick, now[0]));
    // compaction takes active layers only: one still on trial (the test powers off as soon as its
    // listing is written, maybe before mkma-boot-good.service ran) is accepted first, as a user would
    const id = layerId(now[0])!;
    if (now[0].includes('@trial')) mkmaJson(['layers', 'bless', id, '--path', stick]);
    const active = `persistence.${id}.cpio.zst`;
    const before = mkmaJson(['layers', '--path', stick]);
    expect(JSON.stringify(before)).toContain(FIRST_LAYER);
    expect(JSON.stringify(before)).toContain(active);
    const compacted = mkmaJson(['layers', 'compact', '--quiet', '--path', stick]);
    expect(compacted.replaced).toEqual([FIRST_LAYER, active]);
    const layers = fs.readdirSync(stick).filter((n) => n.startsWith('persistence.'));
    expect(layers).toEqual([compacted.layer]);
    expect(JSON.stringify(mkmaJson(['layers', '--path', stick]))).toContain(compacted.layer);
    expect(difference(base2, unpackedListing(stick, path.join(dir, 'unpacked')))).toEqual(SAME);

    // boot 3, the compacted images on a fresh disk: the same tree
    const third = await boot({
      dir,
      name: 'boot3',
      out,
      images: stick,
      fresh: true,
      script: [listInto('/overlay/base', 'base-3.gz'), toDisk(['base-3.gz'])],
    });
    expect(third.log).toMatch(applied(compacted.layer));
    expect(third.log).toMatch(/phase layers-done 1 applied/);
    expect(difference(base2, await guestListing(third, dir, 'base-3.gz'))).toEqual(SAME);
  }, 1_800_000);
});

describe('boot with base_format = squashfs (QEMU, TCG)', () => {
  const dir = ownWorkDir('e2e-squashfs');

  test("the build refuses the test image's ACLs; without them, the guest's /usr and /etc equal `mkma unpack`", async () => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const real = path.join(IMAGE_OUT, 'base.cpio.zst');
    await expect(writeBaseImage({ format: 'squashfs', basePath: real, outDir: dir, workDir: dir, unpacker: null })).rejects.toThrow(
      /squashfs cannot store the extended attributes system\.posix_acl_access, system\.posix_acl_default .*use base_format = "erofs"/,
    );
    expect(fs.readdirSync(dir)).toEqual([]);

    // the variant: the same DATA, a manifest without the ACLs
    const m = readManifest(real);
    const variant = path.join(dir, 'base-without-acls.cpio.zst');
    const data = fs.readFileSync(real).subarray(0, m.dataBytes);
    const xattrs = m.xattrs
      .map((r) => ({ ...r, attrs: r.attrs.filter(([n]) => !n.startsWith('system.posix_acl_')) }))
      .filter((r) => r.attrs.length);
    expect(xattrs.length).toBe(m.xattrs.length - 1);
    fs.writeFileSync(variant, Buffer.concat([data, encodeManifestFrame({ ...m, xattrs })]), { mode: 0o600 });

    const { images, out } = await prepare(dir, 'squashfs', variant);
    const r = await boot({
      dir,
      name: 'boot',
      out,
      images,
      fresh: true,
      script: [
        'echo "root: $(findmnt -n -o FSTYPE /) lower: $(findmnt -n -o FSTYPE /overlay/image)"',
        'echo "cap: $(getcap /overlay/base/usr/bin/mtr-packet)"',
        listInto('/overlay/base', 'base.gz'),
        toDisk(['base.gz']),
      ],
    });
    expect(r.log).toMatch(applied(FIRST_LAYER));
    expect(r.log).toMatch(/MKMA-TEST-OUT: root: overlay lower: squashfs/);
    // security.* xattrs are kept: the file capability of the base
    expect(r.log).toMatch(/MKMA-TEST-OUT: cap: \/overlay\/base\/usr\/bin\/mtr-packet cap_net_raw=ep/);
    const guest = await guestListing(r, dir, 'base.gz');
    expectFirstLayer(guest);
    expect(difference(guest, unpackedListing(images, path.join(dir, 'unpacked')))).toEqual(SAME);
  }, 900_000);
});
