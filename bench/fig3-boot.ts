// Figure 3: booting, in QEMU under TCG (KVM hangs on this kind of host), same kernel, 2048 MiB,
// 2 vCPUs, the same storage disk holding the same base image.
// mkma's init (the real initramfs of the test image, whatever extractor it carries) against a
// reference init: the same initramfs with /init replaced by the classic script: mount the
// pseudo filesystems, insmod the same modules in the same order (read from the real init),
// wait for LABEL=MKMA with blkid, mount it, `zstd -dc base.cpio.zst | busybox cpio -id` into
// a tmpfs, mount the overlay, switch_root. Both print mkma's phase lines, so the time from
// `phase start` to `phase switch-root` (guest uptime, qemu/run.ts phaseTimings) is measured
// the same way; the target is ≤ 0.5×: mkma's init must be twice as fast as the classic one.
// Both go on to systemd's multi-user target (the image's mkma-test hook prints the marker),
// so kernel → multi-user is reported for both too (informational).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BASE_NAME } from '../format/names.js';
import { buildUnpacker } from '../builder/unpacker.js';
import { makeImagesDisk } from '../qemu/disk.js';
import { bootQemu, MULTI_USER_MARKER, phaseTimings, type PhaseTimings } from '../qemu/run.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { EROFS_FILE, makeErofsBase, makeErofsInitramfs, makeProbeDisks, ramUsedKiB, systemdDetail } from './fig3-image.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, values, type Sample } from './stats.js';
import { CACHE, HarnessError, log, rmrf, sh, shQuote } from './util.js';

const MEMORY_MIB = 2048;
const CPUS = 2;
const TIMEOUT_SEC = 600;
const LABEL = 'MKMA';
const IMAGES_PATH = '/mkma';

/** The module lists of the real init, in its load order. */
export function initModules(initText: string): { storage: string[]; ext4: string[]; overlay: string[] } {
  const list = (re: RegExp, what: string) => {
    const m = re.exec(initText);
    if (!m) throw new HarnessError(`cannot find ${what} in the real init`);
    return m[1].split(/\s+/).filter(Boolean);
  };
  return {
    storage: list(/^\s*MKMA_MODULES_STORAGE='([^']*)'/m, 'MKMA_MODULES_STORAGE'),
    ext4: list(/^\s*ext4\) echo '([^']*)'/m, 'the fs_modules ext4 line'),
    overlay: list(/^\s*MKMA_MODULES_OVERLAY='([^']*)'/m, 'MKMA_MODULES_OVERLAY'),
  };
}

/** The classic init: no mkma code, same phase lines. */
export function referenceInit(mods: { storage: string[]; ext4: string[]; overlay: string[] }): string {
  const insmod = (names: string[]) => `for m in ${names.join(' ')}; do insmod /usr/lib/modules/mkma/$m.ko 2>/dev/null; done`;
  return `#!/bin/sh
# Reference init of mkma's boot benchmark (bench/fig3-boot.ts): the classic RAM boot.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
/usr/bin/busybox --install -s
mkdir -p /dev /proc /sys /run /mnt/storage /overlay
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev 2>/dev/null
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
phase() { read -r up _ </proc/uptime; echo "mkma[$up]: phase $*"; }
fail() { read -r up _ </proc/uptime; echo "mkma[$up]: FATAL reference init: $*"; sleep 2; poweroff -f; }
phase start "reference init"
${insmod(mods.storage)}
phase modules-loaded
n=0
while :; do
	dev=$(blkid -l -o device -t LABEL=${LABEL} 2>/dev/null)
	[ -n "$dev" ] && break
	n=$((n + 1))
	[ "$n" -gt 300 ] && fail "LABEL=${LABEL} did not appear"
	sleep 0.1
done
phase device-found "$dev"
${insmod(mods.ext4)}
mount -o ro -t ext4 "$dev" /mnt/storage || fail "cannot mount $dev"
mount -t tmpfs -o size=50%,mode=0755 tmpfs /overlay || fail "cannot mount the tmpfs"
mkdir -p /overlay/base /overlay/fresh /overlay/work /overlay/merge
phase unpack-base
cd /overlay/base || fail "no /overlay/base"
zstd -q -dc /mnt/storage${IMAGES_PATH}/${BASE_NAME} | busybox cpio -id 2>/dev/null || fail "unpacking the base failed"
cd /
phase base-unpacked
${insmod(mods.overlay)}
mount -t overlay overlay -o lowerdir=/overlay/base,upperdir=/overlay/fresh,workdir=/overlay/work,redirect_dir=off,metacopy=off /overlay/merge || fail "cannot mount the overlay"
umount /mnt/storage
phase switch-root /sbin/init
for m in /dev /proc /sys /run; do
	mkdir -p "/overlay/merge$m"
	mount --move "$m" "/overlay/merge$m"
done
exec switch_root /overlay/merge /sbin/init
`;
}

