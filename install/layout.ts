// The layout of an mkma stick, as data: the partitions, their sizes, the names of the files on
// each filesystem, and the sizes a target must have. Nothing here touches a disk.
//
//   GPT
//   1  mkma-bios   1 MiB        BIOS boot partition: GRUB i386-pc's core image (grub-bios-setup)
//   2  mkma-esp    --esp-size   FAT32 "MKMA-ESP": GRUB for UEFI at /EFI/BOOT/BOOTX64.EFI, GRUB's
//                               menu and modules in /boot/grub, and per hostname and generation
//                               the kernel and initramfs: /mkma/<hostname>/g<N>/ (one copy, read
//                               by both GRUBs)
//   3  mkma-data   the rest     ext4 "MKMA" (--label), or LUKS2 holding it (--encrypt):
//                               /images/<hostname>/base.g<N>.cpio.zst, base.cpio.zst (a hard
//                               link to the current generation's) and the layers
//
// A generation is one set of kernel, initramfs and base from one `mkma build`. A hostname has
// at most two on the stick: the current one (the normal and recovery menu entries) and the
// previous one (after `mkma update`). install/stick.ts reads them back from the stick; the menu
// is made from what it finds there.
import { UsageError } from '../lib/errors.js';
import { formatBytes } from '../lib/progress.js';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
export const SECTOR = 512;

export interface PartitionSpec {
  number: number;
  /** GPT partition name (PARTLABEL) */
  name: string;
  /** sgdisk type code */
  code: string;
  /** GPT type GUID, as blkid reports it (PART_ENTRY_TYPE) */
  typeGuid: string;
}

