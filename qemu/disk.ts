// Disk images for QEMU boots, made and read without mounting anything.
//
// `mke2fs -d DIR` populates a new ext4 filesystem from a directory and `debugfs` reads files
// back out of one, so neither root, loop devices nor a mount namespace is needed, and a test
// that dies half-way leaves no mount behind. Disks are built under a temporary name and
// renamed into place: a failed rebuild never destroys the persistence layers the guest
// wrote into the previous disk.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { LAYER_PREFIX, LAYER_SUFFIX } from '../format/names.js';
import { MkmaError } from '../lib/errors.js';
import { run } from '../lib/run.js';

export const DEFAULT_IMAGES_PATH = '/mkma';
const MiB = 1024 * 1024;
/** Room for the layers a guest writes with `mkma persist` between rebuilds. */
export const PERSISTENCE_HEADROOM_BYTES = 64 * MiB;
/** Data disks only carry a script or two; this covers the ext4 journal and metadata. */
export const DATA_DISK_HEADROOM_BYTES = 16 * MiB;
const BLOCK = 4096;

export class DiskError extends MkmaError {}

export interface ImagesDiskOptions {
  /** the raw disk image to (re)create */
  diskPath: string;
  /** directory holding base.cpio.zst (and possibly layers) on the host */
  imagesDir: string;
  /** ext4 label (≤ 16 bytes), e.g. MKMA, so the guest can find it with LABEL= */
  label: string;
  uuid?: string;
  /** total disk size; default imagesDiskSize(content) */
  sizeBytes?: number;
  /** true: start from an empty disk; false: keep the persistence layers of an existing one */
  fresh: boolean;
  /** names to copy from imagesDir, e.g. ['base.cpio.zst'] */
  files: string[];
  /** where the images live inside the filesystem (mkma_images_path=); default /mkma */
  imagesPath?: string;
}

export interface ImagesDiskResult {
  /** true if the disk is new (none before, or fresh); false if rebuilt keeping its layers */
  created: boolean;
  /** persistence layers carried over from the previous disk */
  carried: string[];
  sizeBytes: number;
}

/** Files a rebuild keeps: everything named like a layer (even ids format/names.ts rejects: never drop user data). */
export function isCarriedOver(name: string): boolean {
  return name.startsWith(LAYER_PREFIX) && name.endsWith(LAYER_SUFFIX) && name.length > LAYER_PREFIX.length + LAYER_SUFFIX.length;
}

/** Content + 30% (ext4 metadata, journal, growth of the base) + headroom, rounded up to a MiB. */
export function imagesDiskSize(contentBytes: number, headroomBytes = PERSISTENCE_HEADROOM_BYTES): number {
  return Math.ceil((contentBytes * 1.3 + headroomBytes) / MiB) * MiB;
}

/** Bytes a set of files occupies on ext4: whole blocks plus one block of metadata each. */
export function contentBytes(sizes: number[]): number {
  return sizes.reduce((sum, s) => sum + Math.ceil(s / BLOCK) * BLOCK + BLOCK, 0);
}

export interface Mke2fsArgs {
  file: string;
  sourceDir: string;
  label: string;
  uuid?: string;
  sizeBytes: number;
}

export function mke2fsArgs(a: Mke2fsArgs): string[] {
  if (Buffer.byteLength(a.label) > 16) throw new DiskError(`ext4 label "${a.label}" is longer than 16 bytes`);
  if (a.uuid !== undefined && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(a.uuid)) {
    throw new DiskError(`"${a.uuid}" is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)`);
  }
  // option and value on one line
  // prettier-ignore
  return [
    '-q', '-t', 'ext4',
    // Under 512 MiB mke2fs's "small" profile picks 1 KiB blocks; 4 KiB keeps the base image
    // in few, large extents for the guest's one sequential read.
    '-b', String(BLOCK),
    // A data disk: no blocks reserved for root.
    '-m', '0',
    '-d', a.sourceDir,
    '-L', a.label,
    ...(a.uuid ? ['-U', a.uuid] : []),
    '-F', a.file,
    `${Math.ceil(a.sizeBytes / 1024)}k`,
  ];
}

/**
 * debugfs exits 0 even when a request fails and reports only on stderr, next to its version
 * banner; so anything on stderr but the banner is the error.
 */
async function debugfs(diskPath: string, request: string): Promise<string> {
  if (!fs.existsSync(diskPath)) throw new DiskError(`no disk image at ${diskPath}`);
  const { stdout, stderr } = await run('debugfs', ['-R', request, diskPath]);
  const problems = stderr.split('\n').filter((l) => l.trim() && !/^debugfs \d+\.\d+/.test(l));
  if (problems.length) throw new DiskError(`debugfs ${diskPath} "${request}": ${problems.join('; ').trim()}`);
  return stdout;
}

