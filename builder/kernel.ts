// The image's kernel: where it is, its version, and trimming its modules for small images.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { moduleClosure } from './kernel-modules.js';
import { MkmaError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';

export interface KernelInfo {
  version: string;
  /** absolute path of the kernel image (in the chroot, or the host's with --host-kernel) */
  image: string;
  /** absolute path of the modules directory (…/lib/modules/<version>) */
  modulesDir: string;
}

export class KernelError extends MkmaError {}

const versionCompare = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });

/** The newest kernel installed in the chroot (there is normally exactly one). */
export function findImageKernel(chroot: string): KernelInfo {
  const modulesRoot = path.join(chroot, 'usr/lib/modules');
  const versions = fs.existsSync(modulesRoot)
    ? fs
        .readdirSync(modulesRoot)
        .filter((v) => fs.existsSync(path.join(chroot, 'boot', `vmlinuz-${v}`)))
        .sort(versionCompare)
    : [];
  const version = versions.at(-1);
  if (!version) {
    throw new KernelError(
      `no kernel in the image (no /boot/vmlinuz-* with matching /usr/lib/modules/*): ` +
        `set kernel_package in mkma.toml (e.g. linux-image-amd64) or use --host-kernel`,
    );
  }
  return { version, image: path.join(chroot, 'boot', `vmlinuz-${version}`), modulesDir: path.join(modulesRoot, version) };
}

/** --host-kernel: the running kernel's image and modules directory on this machine. */
export function hostKernelSource(): { version: string; image: string; modules: string } {
  const version = os.release();
  const image = `/boot/vmlinuz-${version}`;
  const mods = [`/usr/lib/modules/${version}`, `/lib/modules/${version}`].find((d) => fs.existsSync(d));
  if (!fs.existsSync(image) || !mods) {
    throw new KernelError(
      `--host-kernel: this machine's kernel ${version} has no ${image} or modules directory ` +
        `(not a Debian kernel?). Build without --host-kernel to use the image's own kernel package.`,
    );
  }
  return { version, image, modules: mods };
}

/** Where installHostKernel puts the host's kernel in the image. */
export function hostKernelInfo(chroot: string): KernelInfo {
  const { version } = hostKernelSource();
  return { version, image: path.join(chroot, 'boot', `vmlinuz-${version}`), modulesDir: path.join(chroot, 'usr/lib/modules', version) };
}

/**
 * What the host kernel copied into the image is: its version, and the size and mtime of its
 * image and module index (a reinstalled or rebuilt kernel of the same version changes them).
 */
export function hostKernelStamp(): string {
  const src = hostKernelSource();
  const st = (p: string) => {
    try {
      const s = fs.statSync(p, { bigint: true });
      return `${s.size}/${s.mtimeNs}`;
    } catch {
      return 'none';
    }
  };
  return `${src.version} ${st(src.image)} ${st(path.join(src.modules, 'modules.dep'))}`;
}

/** --host-kernel: the running kernel and its modules, copied into the image as the original mkma.sh did. */
export function installHostKernel(chroot: string): KernelInfo {
  const { image, modules: mods } = hostKernelSource();
  const info = hostKernelInfo(chroot);
  fs.rmSync(info.modulesDir, { recursive: true, force: true });
  fs.cpSync(mods, info.modulesDir, { recursive: true, verbatimSymlinks: true });
  fs.copyFileSync(image, info.image);
  return info;
}

/**
 * Keeps only `keep` (with dependencies) of the kernel's modules and re-indexes them. For test
 * images: the full set is ~100 MB that every TCG boot would unpack for nothing.
 */
export function trimModules(k: KernelInfo, keep: string[], chroot: string): { kept: number; removed: number } {
  const closure = moduleClosure(k.modulesDir, keep, { optional: true });
  const keepSet = new Set(closure.order);
  let kept = 0;
  let removed = 0;
  const walk = (dir: string, rel: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const abs = path.join(dir, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        walk(abs, r);
        if (fs.readdirSync(abs).length === 0) fs.rmdirSync(abs);
      } else if (/\.ko(\.(xz|zst|gz))?$/.test(e.name)) {
        if (keepSet.has(r)) kept++;
        else {
          fs.unlinkSync(abs);
          removed++;
        }
      }
    }
  };
  for (const top of ['kernel', 'updates', 'extra']) {
    const d = path.join(k.modulesDir, top);
    if (fs.existsSync(d)) walk(d, top);
  }
  runSync('depmod', ['-b', chroot, k.version]);
  return { kept, removed };
}

/**
 * Drivers every mkma initramfs carries, in groups: the init loads `storage` at once, then only
 * the group of the filesystem it finds on the storage device, then `overlay`. Loading every
 * filesystem up front cost 5 s under QEMU/TCG (btrfs pulls raid6_pq and xor, whose init
 * benchmarks their algorithms). Names missing from a kernel are skipped.
 */
export const INITRAMFS_MODULE_GROUPS = {
  // NVMe, SATA/AHCI, USB sticks, SD cards, virtual machines
  storage: [
    'nvme',
    'ahci',
    'sd_mod',
    'usb_storage',
    'uas',
    'xhci_pci',
    'ehci_pci',
    'ohci_pci',
    'uhci_hcd',
    'mmc_block',
    'sdhci_pci',
    'virtio_blk',
    'virtio_pci',
    'virtio_scsi',
  ],
  filesystems: {
    // crc32c_generic: ext4's checksums; crc32c_intel fails without SSE4.2 (QEMU's TCG)
    ext4: ['ext4', 'crc32c_generic'],
    vfat: ['vfat', 'nls_cp437', 'nls_iso8859_1', 'nls_utf8'],
    exfat: ['exfat', 'nls_utf8'],
    btrfs: ['btrfs'],
    // base_format = erofs / squashfs: the base image, mounted through a loop device
    erofs: ['loop', 'erofs'],
    squashfs: ['loop', 'squashfs'],
  } as Record<string, string[]>,
  overlay: ['overlay'],
};

export const INITRAMFS_MODULES = [
  ...INITRAMFS_MODULE_GROUPS.storage,
  ...Object.values(INITRAMFS_MODULE_GROUPS.filesystems).flat(),
  ...INITRAMFS_MODULE_GROUPS.overlay,
];
