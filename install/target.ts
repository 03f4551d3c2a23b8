// What `mkma install` / `mkma update` are pointed at, and whether they may write to it.
//
// The facts are gathered from sysfs, /proc and blkid (gatherFacts), and judged by a pure
// function (refusal), so that every refusal is tested without a real disk at stake. Install
// refuses: anything that is neither a block device nor a regular file; a partition (the whole
// disk is partitioned); the disk holding `/`; the disk holding the running mkma system's
// storage (its images are there, though nothing has it mounted); a disk with anything mounted,
// used as swap or held by device-mapper/md; a read-only device; a disk image file already
// attached to a loop device; and a target too small for the images (saying how much is needed).
// Update accepts the running system's storage (it only adds a generation), and refuses the rest.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RUNTIME } from '../lib/contract.js';
import { UsageError } from '../lib/errors.js';
import { formatBytes } from '../lib/progress.js';
import { runSync } from '../lib/run.js';
import { parseBootEnv, parseCmdline, parseMountInfo } from '../persist/storage.js';

export type TargetKind = 'block' | 'file' | 'missing' | 'other';

export interface TargetFacts {
  /** as the user gave it */
  given: string;
  kind: TargetKind;
  /** for `other`: what it is (directory, character device, …) */
  otherType?: string;
  /** block devices: the kernel's name (sdb, loop3, nvme0n1) */
  name?: string;
  /** block devices: a partition, not a whole disk; its disk's name */
  partitionOf?: string;
  sizeBytes: number;
  readOnly: boolean;
  /** "SanDisk Cruzer Blade" (vendor and model from sysfs), or "disk image file" */
  model: string;
  /** mounts of the disk or any of its partitions: "/dev/sdb1 on /media/x" */
  mounted: string[];
  /** swap on the disk or its partitions */
  swap: string[];
  /** device-mapper or md devices built on it: "dm-0" */
  holders: string[];
  /** the disk holds the filesystem mounted at / */
  holdsRoot: boolean;
  /** the disk holds the running mkma system's storage: the spec it was booted with */
  runningStorage: string | null;
  /** file targets: loop devices it is attached to */
  loopDevices: string[];
}

export type Purpose = 'install' | 'update';

/** Why the target must not be written, or null. `needBytes`: what install needs (0: not checked). */
export function refusal(f: TargetFacts, purpose: Purpose, needBytes = 0, needText = ''): string | null {
  const t = f.given;
  switch (f.kind) {
    case 'missing':
      return `${t} does not exist (give --size to create a disk image file there)`;
    case 'other':
      return `${t} is a ${f.otherType ?? 'special file'}: mkma ${purpose} writes to a block device (/dev/sdX) or a disk image file`;
    default:
  }
  if (f.partitionOf)
    return `${t} is a partition of /dev/${f.partitionOf}: give the whole disk (/dev/${f.partitionOf}); it will be repartitioned`;
  if (f.holdsRoot) return `${t} holds the running system's root filesystem (/): choose another disk`;
  if (f.runningStorage && purpose === 'install') {
    return `${t} holds the images this mkma system booted from (${f.runningStorage}): install to another disk, or use mkma update on it`;
  }
  if (f.mounted.length) return `${t} is in use: ${f.mounted.join(', ')}; unmount it first`;
  if (f.swap.length) return `${t} is in use as swap (${f.swap.join(', ')}); swapoff first`;
  if (f.holders.length) return `${t} is in use by ${f.holders.join(', ')} (device-mapper, RAID or LUKS); close those first`;
  if (f.loopDevices.length) return `${t} is attached to ${f.loopDevices.join(', ')}; detach it first (losetup -d)`;
  if (f.readOnly) return `${t} is read-only`;
  if (needBytes > 0 && f.sizeBytes < needBytes) {
    return `${t} is too small: ${formatBytes(f.sizeBytes)}, and the images need at least ${needText || formatBytes(needBytes)}`;
  }
  return null;
}

