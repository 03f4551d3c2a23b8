// The target as a block device with partition nodes, and temporary mounts on it. A disk image
// file is attached to a loop device (`losetup --partscan`), so that files and real disks take
// the same path through install and update. Every loop device and mount is registered with
// lib/cleanup.ts: a failure or Ctrl-C never leaves one behind.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { onCleanup } from '../lib/cleanup.js';
import { MkmaError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';

export class BlockDeviceError extends MkmaError {}

export interface Disk {
  /** /dev/sdb, /dev/loop3 */
  node: string;
  /** what the user named: the device, or the image file */
  given: string;
  /** the node of partition N (/dev/sdb2, /dev/nvme0n1p2, /dev/loop3p2) */
  partition(n: number): string;
  /** detaches the loop device of an image file (idempotent) */
  release(): void;
}

/** Partition N's node name: a `p` between a disk name ending in a digit and the number, as the kernel names them. */
export function partitionNode(diskNode: string, n: number): string {
  return /[0-9]$/.test(diskNode) ? `${diskNode}p${n}` : `${diskNode}${n}`;
}

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Makes the kernel (re)read the partition table and waits for partitions 1..count to have
 * nodes. `partx --update` adds, resizes and removes partitions one by one (it works while
 * another partition of the disk is open, where BLKRRPART would fail with EBUSY). A loop
 * device attached with --partscan sometimes shows no partitions at all until asked again
 * (seen on this kernel): the same call covers it.
 */
export function rereadPartitions(diskNode: string, count: number): void {
  const ready = () => {
    for (let n = 1; n <= count; n++) if (!fs.existsSync(partitionNode(diskNode, n))) return false;
    return true;
  };
  for (let attempt = 0; attempt < 3; attempt++) {
    runSync('partx', ['--update', diskNode], { allowFailure: true });
    for (let waited = 0; waited < 2000; waited += 50) {
      if (ready()) return;
      sleep(50);
    }
  }
  throw new BlockDeviceError(
    `the partitions of ${diskNode} did not appear (${partitionNode(diskNode, 1)} … ${partitionNode(diskNode, count)}); ` +
      'is /dev a devtmpfs? (partx --show shows what the table holds)',
  );
}

/** A real block device: nothing to attach or release. */
export function openBlockDevice(node: string): Disk {
  return { node, given: node, partition: (n) => partitionNode(node, n), release: () => {} };
}

/** Attaches a disk image file to a free loop device with partition scanning. */
export function attachImageFile(file: string): Disk {
  const node = runSync('losetup', ['--find', '--show', '--partscan', file]).stdout.trim();
  if (!node.startsWith('/dev/')) throw new BlockDeviceError(`losetup attached ${file} to "${node}"?`);
  let released = false;
  const detach = () => {
    if (released) return;
    released = true;
    runSync('losetup', ['--detach', node], { allowFailure: true });
  };
  const unregister = onCleanup(`detach ${node} (${file})`, detach);
  return {
    node,
    given: file,
    partition: (n) => partitionNode(node, n),
    release() {
      unregister();
      detach();
    },
  };
}

export interface Mounted {
  dir: string;
  /** unmounts (lazily if busy) and removes the mount point; idempotent */
  release(): void;
}

/** Mounts `device` at a fresh private directory, until release() (or mkma's end). */
export function mountTemporary(device: string, opts: { fstype?: string; readOnly?: boolean } = {}): Mounted {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-mount-'));
  const args = [
    ...(opts.fstype ? ['-t', opts.fstype] : []),
    '-o',
    opts.readOnly ? 'ro,nosuid,nodev,noexec' : 'rw,nosuid,nodev,noexec',
    device,
    dir,
  ];
  try {
    runSync('mount', args);
  } catch (e) {
    fs.rmdirSync(dir);
    throw e;
  }
  let released = false;
  const unmount = () => {
    if (released) return;
    released = true;
    if (!runSync('umount', [dir], { allowFailure: true }).ok) runSync('umount', ['--lazy', dir], { allowFailure: true });
    try {
      fs.rmdirSync(dir);
    } catch {
      /* still busy: left for the lazy unmount */
    }
  };
  const unregister = onCleanup(`unmount ${dir} (${device})`, unmount);
  return {
    dir,
    release() {
      unregister();
      unmount();
    },
  };
}

/** Writes a block device's dirty buffers to it (mtools and grub-bios-setup write through the page cache). */
export function flushDevice(node: string): void {
  runSync('blockdev', ['--flushbufs', node]);
}

/** blkid's low-level probe (no cache): TYPE, UUID, LABEL, PART_ENTRY_NAME, PART_ENTRY_TYPE, … */
export function probe(node: string): Record<string, string> {
  const r = runSync('blkid', ['--probe', '--output', 'export', node], { allowFailure: true });
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** `sgdisk --print` of a disk or image file (read-only). */
export function printPartitionTable(target: string): string {
  return runSync('sgdisk', ['--print', target]).stdout;
}