/** debugfs's own argument parser takes double quotes, so names with spaces work; these two don't. */
function quoted(p: string): string {
  if (/["\n]/.test(p)) throw new DiskError(`cannot pass ${JSON.stringify(p)} to debugfs`);
  return `"${p}"`;
}

export interface DiskEntry {
  name: string;
  /** st_mode as a number (S_IFREG = 0o100000) */
  mode: number;
  size: number;
}

/** The entries of a directory in the disk's filesystem, without . and .. */
export async function listDiskEntries(diskPath: string, dir: string): Promise<DiskEntry[]> {
  // `ls -p` prints /inode/mode/uid/gid/name/size/ per entry; names cannot contain '/'.
  const out = await debugfs(diskPath, `ls -p ${quoted(dir)}`);
  const entries: DiskEntry[] = [];
  for (const line of out.split('\n')) {
    const m = /^\/\d+\/([0-7]+)\/\d+\/\d+\/(.*)\/(\d*)\/$/.exec(line);
    if (!m || m[2] === '.' || m[2] === '..') continue;
    entries.push({ name: m[2], mode: parseInt(m[1], 8), size: m[3] ? Number(m[3]) : 0 });
  }
  return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

export async function listDiskFiles(diskPath: string, dir: string): Promise<string[]> {
  return (await listDiskEntries(diskPath, dir)).map((e) => e.name);
}

/** Copies one file out of the disk's filesystem to `dest` on the host. */
export async function readDiskFile(diskPath: string, filePath: string, dest: string): Promise<void> {
  fs.rmSync(dest, { force: true });
  await debugfs(diskPath, `dump ${quoted(filePath)} ${quoted(path.resolve(dest))}`);
  if (!fs.existsSync(dest)) throw new DiskError(`debugfs did not write ${dest} from ${diskPath}:${filePath}`);
}

const isRegular = (mode: number) => (mode & 0o170000) === 0o100000;

/** Hard link when possible (the base image can be hundreds of MB), else a (reflink) copy. */
function linkOrCopy(src: string, dest: string): void {
  fs.rmSync(dest, { force: true });
  try {
    fs.linkSync(src, dest);
  } catch {
    fs.copyFileSync(src, dest, fs.constants.COPYFILE_FICLONE);
  }
}

function tempNear(target: string, what: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${what}-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** mke2fs into a temporary file next to `diskPath`, then rename it into place. */
async function buildDisk(sourceDir: string, diskPath: string, label: string, sizeBytes: number, uuid?: string): Promise<void> {
  const tmp = tempNear(diskPath, 'tmp');
  try {
    // A sparse file of the final size: mke2fs writes only metadata and the files' blocks.
    // 0600: it holds the images (the base's /etc/shadow, the layers).
    fs.closeSync(fs.openSync(tmp, 'w', 0o600));
    fs.truncateSync(tmp, sizeBytes);
    await run('mke2fs', mke2fsArgs({ file: tmp, sourceDir, label, uuid, sizeBytes }));
    fs.renameSync(tmp, diskPath);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

function imagesPathOf(p: string | undefined): string {
  const rel = (p ?? DEFAULT_IMAGES_PATH).replace(/^\/+|\/+$/g, '');
  if (rel.split('/').some((part) => part === '..')) throw new DiskError(`images path "${p}" must not contain ..`);
  return rel;
}

/**
 * Creates (or rebuilds) the storage disk a test boot reads its images from: an ext4
 * filesystem holding `<imagesPath>/<files>`, plus, unless `fresh`, the persistence layers
 * the previous disk held.
 */
export async function makeImagesDisk(opts: ImagesDiskOptions): Promise<ImagesDiskResult> {
  const rel = imagesPathOf(opts.imagesPath);
  const existed = fs.existsSync(opts.diskPath);
  fs.mkdirSync(path.dirname(path.resolve(opts.diskPath)), { recursive: true });
  for (const f of opts.files) {
    if (f.includes('/') || !fs.statSync(path.join(opts.imagesDir, f), { throwIfNoEntry: false })?.isFile()) {
      throw new DiskError(`${path.join(opts.imagesDir, f)} is not a file (run mkma build first?)`);
    }
  }
  // Staging next to the disk: same filesystem as the temporary disk, and often as imagesDir.
  const staging = tempNear(opts.diskPath, 'staging');
  try {
    const target = path.join(staging, rel);
    fs.mkdirSync(target, { recursive: true, mode: 0o755 });
    fs.chmodSync(staging, 0o755); // becomes the filesystem's root directory

    const carried: string[] = [];
    if (existed && !opts.fresh) {
      let entries: DiskEntry[];
      try {
        entries = await listDiskEntries(opts.diskPath, `/${rel}`);
      } catch (e) {
        throw new DiskError(
          `cannot read the layers of the existing disk ${opts.diskPath}: ${(e as Error).message}; ` +
            'move it away, or rebuild it with fresh to start without them',
        );
      }
      for (const e of entries) {
        // A layer of the same name passed in `files` replaces the disk's copy.
        if (!isRegular(e.mode) || !isCarriedOver(e.name) || opts.files.includes(e.name)) continue;
        await readDiskFile(opts.diskPath, `/${rel}/${e.name}`, path.join(target, e.name));
        carried.push(e.name);
      }
    }
    for (const f of opts.files) linkOrCopy(path.join(opts.imagesDir, f), path.join(target, f));

    const sizes = fs.readdirSync(target).map((n) => fs.statSync(path.join(target, n)).size);
    const sizeBytes = opts.sizeBytes ?? imagesDiskSize(contentBytes(sizes));
    await buildDisk(staging, opts.diskPath, opts.label, sizeBytes, opts.uuid);
    return { created: !existed || opts.fresh, carried, sizeBytes };
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

function treeSizes(dir: string): number[] {
  const sizes: number[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    sizes.push(e.isFile() ? fs.lstatSync(p).size : 0);
    if (e.isDirectory()) sizes.push(...treeSizes(p));
  }
  return sizes;
}

/** An ext4 disk with the contents of `dir` (e.g. a run.sh for the guest, label MKMA-TEST). */
export async function makeDataDisk(dir: string, diskPath: string, label: string, sizeBytes?: number): Promise<void> {
  if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new DiskError(`${dir} is not a directory`);
  fs.mkdirSync(path.dirname(path.resolve(diskPath)), { recursive: true });
  await buildDisk(dir, diskPath, label, sizeBytes ?? imagesDiskSize(contentBytes(treeSizes(dir)), DATA_DISK_HEADROOM_BYTES));
}
