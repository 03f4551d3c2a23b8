// An open mkma stick: the disk (a loop device for an image file), its ESP through mtools and
// its data filesystem mounted at a private directory, all released by close() — or by
// lib/cleanup.ts when mkma fails or is interrupted first.
import * as fs from 'node:fs';
import { UsageError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';
import { attachImageFile, flushDevice, mountTemporary, openBlockDevice, probe, type Disk, type Mounted } from './blockdev.js';
import { Esp } from './esp.js';
import { PARTITIONS } from './layout.js';

export interface StickSession {
  disk: Disk;
  esp: Esp;
  data: Mounted;
  /** the data filesystem's UUID (what the menu's mkma_storage_device= names) */
  dataUuid: string;
  /** the LUKS container's UUID, when the data partition is encrypted */
  luksUuid?: string;
  /** remounts the data filesystem read-write (a session opened read-only, once it knows it will write) */
  writable(): void;
  /** flushes the ESP, unmounts, closes and detaches; idempotent */
  close(): void;
}

/** The disk of a target: a block device as it is, an image file through a loop device. */
export function openDisk(target: string): Disk {
  return fs.statSync(target).isBlockDevice() ? openBlockDevice(target) : attachImageFile(target);
}

/**
 * Opens the stick on `disk` (which must carry mkma's layout) and mounts its data filesystem;
 * read-only until writable() when `readOnly` (even a read-write mount writes the superblock:
 * an update that finds nothing to do leaves the stick's bytes as they were).
 */
export function openStick(disk: Disk, opts: { readOnly?: boolean } = {}): StickSession {
  const espNode = disk.partition(PARTITIONS.esp.number);
  const dataNode = disk.partition(PARTITIONS.data.number);
  const kind = probe(dataNode).TYPE;
  if (kind === 'crypto_LUKS') {
    throw new UsageError(`${disk.given}: the data partition is encrypted; this mkma cannot open it yet`);
  }
  if (kind !== 'ext4')
    throw new UsageError(`${disk.given}: the data partition ${dataNode} holds ${kind ?? 'no filesystem'}, not ext4: not an mkma stick`);
  const dataUuid = probe(dataNode).UUID;
  if (!dataUuid) throw new UsageError(`${disk.given}: the data filesystem on ${dataNode} has no UUID`);
  const data = mountTemporary(dataNode, { fstype: 'ext4', readOnly: opts.readOnly });
  const esp = new Esp(espNode);
  let closed = false;
  return {
    disk,
    esp,
    data,
    dataUuid,
    writable() {
      if (opts.readOnly) runSync('mount', ['-o', 'remount,rw', data.dir]);
    },
    close() {
      if (closed) return;
      closed = true;
      try {
        flushDevice(espNode);
      } finally {
        data.release();
        runSync('sync', []);
      }
    },
  };
}