export const PARTITIONS = {
  bios: { number: 1, name: 'mkma-bios', code: 'EF02', typeGuid: '21686148-6449-6e6f-744e-656564454649' },
  esp: { number: 2, name: 'mkma-esp', code: 'EF00', typeGuid: 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b' },
  data: { number: 3, name: 'mkma-data', code: '8300', typeGuid: '0fc63daf-8483-4772-8e79-3d69d8477de4' },
} as const satisfies Record<string, PartitionSpec>;

export const BIOS_BOOT_BYTES = MiB;
/** Partitions start at 1 MiB (every flash erase block and 4K sector boundary). */
export const ALIGN_BYTES = MiB;
/** The backup GPT at the end of the disk, rounded up to the alignment. */
export const GPT_TAIL_BYTES = MiB;

/** FAT label of the ESP (11 characters at most). */
export const ESP_LABEL = 'MKMA-ESP';
export const DEFAULT_DATA_LABEL = 'MKMA';
/**
 * Default ESP size: a generation of the test image (kernel 12 MiB, initramfs 7 MiB) takes 19
 * MiB, two per hostname; GRUB with both platforms' modules 6 MiB. 512 MiB holds a dozen
 * hostnames with their previous generations, and is what Debian's installer makes.
 */
export const DEFAULT_ESP_BYTES = 512 * MiB;
/** FAT32 needs 65525 clusters: below ~33 MiB mkfs.vfat cannot make it. */
export const MIN_ESP_BYTES = 64 * MiB;
/** Room on the data partition for layers written with `mkma persist`, beyond the images. */
export const LAYER_HEADROOM_BYTES = 128 * MiB;

/** Where things are on the ESP (FAT: case-insensitive, `/` separated, as mtools takes them). */
export const ESP_PATHS = {
  grubDir: '/boot/grub',
  /** written once by install: reads menu.cfg (or menu.cfg.new) */
  grubCfg: '/boot/grub/grub.cfg',
  /** the menu, made from what is on the stick by every install and update */
  menuCfg: '/boot/grub/menu.cfg',
  /** the next menu, written complete before it replaces menu.cfg */
  menuCfgNew: '/boot/grub/menu.cfg.new',
  efiBoot: '/EFI/BOOT/BOOTX64.EFI',
  images: '/mkma',
} as const;

/** The directory of the images on the data partition (mkma_images_path=). */
export const DATA_IMAGES_DIR = 'images';

export const GENERATION_FILE = 'generation.json';

export function espHostDir(hostname: string): string {
  return `${ESP_PATHS.images}/${hostname}`;
}

export function espGenerationDir(hostname: string, gen: number): string {
  return `${espHostDir(hostname)}/g${gen}`;
}

export function baseFileName(gen: number): string {
  return `base.g${gen}.cpio.zst`;
}

/** `base.g12.cpio.zst` → 12; anything else → null. */
export function generationOfBase(name: string): number | null {
  const m = /^base\.g([1-9][0-9]{0,8})\.cpio\.zst$/.exec(name);
  return m ? Number(m[1]) : null;
}

/** `g12` → 12. */
export function generationOfDir(name: string): number | null {
  const m = /^g([1-9][0-9]{0,8})$/i.exec(name);
  return m ? Number(m[1]) : null;
}

/**
 * A hostname goes into paths on both filesystems and into GRUB's menu: only what RFC 1123
 * allows (letters, digits, inner hyphens, 63 at most), so nothing in it needs quoting.
 */
export const HOSTNAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

export function checkHostname(name: string, where: string): string {
  if (!HOSTNAME_RE.test(name))
    throw new UsageError(`${where}: "${name}" is not a hostname mkma can put on a stick (letters, digits, inner hyphens)`);
  return name;
}

export interface DiskPlan {
  /** partition start and size in bytes, in PARTITIONS order */
  bios: { start: number; size: number };
  esp: { start: number; size: number };
  data: { start: number; size: number };
}

export function planDisk(diskBytes: number, espBytes: number): DiskPlan {
  const bios = { start: ALIGN_BYTES, size: BIOS_BOOT_BYTES };
  const esp = { start: bios.start + bios.size, size: espBytes };
  const dataStart = esp.start + esp.size;
  const dataEnd = Math.floor((diskBytes - GPT_TAIL_BYTES) / ALIGN_BYTES) * ALIGN_BYTES;
  return { bios, esp, data: { start: dataStart, size: Math.max(0, dataEnd - dataStart) } };
}

/** sgdisk's arguments for the layout (after `sgdisk --zap-all`), sizes in sectors. */
export function sgdiskArgs(plan: DiskPlan, device: string): string[] {
  const part = (p: PartitionSpec, r: { start: number; size: number }) => [
    `--new=${p.number}:${r.start / SECTOR}:${(r.start + r.size) / SECTOR - 1}`,
    `--typecode=${p.number}:${p.code}`,
    `--change-name=${p.number}:${p.name}`,
  ];
  return [...part(PARTITIONS.bios, plan.bios), ...part(PARTITIONS.esp, plan.esp), ...part(PARTITIONS.data, plan.data), device];
}

export interface ImageSizes {
  base: number;
  kernel: number;
  initramfs: number;
}

/** ext4's own share of a partition (journal, inode tables, reserved groups): measured ~3% at these sizes; 5% to be safe. */
const EXT4_OVERHEAD = 1.05;

/**
 * What the data partition needs for one hostname: its base twice (an update writes the new one
 * while the previous stays, so the old generation goes first: two at a time) and room for
 * layers.
 */
export function dataBytesNeeded(images: ImageSizes): number {
  return Math.ceil((2 * images.base + LAYER_HEADROOM_BYTES) * EXT4_OVERHEAD);
}

/** What one hostname needs on the ESP: kernel and initramfs twice (current and previous). */
export function espBytesNeeded(images: ImageSizes): number {
  return 2 * (images.kernel + images.initramfs);
}

/** The whole disk a fresh install needs. */
export function diskBytesNeeded(images: ImageSizes, espBytes: number): number {
  return ALIGN_BYTES + BIOS_BOOT_BYTES + espBytes + dataBytesNeeded(images) + GPT_TAIL_BYTES;
}

export function describeNeed(images: ImageSizes, espBytes: number): string {
  return (
    `${formatBytes(diskBytesNeeded(images, espBytes))}: ${formatBytes(espBytes)} for the ESP (--esp-size), ` +
    `${formatBytes(dataBytesNeeded(images))} for the data partition (the base twice, for an update, and ` +
    `${formatBytes(LAYER_HEADROOM_BYTES)} for layers), 3 MiB for the partition table and GRUB`
  );
}

/** "2G", "1500M", "512MiB", "4096" (bytes) → bytes; whole MiB or more. */
export function parseSize(text: string, what: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${what}: "${text}" is not a size (e.g. 512M, 4G)`);
  const unit = { '': 1, K: 1024, M: MiB, G: GiB, T: 1024 * GiB }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  const bytes = Math.floor(Number(m[1]) * unit);
  if (bytes < MiB) throw new UsageError(`${what}: ${text} is less than 1 MiB`);
  return Math.floor(bytes / MiB) * MiB;
}

export interface PartitionRow {
  number: number;
  startSector: number;
  endSector: number;
  code: string;
  name: string;
}

export function parsePartitionTable(text: string): PartitionRow[] {
  const rows: PartitionRow[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*([0-9]+)\s+([0-9]+)\s+([0-9]+)\s+[0-9.]+ \S+\s+([0-9A-F]{4})\s*(.*)$/.exec(line);
    if (m) rows.push({ number: Number(m[1]), startSector: Number(m[2]), endSector: Number(m[3]), code: m[4], name: m[5].trim() });
  }
  return rows;
}

/** The table has exactly mkma's three partitions (by number, type and name). */
export function isMkmaTable(rows: PartitionRow[]): boolean {
  const specs = Object.values(PARTITIONS) as PartitionSpec[];
  return (
    rows.length === specs.length && specs.every((s) => rows.some((r) => r.number === s.number && r.code === s.code && r.name === s.name))
  );
}