/** Throws the refusal as a UsageError (exit 2: nothing was written). */
export function checkTarget(f: TargetFacts, purpose: Purpose, needBytes = 0, needText = ''): void {
  const why = refusal(f, purpose, needBytes, needText);
  if (why) throw new UsageError(`${purpose}: refusing ${why}`);
}

// --- gathering ---------------------------------------------------------------------------

const read = (p: string): string | null => {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return null;
  }
};

/** The sysfs directory of a block device number, e.g. /sys/devices/…/block/sdb/sdb1. */
function sysfsOf(majorMinor: string): string | null {
  try {
    return fs.realpathSync(`/sys/dev/block/${majorMinor}`);
  } catch {
    return null;
  }
}

function majorMinorOfNode(node: string): string | null {
  try {
    const st = fs.statSync(node);
    if (!st.isBlockDevice()) return null;
    const rdev = st.rdev;
    // glibc's gnu_dev_major/minor
    const major = (Math.floor(rdev / 256) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
    const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff);
    return `${major >>> 0}:${minor >>> 0}`;
  } catch {
    return null;
  }
}

/**
 * The whole disks a device lives on: a partition's parent, and through device-mapper or md
 * (`slaves/`) the disks below (LUKS on /dev/sdb3 → sdb).
 */
export function disksUnder(sysfsDir: string, seen = new Set<string>()): string[] {
  if (seen.has(sysfsDir)) return [];
  seen.add(sysfsDir);
  const slaves = path.join(sysfsDir, 'slaves');
  const below = fs.existsSync(slaves) ? fs.readdirSync(slaves) : [];
  if (below.length) return below.flatMap((s) => disksUnder(fs.realpathSync(path.join(slaves, s)), seen));
  const isPartition = fs.existsSync(path.join(sysfsDir, 'partition'));
  return [path.basename(isPartition ? path.dirname(sysfsDir) : sysfsDir)];
}

function disksOfMajorMinor(mm: string): string[] {
  const dir = sysfsOf(mm);
  return dir ? disksUnder(dir) : [];
}

/** The disk and its partitions: name → major:minor. */
function diskAndPartitions(name: string): Map<string, string> {
  const out = new Map<string, string>();
  const dir = `/sys/class/block/${name}`;
  const dev = read(`${dir}/dev`);
  if (dev) out.set(name, dev);
  for (const e of fs.readdirSync(dir)) {
    const pdev = fs.existsSync(`${dir}/${e}/partition`) ? read(`${dir}/${e}/dev`) : null;
    if (pdev) out.set(e, pdev);
  }
  return out;
}

export interface SystemFacts {
  /** /proc/self/mountinfo's text */
  mountinfo: string;
  /** /proc/swaps's text */
  swaps: string;
  /** /proc/cmdline's text */
  cmdline: string;
  /** the init's boot.env, if this is a running mkma system */
  bootEnv?: string;
}

export function hostSystem(): SystemFacts {
  return {
    mountinfo: read('/proc/self/mountinfo') ?? '',
    swaps: read('/proc/swaps') ?? '',
    cmdline: read('/proc/cmdline') ?? '',
    bootEnv: read(RUNTIME.bootEnv) ?? undefined,
  };
}

/** The disks holding `/` (through dm/md too); none on a RAM system (overlay, tmpfs). */
function rootDisks(sys: SystemFacts): string[] {
  const mounts = parseMountInfo(sys.mountinfo).filter((m) => m.mountPoint === '/');
  const root = mounts[mounts.length - 1];
  if (!root) return [];
  // btrfs and others report an anonymous device number; their source names the device
  const mm = root.majorMinor.startsWith('0:') ? (root.source.startsWith('/dev/') ? majorMinorOfNode(root.source) : null) : root.majorMinor;
  return mm ? disksOfMajorMinor(mm) : [];
}

/** The running mkma system's storage (kernel command line, boot.env) → its spec and disks. */
function runningStorageDisks(sys: SystemFacts): { spec: string; disks: string[] } | null {
  const spec = parseCmdline(sys.cmdline).device ?? (sys.bootEnv ? parseBootEnv(sys.bootEnv).device : undefined);
  if (!spec) return null;
  let node = spec;
  if (!spec.startsWith('/dev/')) {
    const r = runSync('blkid', ['-l', '-o', 'device', '-t', spec], { allowFailure: true });
    node = r.ok ? r.stdout.trim().split('\n')[0] : '';
  }
  const mm = node ? majorMinorOfNode(node) : null;
  return mm ? { spec, disks: disksOfMajorMinor(mm) } : null;
}

