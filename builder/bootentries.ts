// Where the images are stored, as the kernel command line must name it, and ready-to-paste
// boot loader entries.
import * as path from 'node:path';
import { formatKernelParam } from '../lib/cmdline.js';
import { CMDLINE } from '../lib/contract.js';
import { runSync } from '../lib/run.js';

export interface StorageLocation {
  /** value for mkma_storage_device= (UUID=… when known, else the device path) */
  device: string;
  /** the block device holding the images directory, e.g. /dev/nvme0n1p3 */
  source: string;
  uuid: string | null;
  fstype: string;
  /** value for mkma_images_path=: the images directory relative to that filesystem's root */
  imagesPath: string;
  /** where that filesystem is mounted on the build machine */
  mountpoint: string;
}

/** findmnt on the output directory; null when it is not on a block device (tmpfs, overlay). */
export function findStorage(dir: string): StorageLocation | null {
  const r = runSync('findmnt', ['-n', '-J', '-o', 'SOURCE,TARGET,FSTYPE,UUID,FSROOT', '-T', dir], { allowFailure: true });
  if (!r.ok) return null;
  const fs = (JSON.parse(r.stdout) as { filesystems: Array<Record<string, string | null>> }).filesystems[0];
  if (!fs || !fs.source || !fs.source.startsWith('/dev/')) return null;
  const source = fs.source.replace(/\[.*\]$/, ''); // btrfs subvolume suffix
  let uuid = fs.uuid ?? null;
  if (!uuid) {
    const b = runSync('blkid', ['-s', 'UUID', '-o', 'value', source], { allowFailure: true });
    uuid = b.ok && b.stdout.trim() ? b.stdout.trim() : null;
  }
  const mountpoint = fs.target ?? '/';
  const fsroot = fs.fsroot && fs.fsroot !== '/' ? fs.fsroot : '';
  const imagesPath = path.posix.join('/', fsroot, path.relative(mountpoint, path.resolve(dir)));
  return { device: uuid ? `UUID=${uuid}` : source, source, uuid, fstype: fs.fstype ?? '', imagesPath, mountpoint };
}

/** The two parameters, quoted as the kernel needs when the path holds spaces. */
export function kernelCommandLine(loc: { device: string; imagesPath: string }): string {
  return `${formatKernelParam(CMDLINE.storageDevice, loc.device)} ${formatKernelParam(CMDLINE.imagesPath, loc.imagesPath)}`;
}

export function grubEntry(hostname: string, loc: StorageLocation): string {
  const search = loc.uuid ? `\tsearch --no-floppy --fs-uuid --set=root ${loc.uuid}\n` : '';
  return (
    `menuentry "mkma: ${hostname} (RAM)" {\n` +
    search +
    `\tlinux ${loc.imagesPath}/vmlinuz ${kernelCommandLine(loc)}\n` +
    `\tinitrd ${loc.imagesPath}/initramfs.cpio.zst\n` +
    `}`
  );
}

export function systemdBootEntry(hostname: string, loc: StorageLocation): string {
  return (
    `# /boot/efi/loader/entries/mkma-${hostname}.conf — systemd-boot reads kernels from the ESP:\n` +
    `# copy vmlinuz and initramfs.cpio.zst to <ESP>/mkma/${hostname}/ first.\n` +
    `title   mkma: ${hostname} (RAM)\n` +
    `linux   /mkma/${hostname}/vmlinuz\n` +
    `initrd  /mkma/${hostname}/initramfs.cpio.zst\n` +
    `options ${kernelCommandLine(loc)}`
  );
}