/** Unpacks the real initramfs, replaces /init, packs it again (newc + zstd, as the kernel wants). */
function makeReferenceInitramfs(real: string, out: string, work: string): { init: string } {
  const staging = path.join(work, 'ref-initramfs');
  rmrf(staging);
  fs.mkdirSync(staging, { recursive: true });
  sh('bash', ['-c', `set -o pipefail; cd ${shQuote(staging)} && zstd -q -dc ${shQuote(real)} | cpio -idm --quiet`]);
  const realInit = fs.readFileSync(path.join(staging, 'init'), 'utf8');
  const init = referenceInit(initModules(realInit));
  fs.writeFileSync(path.join(staging, 'init'), init, { mode: 0o755 });
  fs.chmodSync(path.join(staging, 'init'), 0o755);
  sh('bash', ['-c', `set -o pipefail; cd ${shQuote(staging)} && find . | cpio -o -H newc --quiet | zstd -q -T0 -12 > ${shQuote(out)}`]);
  rmrf(staging);
  return { init };
}

/** The boot benchmarks' storage: a fresh disk labelled MKMA with `files` of WORK/images (the base; figure 3 adds erofs's), and the command line that finds it. */
export async function baseDisk(work: string, files: string[] = [BASE_NAME]): Promise<{ diskPath: string; append: string }> {
  const diskPath = path.join(work, 'disk.img');
  await makeImagesDisk({
    diskPath,
    imagesDir: path.join(work, 'images'),
    label: LABEL,
    fresh: true,
    files,
    imagesPath: IMAGES_PATH,
  });
  return { diskPath, append: `mkma_storage_device=LABEL=${LABEL} mkma_images_path=${IMAGES_PATH} mkma_test` };
}

interface BootSample extends Sample {
  timings: PhaseTimings;
  wallSec: number;
  /** MemTotal − MemAvailable at multi-user, KiB (figure 3b) */
  ramKiB: number | null;
}

