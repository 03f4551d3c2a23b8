// Where `mkma persist` writes: the images directory on the storage device the machine booted
// from. The init reads the images from that device read-only and unmounts it before the system
// starts, so normally nothing has it mounted: we mount it read-write at a private temporary
// mount point only while the layer is written, and unmount it afterwards (also on errors).
//
// If the device IS mounted (the owner mounted it, or the init could not unmount it):
//   - a read-write mount whose root covers the images directory: we write through it and
//     leave it as it is. A second mount of the same filesystem would share its superblock
//     anyway, and remounting is not ours to do;
//   - only read-only mounts: we refuse and say how to fix it. Making the filesystem writable
//     would mean remounting the superblock read-write underneath someone else's read-only
//     mount (a new mount with different ro/rw flags fails with EBUSY), and a read-only mount
//     is usually read-only on purpose (fsck pending, shared with another system, or the init
//     kept it so).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { kernelParam, parseKernelParams, procCmdline } from '../lib/cmdline.js';
import { CMDLINE, RUNTIME } from '../lib/contract.js';
import { EnvironmentError, UsageError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';
import { BASE_NAME } from '../format/names.js';

export const BOOT_ENV_PATH: string = RUNTIME.bootEnv;

export interface Target {
  /** the directory the layer goes into */
  imagesDir: string;
  /** how it was found, for messages: "/dev/vda1 (mounted at /tmp/mkma-storage-x, images in /mkma)" */
  description: string;
  /** things the owner should know (e.g. no base image there) */
  warnings: string[];
  /** unmounts what resolveTarget mounted (idempotent; never throws) */
  release(): void;
}

export interface TargetOptions {
  /** --device: /dev/…, UUID=…, LABEL=…, PARTUUID=…, PARTLABEL=… */
  device?: string;
  /** --path: with --device the images directory on it; alone a directory to write into */
  path?: string;
  /** /proc/cmdline (its bytes, or its text) */
  cmdline: string | Buffer;
  /** /overlay/boot.env's text, if it exists */
  bootEnv?: string;
  /** where temporary mount points are made (default: os.tmpdir()) */
  mountBase?: string;
  /**
   * Only reading (`mkma verify`, `mkma layers`): any mount that covers the images directory,
   * read-only too, is used as it is; else the device is mounted read-only.
   */
  readOnly?: boolean;
}

export interface BootLocation {
  device?: string;
  imagesPath?: string;
}

/**
 * mkma_storage_device= / mkma_images_path= from /proc/cmdline's contents, split as the kernel
 * and the init split them (lib/cmdline.ts): quotes, the last of several, flags without '='
 * ignored.
 */
export function parseCmdline(procContents: string | Buffer): BootLocation {
  const params = parseKernelParams(procCmdline(procContents));
  const out: BootLocation = {};
  const device = kernelParam(params, CMDLINE.storageDevice);
  const imagesPath = kernelParam(params, CMDLINE.imagesPath);
  if (typeof device === 'string') out.device = device;
  if (typeof imagesPath === 'string') out.imagesPath = imagesPath;
  return out;
}

// eslint-disable-next-line no-control-regex -- control characters are what it finds
const CONTROL_RE = /[\x00-\x1f\x7f]/;

/**
 * Why a device spec or images path (from the command line, boot.env or the options) cannot be
 * used, as the init refuses it (init/templates/main.sh storage_problem), or null.
 */
export function storageProblem(loc: BootLocation): string | null {
  if (loc.device !== undefined && CONTROL_RE.test(loc.device)) return `${CMDLINE.storageDevice}= holds control characters`;
  if (loc.imagesPath !== undefined) {
    if (CONTROL_RE.test(loc.imagesPath)) return `${CMDLINE.imagesPath}= holds control characters`;
    if (loc.imagesPath.split('/').includes('..')) return `${CMDLINE.imagesPath}=${loc.imagesPath} leaves the device (it holds ..)`;
  }
  return null;
}

/** The init's /overlay/boot.env: "device=…\nimages_path=…\n". */
export function parseBootEnv(text: string): BootLocation {
  const out: BootLocation = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (key === 'device' && value) out.device = value;
    else if (key === 'images_path' && value) out.imagesPath = value;
  }
  return out;
}