function loopDevicesOf(file: string): string[] {
  const r = runSync('losetup', ['--noheadings', '--output', 'NAME', '--associated', file], { allowFailure: true });
  return r.ok
    ? r.stdout
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean)
    : [];
}

function modelOf(name: string): string {
  const dev = `/sys/class/block/${name}/device`;
  const parts = [read(`${dev}/vendor`), read(`${dev}/model`)].filter((s): s is string => !!s);
  if (name.startsWith('loop')) {
    const backing = read(`/sys/class/block/${name}/loop/backing_file`);
    return backing ? `loop device of ${backing}` : 'loop device';
  }
  return parts.join(' ') || 'unknown model';
}

export function gatherFacts(given: string, sys: SystemFacts = hostSystem()): TargetFacts {
  const facts: TargetFacts = {
    given,
    kind: 'missing',
    sizeBytes: 0,
    readOnly: false,
    model: '',
    mounted: [],
    swap: [],
    holders: [],
    holdsRoot: false,
    runningStorage: null,
    loopDevices: [],
  };
  let st: fs.Stats;
  try {
    st = fs.statSync(given);
  } catch {
    return facts;
  }
  if (st.isFile()) {
    facts.kind = 'file';
    facts.sizeBytes = st.size;
    facts.model = 'disk image file';
    facts.loopDevices = loopDevicesOf(given);
    try {
      fs.accessSync(given, fs.constants.W_OK);
    } catch {
      facts.readOnly = true;
    }
    return facts;
  }
  if (!st.isBlockDevice()) {
    facts.kind = 'other';
    facts.otherType = st.isDirectory()
      ? 'directory'
      : st.isCharacterDevice()
        ? 'character device'
        : st.isFIFO()
          ? 'FIFO'
          : st.isSocket()
            ? 'socket'
            : 'special file';
    return facts;
  }
  facts.kind = 'block';
  const mm = majorMinorOfNode(given)!;
  const sysDir = sysfsOf(mm);
  if (!sysDir) throw new UsageError(`${given}: the kernel knows no block device ${mm}`);
  const name = path.basename(sysDir);
  facts.name = name;
  if (fs.existsSync(path.join(sysDir, 'partition'))) {
    facts.partitionOf = path.basename(path.dirname(sysDir));
    return facts;
  }
  facts.sizeBytes = Number(read(`${sysDir}/size`) ?? 0) * 512;
  facts.readOnly = read(`${sysDir}/ro`) === '1';
  facts.model = modelOf(name);

  const members = diskAndPartitions(name);
  const numbers = new Set(members.values());
  for (const m of parseMountInfo(sys.mountinfo)) {
    if (numbers.has(m.majorMinor)) facts.mounted.push(`${m.source} on ${m.mountPoint}`);
  }
  for (const line of sys.swaps.split('\n').slice(1)) {
    const dev = line.split(/\s+/)[0];
    const smm = dev ? majorMinorOfNode(dev) : null;
    if (smm && numbers.has(smm)) facts.swap.push(dev);
  }
  for (const member of members.keys()) {
    const holders = `/sys/class/block/${member}/holders`;
    if (fs.existsSync(holders)) facts.holders.push(...fs.readdirSync(holders).map((h) => `${h} (on ${member})`));
  }
  facts.holdsRoot = rootDisks(sys).includes(name);
  const running = runningStorageDisks(sys);
  if (running?.disks.includes(name)) facts.runningStorage = running.spec;
  return facts;
}

/** "/dev/sdb: SanDisk Cruzer Blade, 14.3 GiB" — what the confirmation shows. */
export function describeTarget(f: TargetFacts): string {
  return `${f.given}: ${f.model}, ${formatBytes(f.sizeBytes)}`;
}