export const figure: Figure = {
  id: 3,
  title: 'boot to switch_root (QEMU, TCG)',
  async run(inp: Inputs): Promise<Row[]> {
    const image = inp.testImage();
    // A private copy: the tests rebuild .test-work/image at any time.
    const work = path.join(CACHE, 'boot');
    rmrf(work);
    fs.mkdirSync(path.join(work, 'images'), { recursive: true });
    for (const f of ['vmlinuz', 'initramfs.cpio.zst']) fs.copyFileSync(path.join(image, f), path.join(work, f));
    fs.copyFileSync(path.join(image, BASE_NAME), path.join(work, 'images', BASE_NAME));
    const kernel = path.join(work, 'vmlinuz');
    const realInitrd = path.join(work, 'initramfs.cpio.zst');
    const refInitrd = path.join(work, 'reference-initramfs.cpio.zst');
    makeReferenceInitramfs(realInitrd, refInitrd, work);
    const hasUnpacker = sh('bash', ['-c', `zstd -q -dc ${shQuote(realInitrd)} | cpio -t --quiet 2>/dev/null`])
      .split('\n')
      .some((l) => /(^|\/)mkma-unpack$/.test(l));

    // the other base format: the same tree and initramfs, re-packed (bench/fig3-image.ts)
    const erofsInitrd = path.join(work, 'erofs-initramfs.cpio.zst');
    makeErofsInitramfs(realInitrd, erofsInitrd, work);
    const hostUnpacker = buildUnpacker({ cacheDir: path.join(CACHE, 'unpacker') }).path;
    await makeErofsBase(path.join(work, 'images'), work, hostUnpacker);
    const probes = await makeProbeDisks(work);

    const { diskPath, append } = await baseDisk(work, [BASE_NAME, EROFS_FILE]);

    const boot = async (initrd: string, name: string, round: number): Promise<BootSample> => {
      const logPath = path.join(work, `console-${name}-${round + 1}.log`);
      const r = await bootQemu({
        kernel,
        initrd,
        // the first round's probe also records systemd-analyze (its own cost comes after the marker)
        disks: [
          { path: diskPath, readonly: true },
          { path: round === 0 ? probes.detail : probes.plain, readonly: true },
        ],
        append,
        memoryMiB: MEMORY_MIB,
        cpus: CPUS,
        accel: 'tcg',
        interactive: false,
        timeoutSec: TIMEOUT_SEC,
        logPath,
        successMarker: MULTI_USER_MARKER,
        waitForPoweroff: true,
      });
      const detail = systemdDetail(r.log);
      if (detail.length) fs.writeFileSync(path.join(work, `systemd-${name}.txt`), detail.join('\n') + '\n');
      const t = phaseTimings(r.log);
      if (t.kernelToInit === undefined || t.switchRoot === undefined) {
        throw new HarnessError(`${name} boot: no start/switch-root phase lines (${r.reason}); console log ${logPath}`);
      }
      if (!r.ok) log(`  ${name} boot did not reach multi-user: ${r.reason}`);
      return { value: (t.switchRoot - t.kernelToInit) * 1000, timings: t, wallSec: r.durationSec, ramKiB: ramUsedKiB(r.log) };
    };

    const runs = inp.runs(3, 1);
    const [mk, ref, ero] = await interleave<BootSample>(
      [
        { name: 'mkma init', run: (round) => boot(realInitrd, 'mkma', round) },
        { name: 'reference init', run: (round) => boot(refInitrd, 'reference', round) },
        { name: 'mkma init (erofs)', run: (round) => boot(erofsInitrd, 'mkma-erofs', round) },
      ],
      { runs, label: 'start→switch-root', fmt: (v) => `${(v / 1000).toFixed(2)} s` },
    );

    const mu = (xs: BootSample[]) =>
      xs
        .map((s) => s.timings.multiUser)
        .filter((x): x is number => x !== undefined)
        .map((x) => x * 1000);
    const mkMu = mu(mk);
    const refMu = mu(ref);
    const after = (xs: BootSample[]) => {
      const d = xs.filter((s) => s.timings.multiUser !== undefined).map((s) => (s.timings.multiUser! - s.timings.switchRoot!) * 1000);
      return d.length ? median(d) : null;
    };
    const extractor = hasUnpacker ? 'mkma-unpack (in the initramfs)' : 'zstd | busybox cpio (no mkma-unpack in the initramfs)';
    return [
      ratioRow({
        figure: 3,
        id: '3.init',
        what: 'boot: init start → switch_root',
        unit: 'ms',
        mkma: median(values(mk)),
        reference: median(values(ref)),
        target: 0.3,
        referenceLabel: 'classic init: insmod, blkid LABEL=, mount, zstd -dc base | busybox cpio -id, overlay, switch_root',
        note: `QEMU TCG, ${MEMORY_MIB} MiB, ${CPUS} vCPUs, guest uptimes; mkma's init extracts with ${extractor}`,
        samples: { mkma: values(mk), reference: values(ref) },
      }),
      ratioRow({
        figure: 3,
        id: '3.multi-user',
        what: 'boot: kernel → multi-user',
        unit: 'ms',
        mkma: mkMu.length ? median(mkMu) : null,
        reference: refMu.length ? median(refMu) : null,
        target: 0.6,
        referenceLabel: 'the same boot with the reference init',
        note:
          mkMu.length === mk.length && refMu.length === ref.length
            ? undefined
            : `multi-user reached in ${mkMu.length}/${mk.length} mkma and ${refMu.length}/${ref.length} reference boots`,
        samples: { mkma: mkMu, reference: refMu },
      }),
      ratioRow({
        figure: 3,
        id: '3.systemd',
        what: 'boot: switch_root → multi-user',
        unit: 'ms',
        mkma: after(mk),
        reference: after(ref),
        target: null,
        referenceLabel: 'the same systemd, after the reference init',
      }),
      ratioRow({
        figure: 3,
        id: '3.kernel',
        what: 'boot: kernel → init start',
        unit: 'ms',
        mkma: median(mk.map((s) => s.timings.kernelToInit! * 1000)),
        reference: median(ref.map((s) => s.timings.kernelToInit! * 1000)),
        target: null,
        referenceLabel: 'the same kernel with the reference initramfs',
      }),
      ...imageRows(mk, ref, ero, after),
    ];
  },
};

