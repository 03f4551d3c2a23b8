// The lower tree's side of the scan: what is below each upperdir entry, looked up ahead (while
// getfattr works, before the overlay xattrs are known), and file contents compared only when
// the sizes agree (up to COMPARE_MAX_BYTES; larger files by size and mtime).
import * as fs from 'node:fs';
import type { Walk } from './walk.js';

/** Regular files up to this size are compared byte for byte with the lower file. */
export const COMPARE_MAX_BYTES = 16 << 20;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
export const SLASH = Buffer.from('/');

export function lstatQuiet(p: Buffer): fs.Stats | undefined {
  try {
    return fs.lstatSync(p, { throwIfNoEntry: false });
  } catch {
    return undefined; // ENOTDIR, EACCES: not there as far as the merged view goes
  }
}

/** Byte comparison of two files of equal size, chunk by chunk, stopping at the first difference. */
export function sameContent(a: Buffer, b: Buffer, size: number): boolean {
  if (size === 0) return true;
  let fa = -1;
  let fb = -1;
  try {
    fa = fs.openSync(a, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    fb = fs.openSync(b, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const chunk = Math.min(size, 1 << 20);
    const ba = Buffer.allocUnsafe(chunk);
    const bb = Buffer.allocUnsafe(chunk);
    let pos = 0;
    while (pos < size) {
      const want = Math.min(chunk, size - pos);
      const na = readFully(fa, ba, want, pos);
      const nb = readFully(fb, bb, want, pos);
      if (na !== want || nb !== want) return false; // changed under us
      if (ba.compare(bb, 0, want, 0, want) !== 0) return false;
      pos += want;
    }
    return true;
  } catch {
    return false;
  } finally {
    if (fa >= 0) fs.closeSync(fa);
    if (fb >= 0) fs.closeSync(fb);
  }
}

function readFully(fd: number, buf: Buffer, want: number, pos: number): number {
  let got = 0;
  while (got < want) {
    const n = fs.readSync(fd, buf, got, want - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/**
 * The lower tree's side of the classification, looked up ahead (while getfattr works, before
 * the overlay xattrs are known): the lstat of every entry whose parent is a directory in both
 * trees, and the byte comparison of regular files of equal size. A superset of what the
 * classification asks (it does not look below opaque directories); it uses these results and
 * looks up only what is not here.
 */
export interface Below {
  /** looked[i]: the lower path was looked up; present[i]: something is there (its stat below) */
  looked: Uint8Array;
  present: Uint8Array;
  mode: Uint32Array;
  uid: Uint32Array;
  gid: Uint32Array;
  size: Float64Array;
  mtimeMs: Float64Array;
  rdev: Float64Array;
  /** SAME / DIFFERENT for a compared file, 0 when not compared */
  same: Uint8Array;
}
export const SAME = 1;
export const DIFFERENT = 2;

/** What the classification reads of a lower path's lstat (columns in Below: 100k fs.Stats kept alive cost GC time). */
export interface LowerStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeMs: number;
  rdev: number;
}

export function lowerStatAt(b: Below, i: number): LowerStat | undefined {
  if (!b.present[i]) return undefined;
  return { mode: b.mode[i], uid: b.uid[i], gid: b.gid[i], size: b.size[i], mtimeMs: b.mtimeMs[i], rdev: b.rdev[i] };
}

export function lookBelow(w: Walk, order: Int32Array, parent: Int32Array, dev: number, upperB: Buffer, lowerRoot: Buffer): Below {
  const n = w.rel.length;
  const b: Below = {
    looked: new Uint8Array(n),
    present: new Uint8Array(n),
    mode: new Uint32Array(n),
    uid: new Uint32Array(n),
    gid: new Uint32Array(n),
    size: new Float64Array(n),
    mtimeMs: new Float64Array(n),
    rdev: new Float64Array(n),
    same: new Uint8Array(n),
  };
  const dirInBoth = new Uint8Array(n);
  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    const p = parent[i];
    if ((p >= 0 && !dirInBoth[p]) || w.dev[i] !== dev || w.type[i] === 'socket') continue;
    const relB = Buffer.from(w.rel[i], 'latin1');
    const lowerAbs = Buffer.concat([lowerRoot, SLASH, relB]);
    const lst = lstatQuiet(lowerAbs);
    b.looked[i] = 1;
    if (!lst) continue;
    b.present[i] = 1;
    b.mode[i] = lst.mode;
    b.uid[i] = lst.uid;
    b.gid[i] = lst.gid;
    b.size[i] = lst.size;
    b.mtimeMs[i] = lst.mtimeMs;
    b.rdev[i] = lst.rdev;
    const type = w.type[i];
    const ifmt = lst.mode & S_IFMT;
    if (type === 'dir') {
      if (ifmt === S_IFDIR) dirInBoth[i] = 1;
    } else if (type === 'file' && ifmt === S_IFREG && lst.size === w.size[i] && w.size[i] <= COMPARE_MAX_BYTES) {
      b.same[i] = sameContent(Buffer.concat([upperB, SLASH, relB]), lowerAbs, w.size[i]) ? SAME : DIFFERENT;
    }
  }
  return b;
}
