// Reads an overlayfs upperdir and says what each entry means for the merged view (persist/model.ts):
// added, modified, metadata only, deleted (whiteout), replaced (opaque directory), or only a
// container of changes.
//
// Speed (the upperdir of a busy machine holds 100k+ entries): no process is started per entry.
// The walk, every xattr and the lower tree's side come from mkma-scan, one native process
// (init/unpack/mkma-scan.c, persist/walk-native.ts; 1.6× of a bare find -printf against 3.6×
// for the way below, docs/perf-research.md). Where it cannot be had (persist/scan-helper.ts):
//   find -xdev -printf, parsed as it streams (persist/walk.ts)
//   → each path, batched, into xargs getfattr -d (format/xattrs.ts): every xattr, overlayfs' own
// then one lstat in the lower tree per entry whose parent exists there as a directory, while
// getfattr works (persist/lower.ts). Both give the same result. Nothing follows symlinks, and
// nothing descends into another filesystem.
import * as fs from 'node:fs';
import type { XattrRecord } from '../format/manifest.js';
import { decodeXattrValue, XattrReader } from '../format/xattrs.js';
import {
  COMPARE_MAX_BYTES,
  lookBelow,
  lowerStatAt,
  lstatQuiet,
  SAME,
  sameContent,
  S_IFDIR,
  S_IFMT,
  SLASH,
  type Below,
  type LowerStat,
} from './lower.js';
import type { ChangeEntry, ChangeKind, EntryType, ScanResult } from './model.js';
import { scanHelper } from './scan-helper.js';
import { preorder, TYPE_BY_IFMT, walkUpper, type Walk } from './walk.js';
import { walkNative } from './walk-native.js';

export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';

/** Shared by the many entries without xattrs or hardlinks (frozen: 100k empty arrays cost GC time). */
const NONE = Object.freeze([]) as unknown as Array<[string, string]>;

const MOUNT_POINT_REASON = 'another filesystem is mounted here; its contents are not part of the overlay and are not saved';
const SOCKET_REASON = 'a socket belongs to the program that listens on it; it cannot be saved';

export interface ScanOptions {
  /**
   * 'native': mkma-scan (an error when it is not available); 'find': the TypeScript walk over
   * find + getfattr; default: mkma-scan when it can be had (persist/scan-helper.ts), else find.
   */
  walker?: 'native' | 'find';
}

interface Source {
  w: Walk;
  records: XattrRecord[];
  below: Below | null;
  order: Int32Array;
  parent: Int32Array;
}

/** The walk by mkma-scan: entries, xattrs and the lower side from one process. */
async function nativeSource(helper: string, root: string, lower: string | null): Promise<Source> {
  const walk = walkNative(helper, root, lower);
  const r = await walk.done;
  return { ...r, ...preorder(r.w) };
}

/** The walk by find, the xattrs by getfattr, the lower side looked up here. */
async function findSource(root: string, dev: number, upperB: Buffer, lowerRoot: Buffer | null): Promise<Source> {
  const xattrs = new XattrReader(root);
  const walk = walkUpper(root, (buf, start, end) => xattrs.add(buf, start, end));
  try {
    const w = await walk.done;
    // xargs starts getfattr once its command line is full or its input ends, so for all but
    // big trees getfattr runs only now: the lower tree is looked at meanwhile (another core)
    xattrs.end();
    const { order, parent } = preorder(w);
    const below = lowerRoot ? lookBelow(w, order, parent, dev, upperB, lowerRoot) : null;
    const { records } = await xattrs.finish();
    return { w, records, below, order, parent };
  } catch (e) {
    walk.kill();
    xattrs.kill();
    throw e;
  }
}

/**
 * Scans `upper` (an overlayfs upperdir) against `lower` (the tree below it, or null when it is
 * not available: then everything that is not a whiteout or opaque directory counts as added).
 * Entries are in pre-order, siblings sorted by bytes; `mtime` is in whole seconds.
 */