const TAG_RE = /^(UUID|LABEL|PARTUUID|PARTLABEL)=/;

/** A device spec → its /dev path (blkid for UUID=/LABEL=/PARTUUID=/PARTLABEL=). */
export function resolveDevice(spec: string): string {
  let dev = spec;
  if (TAG_RE.test(spec)) {
    // a missing blkid is a CommandNotFoundError naming its Debian package (lib/run.ts)
    const r = runSync('blkid', ['-l', '-o', 'device', '-t', spec], { allowFailure: true });
    dev = r.stdout.trim().split('\n')[0] ?? '';
    if (!r.ok || !dev) {
      throw new EnvironmentError(`no block device has ${spec} (blkid found none): is the storage device attached?`);
    }
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(dev);
  } catch {
    throw new EnvironmentError(`storage device ${dev} does not exist`);
  }
  if (!st.isBlockDevice()) throw new UsageError(`${dev} is not a block device (use --path DIR to write into a directory)`);
  return dev;
}

export interface MountInfo {
  mountPoint: string;
  /** the directory of the filesystem mounted there ("/" unless a bind mount of a subdirectory) */
  root: string;
  majorMinor: string;
  /** per-mount read-only flag, or the superblock's */
  readOnly: boolean;
  fstype: string;
  source: string;
}

const unescapeMount = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));

export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-', 6);
    if (dash < 0) continue;
    const mountOpts = f[5].split(',');
    const superOpts = (f[dash + 3] ?? '').split(',');
    out.push({
      majorMinor: f[2],
      root: unescapeMount(f[3]),
      mountPoint: unescapeMount(f[4]),
      readOnly: mountOpts.includes('ro') || superOpts.includes('ro'),
      fstype: f[dash + 1],
      source: unescapeMount(f[dash + 2] ?? ''),
    });
  }
  return out;
}

function majorMinorOf(dev: string): string {
  const rdev = fs.statSync(dev).rdev;
  const major = (Math.floor(rdev / 256) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff);
  return `${major >>> 0}:${minor >>> 0}`;
}

/** Normalized images path inside the filesystem: "/mkma" (leading slash, no trailing one). */
function normImagesPath(p: string): string {
  const n = path.posix.normalize('/' + p);
  return n.length > 1 ? n.replace(/\/+$/, '') : n;
}

/** mount/umount: whether it worked, and what it said (for the caller's message) */
function run(cmd: string, args: string[]): { ok: boolean; err: string } {
  const r = runSync(cmd, args, { allowFailure: true });
  return { ok: r.ok, err: (r.stderr || r.stdout || '').trim() };
}

function noRelease(): void {}

/**
 * Decides where the layer goes. `--path DIR` alone: DIR as it is. Otherwise the device and
 * images path from --device/--path, else the kernel command line, else /overlay/boot.env.
 */
