// Where the images are stored, as the kernel command line must name it, and ready-to-paste
// boot loader entries. The device is named by what stays the same when the disk moves to
// another machine or port: the filesystem's UUID, else the partition's PARTUUID, else its
// LABEL; a /dev name (which changes with the order disks appear in) only when none of those
// could be read, and then the entries say so.
import * as path from 'node:path';
import { formatKernelParam } from '../lib/cmdline.js';
import { CMDLINE } from '../lib/contract.js';
import { runSync } from '../lib/run.js';
import { bootLayers, listImages } from '../format/images.js';
import { layerId } from '../format/names.js';

export interface StorageLocation {
  /** value for mkma_storage_device= (UUID=…, PARTUUID=…, LABEL=…, or the device path as a last resort) */
  device: string;
  /** false: `device` is a /dev name, which may name another disk at the next boot */
  stable: boolean;
  /** the block device holding the images directory, e.g. /dev/nvme0n1p3 */
  source: string;
  uuid: string | null;
  fstype: string;
  /** value for mkma_images_path=: the images directory relative to that filesystem's root */
  imagesPath: string;
  /** where that filesystem is mounted on the build machine */
  mountpoint: string;
}

/** The steadiest name of a device: UUID, PARTUUID, LABEL, in that order; its /dev path otherwise. */
export function stableDeviceName(ids: { source: string; uuid?: string | null; partuuid?: string | null; label?: string | null }): {
  device: string;
  stable: boolean;
} {
  if (ids.uuid) return { device: `UUID=${ids.uuid}`, stable: true };
  if (ids.partuuid) return { device: `PARTUUID=${ids.partuuid}`, stable: true };
  // a label with spaces would need quoting on the command line: not used
  if (ids.label && /^[A-Za-z0-9_.-]+$/.test(ids.label)) return { device: `LABEL=${ids.label}`, stable: true };
  return { device: ids.source, stable: false };
}

/** findmnt on the output directory; null when it is not on a block device (tmpfs, overlay). */
export function findStorage(dir: string): StorageLocation | null {
  const r = runSync('findmnt', ['-n', '-J', '-o', 'SOURCE,TARGET,FSTYPE,UUID,PARTUUID,LABEL,FSROOT', '-T', dir], { allowFailure: true });
  if (!r.ok) return null;
  const fs = (JSON.parse(r.stdout) as { filesystems: Array<Record<string, string | null>> }).filesystems[0];
  if (!fs || !fs.source || !fs.source.startsWith('/dev/')) return null;
  const source = fs.source.replace(/\[.*\]$/, ''); // btrfs subvolume suffix
  // findmnt reads udev's database; without udev, blkid probes the device itself
  const probe = (tag: string) => {
    const b = runSync('blkid', ['-p', '-s', tag, '-o', 'value', source], { allowFailure: true });
    return b.ok && b.stdout.trim() ? b.stdout.trim() : null;
  };
  const uuid = fs.uuid ?? probe('UUID');
  const partuuid = fs.partuuid ?? (uuid ? null : probe('PART_ENTRY_UUID'));
  const label = fs.label ?? (uuid || partuuid ? null : probe('LABEL'));
  const mountpoint = fs.target ?? '/';
  const fsroot = fs.fsroot && fs.fsroot !== '/' ? fs.fsroot : '';
  const imagesPath = path.posix.join('/', fsroot, path.relative(mountpoint, path.resolve(dir)));
  return { ...stableDeviceName({ source, uuid, partuuid, label }), source, uuid, fstype: fs.fstype ?? '', imagesPath, mountpoint };
}

/** The two parameters, quoted as the kernel needs when the path holds spaces. */
export function kernelCommandLine(loc: { device: string; imagesPath: string }): string {
  return `${formatKernelParam(CMDLINE.storageDevice, loc.device)} ${formatKernelParam(CMDLINE.imagesPath, loc.imagesPath)}`;
}

/** Said above each entry whose device is a /dev name. */
export function unstableWarning(loc: StorageLocation): string {
  return (
    `# ${loc.source} has no UUID, PARTUUID or LABEL mkma could read: its /dev name may be another disk at the next boot.\n` +
    `# Find a steady one with \`blkid ${loc.source}\` and write mkma_storage_device=UUID=… instead.\n`
  );
}

/** One boot menu entry of an image: the normal one, the recovery one, a previous generation. */
export interface EntryVariant {
  /** after "(RAM)" in the title */
  title: string;
  /** appended to the kernel command line */
  params: string;
}

const NORMAL: EntryVariant = { title: '', params: '' };

/**
 * The entries `mkma build` prints: the normal one, a recovery one (mkma_layers=none: the base
 * alone, whatever a layer broke) and, when the images directory has two or more layers a boot
 * applies, the previous generation (mkma_layers=until=ID: every layer but the newest).
 */
export function entryVariants(previousId: string | null): EntryVariant[] {
  return [
    NORMAL,
    { title: ' recovery, without layers', params: `${CMDLINE.layers}=none` },
    ...(previousId ? [{ title: ` previous generation, layers up to ${previousId}`, params: `${CMDLINE.layers}=until=${previousId}` }] : []),
  ];
}

/** The id of the next-to-newest layer a boot of `imagesDir` applies (the previous generation), or null. */
export function previousGeneration(imagesDir: string): string | null {
  const layers = bootLayers(listImages(imagesDir));
  return layers.length >= 2 ? layerId(layers[layers.length - 2]) : null;
}

export function grubEntries(hostname: string, loc: StorageLocation, previousId: string | null): string {
  return entryVariants(previousId)
    .map((v, i) => grubEntry(hostname, i === 0 ? loc : { ...loc, stable: true }, v))
    .join('\n');
}

export function grubEntry(hostname: string, loc: StorageLocation, v: EntryVariant = NORMAL): string {
  const search = loc.uuid ? `\tsearch --no-floppy --fs-uuid --set=root ${loc.uuid}\n` : '';
  return (
    (loc.stable ? '' : unstableWarning(loc)) +
    `menuentry "mkma: ${hostname} (RAM)${v.title ? `:${v.title}` : ''}" {\n` +
    search +
    `\tlinux ${loc.imagesPath}/vmlinuz ${kernelCommandLine(loc)}${v.params ? ` ${v.params}` : ''}\n` +
    `\tinitrd ${loc.imagesPath}/initramfs.cpio.zst\n` +
    `}`
  );
}

export function systemdBootEntry(hostname: string, loc: StorageLocation): string {
  return (
    (loc.stable ? '' : unstableWarning(loc)) +
    `# /boot/efi/loader/entries/mkma-${hostname}.conf — systemd-boot reads kernels from the ESP:\n` +
    `# copy vmlinuz and initramfs.cpio.zst to <ESP>/mkma/${hostname}/ first.\n` +
    `title   mkma: ${hostname} (RAM)\n` +
    `linux   /mkma/${hostname}/vmlinuz\n` +
    `initrd  /mkma/${hostname}/initramfs.cpio.zst\n` +
    `options ${kernelCommandLine(loc)}`
  );
}