/** Figure 3's rows of the erofs mode, and figure 3b: RAM used at multi-user (issue 14). */
function imageRows(mk: BootSample[], ref: BootSample[], ero: BootSample[], after: (xs: BootSample[]) => number | null): Row[] {
  const mu = (xs: BootSample[]) => xs.filter((s) => s.timings.multiUser !== undefined).map((s) => s.timings.multiUser! * 1000);
  const ram = (xs: BootSample[]) => xs.map((s) => s.ramKiB).filter((x): x is number => x !== null);
  const med = (xs: number[]) => (xs.length ? median(xs) : null);
  const refRam = ram(ref);
  const refLabel = "the reference init's cpio boot (base unpacked into a tmpfs)";
  return [
    ratioRow({
      figure: 3,
      id: '3.init.erofs',
      what: 'boot: init start → switch_root, base_format erofs',
      unit: 'ms',
      mkma: median(values(ero)),
      reference: median(values(ref)),
      target: 0.1,
      referenceLabel: 'the classic init (cpio unpack)',
      note: 'base.erofs (lz4) copied into the tmpfs, loop-mounted; the same initramfs otherwise',
      samples: { mkma: values(ero), reference: values(ref) },
    }),
    ratioRow({
      figure: 3,
      id: '3.multi-user.erofs',
      what: 'boot: kernel → multi-user, base_format erofs',
      unit: 'ms',
      mkma: med(mu(ero)),
      reference: med(mu(ref)),
      target: 0.6,
      referenceLabel: 'the same boot with the reference init',
      samples: { mkma: mu(ero), reference: mu(ref) },
    }),
    ratioRow({
      figure: 3,
      id: '3.systemd.erofs',
      what: 'boot: switch_root → multi-user, base_format erofs',
      unit: 'ms',
      mkma: after(ero),
      reference: after(ref),
      target: null,
      referenceLabel: 'the same systemd, after the reference init',
    }),
    ratioRow({
      figure: 3,
      id: '3b.ram',
      what: 'RAM used at multi-user (MemTotal − MemAvailable), cpio',
      unit: 'KiB',
      mkma: med(ram(mk)),
      reference: med(refRam),
      target: 1.0,
      referenceLabel: refLabel,
      samples: { mkma: ram(mk), reference: refRam },
    }),
    ratioRow({
      figure: 3,
      id: '3b.ram.erofs',
      what: 'RAM used at multi-user (MemTotal − MemAvailable), erofs',
      unit: 'KiB',
      mkma: med(ram(ero)),
      reference: med(refRam),
      target: 0.6,
      referenceLabel: refLabel,
      samples: { mkma: ram(ero), reference: refRam },
    }),
  ];
}