export function resolveTarget(opts: TargetOptions): Target {
  if (opts.path !== undefined && opts.device === undefined) {
    const dir = path.resolve(opts.path);
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch {
      throw new UsageError(`--path ${opts.path}: no such directory`);
    }
    if (!st.isDirectory()) throw new UsageError(`--path ${opts.path} is not a directory`);
    const warnings =
      opts.readOnly || fs.existsSync(path.join(dir, BASE_NAME))
        ? []
        : [`${dir} holds no ${BASE_NAME}: the layer is written there, but nothing will boot it from there`];
    return { imagesDir: dir, description: dir, warnings, release: noRelease };
  }
  const fromCmdline = parseCmdline(opts.cmdline);
  const fromEnv = opts.bootEnv ? parseBootEnv(opts.bootEnv) : {};
  const spec = opts.device ?? fromCmdline.device ?? fromEnv.device;
  const imagesPathRaw =
    opts.device !== undefined
      ? (opts.path ?? fromCmdline.imagesPath ?? fromEnv.imagesPath)
      : (fromCmdline.imagesPath ?? fromEnv.imagesPath);
  if (!spec) {
    throw new UsageError(
      `cannot tell where the images are: no ${CMDLINE.storageDevice}= on the kernel command line and no ` +
        `${BOOT_ENV_PATH}; use --device DEV --path PATH (the images directory on DEV), or --path DIR`,
    );
  }
  if (imagesPathRaw === undefined) {
    throw new UsageError(
      `cannot tell where the images are on ${spec}: no ${CMDLINE.imagesPath}= on the kernel command line; use --path PATH`,
    );
  }
  const problem = storageProblem({ device: spec, imagesPath: imagesPathRaw });
  if (problem) throw new UsageError(`${problem}: give the storage with --device DEV --path PATH`);
  const imagesPath = normImagesPath(imagesPathRaw);
  const dev = resolveDevice(spec);
  const mm = majorMinorOf(dev);
  const mounts = parseMountInfo(fs.readFileSync('/proc/self/mountinfo', 'utf8')).filter((m) => m.majorMinor === mm);
  const covers = (m: MountInfo) => m.root === '/' || imagesPath === m.root || imagesPath.startsWith(m.root + '/');
  // On a device, an images directory without a base image is the wrong place: refuse.
  const checkDir = (dir: string, where: string): void => {
    let st: fs.Stats | null = null;
    try {
      st = fs.statSync(dir);
    } catch {
      /* missing */
    }
    if (!st?.isDirectory()) throw new EnvironmentError(`${where}: no directory ${imagesPath} (check ${CMDLINE.imagesPath}= / --path)`);
    if (!fs.existsSync(path.join(dir, BASE_NAME))) {
      throw new EnvironmentError(`${where}: ${imagesPath} holds no ${BASE_NAME}: is this the right device and path?`);
    }
  };

  const rw = mounts.find((m) => (opts.readOnly || !m.readOnly) && covers(m));
  if (rw) {
    const rel = rw.root === '/' ? imagesPath : imagesPath.slice(rw.root.length);
    const dir = path.join(rw.mountPoint, rel);
    checkDir(dir, `${dev} (mounted at ${rw.mountPoint})`);
    return {
      imagesDir: dir,
      description: `${dev}:${imagesPath} (through its mount at ${rw.mountPoint})`,
      warnings: [],
      release: noRelease,
    };
  }
  if (!opts.readOnly && mounts.length && mounts.every((m) => m.readOnly)) {
    const at = mounts.map((m) => m.mountPoint).join(', ');
    throw new EnvironmentError(
      `${dev} is mounted read-only at ${at}. mkma persist does not make someone else's read-only mount writable; ` +
        `remount it read-write (mount -o remount,rw ${mounts[0].mountPoint}) or unmount it, then run mkma persist again`,
    );
  }

  // Not mounted (or mounted read-write only below the images directory): a mount point of our
  // own (mkdtemp: a fresh name, mode 0700), for the duration of the write.
  const base = opts.mountBase ?? os.tmpdir();
  const mp = fs.mkdtempSync(path.join(base, 'mkma-storage-'));
  const m = run('mount', ['-o', `${opts.readOnly ? 'ro' : 'rw'},nosuid,nodev,noexec`, dev, mp]);
  if (!m.ok) {
    fs.rmdirSync(mp);
    throw new EnvironmentError(`cannot mount ${dev} ${opts.readOnly ? 'read-only' : 'read-write'}: ${m.err}`);
  }
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    let u = run('umount', [mp]);
    if (!u.ok) {
      // busy (a shell cd'ed there?): detach it now, the kernel finishes when it is free
      u = run('umount', ['-l', mp]);
    }
    try {
      if (u.ok) fs.rmdirSync(mp);
    } catch {
      /* leave the empty directory */
    }
    if (!u.ok) process.stderr.write(`warning: could not unmount ${mp}: ${u.err}\n`);
  };
  try {
    const dir = path.join(mp, imagesPath);
    checkDir(dir, dev);
    const during = opts.readOnly ? 'read-only, while reading' : 'while writing';
    return { imagesDir: dir, description: `${dev}:${imagesPath} (mounted at ${mp} ${during})`, warnings: [], release };
  } catch (e) {
    release();
    throw e;
  }
}