export async function scanUpper(upper: string, lower: string | null, opts: ScanOptions = {}): Promise<ScanResult> {
  const t0 = performance.now();
  const root = fs.realpathSync(upper);
  const rootSt = fs.lstatSync(root);
  if (!rootSt.isDirectory()) throw new Error(`${upper} is not a directory`);
  const lowerRoot = lower === null ? null : Buffer.from(lower);
  if (lowerRoot && !lstatQuiet(lowerRoot)?.isDirectory()) throw new Error(`lower tree ${lower} is not a directory`);

  const upperB = Buffer.from(root);
  const helper = opts.walker === 'find' ? null : scanHelper().path;
  if (opts.walker === 'native' && !helper) throw new Error(`mkma-scan is not available: ${scanHelper().reason}`);
  const { w, records, below, order, parent } = helper
    ? await nativeSource(helper, root, lower)
    : await findSource(root, rootSt.dev, upperB, lowerRoot);

  const skipped: ScanResult['skipped'] = [];
  for (const line of w.errors) {
    const m = /^(?:find|mkma-scan): '(.*)': (.*)$/.exec(line);
    const p = m && m[1].startsWith(root + '/') ? m[1].slice(root.length + 1) : '';
    skipped.push({ path: p, reason: m ? `cannot be read: ${m[2]}` : line });
  }
  const overlayX = new Map<string, Map<string, string>>();
  const userX = new Map<string, Array<[string, string]>>();
  for (const r of records) {
    let ov: Map<string, string> | null = null;
    let other: Array<[string, string]> | null = null;
    for (const [name, value] of r.attrs) {
      if (name.startsWith(OVERLAY_XATTR_PREFIX)) (ov ??= new Map()).set(name.slice(OVERLAY_XATTR_PREFIX.length), value);
      else (other ??= []).push([name, value]);
    }
    if (ov) overlayX.set(r.path, ov);
    if (other) userX.set(r.path, other);
  }

  const n = w.rel.length;
  // lowerDir[i]: the lower tree has a real, visible directory at this path, so children are
  // looked up below; dead[i]: skipped, and its subtree with it.
  const lowerDir = new Uint8Array(n);
  const dead = new Uint8Array(n);
  const entryOf = new Int32Array(n).fill(-1);
  const entries: ChangeEntry[] = [];
  const entryParent: number[] = [];
  const groups = new Map<string, number[]>();
  let bytes = 0;
  /** what the lower tree has at a path whose parent is visible there (for whiteouts and opaque dirs) */
  // (paths as bytes only when a lookup is not in `below` already: most are)
  const lowerAbsOf = (path: string) => Buffer.concat([lowerRoot!, SLASH, Buffer.from(path, 'latin1')]);
  const upperAbsOf = (path: string) => Buffer.concat([upperB, SLASH, Buffer.from(path, 'latin1')]);
  const lowerTypeAt = (i: number, p: number, path: string): EntryType | undefined => {
    if (!lowerRoot || !(p < 0 || lowerDir[p] === 1)) return undefined;
    const lst = below?.looked[i] ? lowerStatAt(below, i) : lstatQuiet(lowerAbsOf(path));
    return lst ? TYPE_BY_IFMT[lst.mode & S_IFMT] : undefined;
  };

  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    const p = parent[i];
    const path = w.rel[i];
    const type = w.type[i];
    if (p >= 0 && dead[p]) {
      dead[i] = 1;
      continue;
    }
    if (w.dev[i] !== rootSt.dev) {
      // find -xdev lists a mount point but does not enter it
      skipped.push({ path, reason: MOUNT_POINT_REASON });
      dead[i] = 1;
      continue;
    }
    const ov = overlayX.get(path);
    const mode = w.mode[i];
    let kind: ChangeKind;
    let entryType: EntryType = type;
    let size = type === 'file' || type === 'symlink' ? w.size[i] : 0;
    const target = type === 'symlink' ? (w.target.get(i) ?? '') : undefined;
    // find cannot print st_rdev: devices (whiteouts, mostly) are looked at here
    const rdev = type === 'char' || type === 'block' ? (w.rdev ? w.rdev[i] : (lstatQuiet(upperAbsOf(path))?.rdev ?? -1)) : -1;

    let lowerType: EntryType | undefined;
    if ((type === 'char' && rdev === 0) || (type === 'file' && w.size[i] === 0 && ov?.has('whiteout'))) {
      kind = 'deleted';
      entryType = 'whiteout';
      size = 0;
      lowerType = lowerTypeAt(i, p, path);
    } else if (ov && (ov.has('redirect') || ov.has('metacopy'))) {
      const which = ov.has('redirect') ? 'redirect' : 'metacopy';
      skipped.push({
        path,
        reason:
          `overlayfs ${which} entry (trusted.overlay.${which}): its data is elsewhere in the lower tree, so it cannot ` +
          `be saved as a layer (mkma mounts with redirect_dir=off,metacopy=off: this overlay was mounted differently)`,
      });
      dead[i] = 1;
      continue;
    } else if (type === 'socket') {
      skipped.push({ path, reason: SOCKET_REASON });
      dead[i] = 1;
      continue;
    } else if (type === 'dir' && ov?.has('opaque') && decodeXattrValue(ov.get('opaque')!).toString('latin1') === 'y') {
      // ("x" means "holds xattr whiteouts", not opaque)
      kind = 'replaced';
      lowerType = lowerTypeAt(i, p, path);
    } else {
      const parentLowerVisible = p < 0 ? lowerRoot !== null : lowerDir[p] === 1;
      const lst: LowerStat | undefined =
        !parentLowerVisible || !lowerRoot ? undefined : below?.looked[i] ? lowerStatAt(below, i) : lstatQuiet(lowerAbsOf(path));
      if (lst) lowerType = TYPE_BY_IFMT[lst.mode & S_IFMT];
      if (!lst) {
        kind = 'added';
      } else if (type === 'dir' && (lst.mode & S_IFMT) === S_IFDIR) {
        lowerDir[i] = 1;
        // A directory copied up only to hold changes is a container; one whose owner or mode
        // changed (chmod/chown of the directory itself) is a change of its own.
        const sameMeta = (mode & 0o7777) === (lst.mode & 0o7777) && w.uid[i] === lst.uid && w.gid[i] === lst.gid;
        kind = sameMeta ? 'container' : 'metadata';
      } else if ((lst.mode & S_IFMT) !== (mode & S_IFMT)) {
        kind = 'modified';
      } else if (type === 'file') {
        if (lst.size !== w.size[i]) kind = 'modified';
        else if (w.size[i] > COMPARE_MAX_BYTES) kind = Math.floor(lst.mtimeMs / 1000) === w.mtime[i] ? 'metadata' : 'modified';
        else if (below?.same[i]) kind = below.same[i] === SAME ? 'metadata' : 'modified';
        else kind = sameContent(upperAbsOf(path), lowerAbsOf(path), w.size[i]) ? 'metadata' : 'modified';
      } else if (type === 'symlink') {
        const lt = (fs.readlinkSync(lowerAbsOf(path), { encoding: 'buffer' }) as Buffer).toString('latin1');
        kind = lt === target ? 'metadata' : 'modified';
      } else if (type === 'char' || type === 'block') {
        kind = lst.rdev === rdev ? 'metadata' : 'modified';
      } else {
        kind = 'metadata'; // a fifo
      }
    }
    const j = entries.length;
    entryOf[i] = j;
    entryParent.push(p >= 0 ? entryOf[p] : -1);
    bytes += size;
    const entry: ChangeEntry = {
      path,
      kind,
      type: entryType,
      size,
      totalSize: size,
      mode,
      uid: w.uid[i],
      gid: w.gid[i],
      mtime: w.mtime[i],
      xattrs: userX.get(path) ?? NONE,
      hardlinks: NONE as unknown as string[],
    };
    if (target !== undefined) entry.target = target;
    if (lowerType !== undefined) entry.lowerType = lowerType;
    entries.push(entry);
    // Hardlinks: entries sharing an inode inside the upperdir (whiteouts share overlayfs' one
    // whiteout inode: they are not links of each other).
    if (w.inode[i] && entryType !== 'whiteout') {
      const g = groups.get(w.inode[i]);
      if (g) g.push(j);
      else groups.set(w.inode[i], [j]);
    }
  }

  // Subtree sizes: children come after their parents, so one backward pass adds them up.
  for (let j = entries.length - 1; j >= 0; j--) {
    const p = entryParent[j];
    if (p >= 0) entries[p].totalSize += entries[j].totalSize;
  }
  for (const g of groups.values()) {
    if (g.length < 2) continue;
    for (const j of g) entries[j].hardlinks = g.filter((o) => o !== j).map((o) => entries[o].path);
  }

  return {
    upper,
    lower,
    entries,
    skipped,
    stats: { entries: entries.length, bytes, scanMs: Math.round(performance.now() - t0) },
  };
}
