// Walking a directory tree into an mkma archive: sorted (deterministic), one filesystem
// (like find -xdev), raw byte names, hardlink groups stored once (xattrs: format/xattrs.ts).
import * as fs from 'node:fs';
import { NEWC_MAX_FILE_SIZE, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from './newc.js';
import { VanishedError, type ArchiveWriter, type EntryHeader } from './writer.js';
import { MkmaError } from '../lib/errors.js';

export interface TreeEntry {
  /** path relative to the root, raw bytes; "." for the root itself */
  rel: Buffer;
  abs: Buffer;
  st: fs.Stats;
}

/** 'keep' the entry; 'skip' it (and its subtree); keep a directory but 'empty' its contents. */
export type ExcludeDecision = 'keep' | 'skip' | 'empty';
export type ExcludeFn = (rel: string, st: fs.Stats) => ExcludeDecision;

const SLASH = Buffer.from('/');

export function relString(rel: Buffer): string {
  return rel.toString('latin1');
}

/**
 * Pre-order, children sorted by raw bytes; does not descend into other filesystems.
 *
 * The stack holds, per directory being walked, only its sorted names; an entry's paths and
 * lstat are made when it is visited. Holding every child's Stats and paths from the moment its
 * directory was read (a large directory's for as long as its files take to pack) made them
 * survive the young generation: V8 promoted them, and the old generation, collected later the
 * longer the walk ran, made the packer's peak RSS grow with the tree (bench figure 1).
 */
export function* walkTree(root: string, exclude?: ExcludeFn): Generator<TreeEntry> {
  const rootAbs = Buffer.from(root);
  const rootSt = fs.lstatSync(rootAbs);
  const rootDev = rootSt.dev;
  yield { rel: Buffer.from('.'), abs: rootAbs, st: rootSt };
  const frames: Array<{ abs: Buffer; rel: Buffer | null; names: Buffer[]; next: number }> = [];
  const enter = (abs: Buffer, rel: Buffer | null) => {
    const names = fs.readdirSync(abs, { encoding: 'buffer' }) as Buffer[];
    names.sort(Buffer.compare);
    frames.push({ abs, rel, names, next: 0 });
  };
  enter(rootAbs, null);
  while (frames.length) {
    const f = frames[frames.length - 1];
    if (f.next === f.names.length) {
      frames.pop();
      continue;
    }
    const name = f.names[f.next++];
    const abs = Buffer.concat([f.abs, SLASH, name]);
    const rel = f.rel ? Buffer.concat([f.rel, SLASH, name]) : name;
    let st: fs.Stats;
    try {
      st = fs.lstatSync(abs);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // vanished: live tree
      throw e;
    }
    const decision = exclude ? exclude(relString(rel), st) : 'keep';
    if (decision === 'skip') continue;
    yield { rel, abs, st };
    if (decision === 'empty') continue;
    if ((st.mode & S_IFMT) === S_IFDIR && st.dev === rootDev) enter(abs, rel);
  }
}

export interface HardlinkGroups {
  /** "dev:ino" → member rel paths (latin1), in walk order */
  groups: Map<string, string[]>;
}

const inodeKey = (st: fs.Stats) => `${st.dev}:${st.ino}`;

export function collectHardlinks(entries: Iterable<TreeEntry>): HardlinkGroups {
  const groups = new Map<string, string[]>();
  for (const e of entries) {
    if ((e.st.mode & S_IFMT) === S_IFDIR || e.st.nlink < 2) continue;
    const k = inodeKey(e.st);
    const g = groups.get(k);
    if (g) g.push(relString(e.rel));
    else groups.set(k, [relString(e.rel)]);
  }
  for (const [k, g] of groups) if (g.length < 2) groups.delete(k);
  return { groups };
}

export function rdevSplit(rdev: number): { major: number; minor: number } {
  // glibc's encoding of dev_t
  const major = (Math.floor(rdev / 256) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff);
  return { major: major >>> 0, minor: minor >>> 0 };
}

export class FileTooLargeError extends MkmaError {}

export interface PackStats {
  entries: number;
  files: number;
  bytes: number;
  skippedSockets: string[];
}

/**
 * Packs entries in the given order. Members of a hardlink group are written together at the
 * first member's position (GNU cpio's newc convention: data with the last link), inside one
 * shard, so that each shard stays independently extractable.
 */
export async function packEntries(
  writer: ArchiveWriter,
  entries: Iterable<TreeEntry>,
  hardlinks: HardlinkGroups,
  onEntry?: (e: TreeEntry) => void,
  /** a regular file vanished since it was listed: skipped (without this: an error) */
  onVanished?: (e: TreeEntry) => void,
): Promise<PackStats> {
  const stats: PackStats = { entries: 0, files: 0, bytes: 0, skippedSockets: [] };
  const done = new Set<string>();
  let ino = 1;
  const lookup = new Map<string, TreeEntry>();
  // For a group we need the other members' stats when we meet the first one.
  const groupOf = new Map<string, string>();
  for (const [k, members] of hardlinks.groups) for (const m of members) groupOf.set(m, k);

  for (const e of entries) {
    const rel = relString(e.rel);
    const type = e.st.mode & S_IFMT;
    if (type === S_IFSOCK) {
      stats.skippedSockets.push(rel);
      continue;
    }
    onEntry?.(e);
    const base: EntryHeader = {
      name: e.rel,
      ino: 0,
      mode: e.st.mode,
      uid: e.st.uid,
      gid: e.st.gid,
      nlink: 1,
      mtime: Math.floor(e.st.mtimeMs / 1000),
      size: 0,
      rdevMajor: 0,
      rdevMinor: 0,
    };
    const gk = groupOf.get(rel);
    if (gk) {
      if (done.has(gk)) continue;
      done.add(gk);
      const members = hardlinks.groups.get(gk)!;
      const id = ino++;
      checkSize(rel, e.st.size);
      writer.keepTogether(true);
      for (let i = 0; i < members.length; i++) {
        const name = Buffer.from(members[i], 'latin1');
        const h = { ...base, name, ino: id, nlink: members.length };
        if (i < members.length - 1) await writer.addEmpty(h);
        else {
          writer.keepTogether(false);
          await writer.addFile({ ...h, size: e.st.size }, e.abs);
        }
      }
      stats.entries += members.length;
      stats.files++;
      stats.bytes += e.st.size;
      continue;
    }
    base.ino = ino++;
    if (type === S_IFDIR) base.nlink = 2;
    stats.entries++;
    if (type === S_IFREG) {
      checkSize(rel, e.st.size);
      try {
        await writer.addFile({ ...base, size: e.st.size }, e.abs);
      } catch (err) {
        if (!(err instanceof VanishedError) || !onVanished) throw err;
        stats.entries--;
        onVanished(e);
        continue;
      }
      stats.files++;
      stats.bytes += e.st.size;
    } else if (type === S_IFLNK) {
      await writer.addBuffer(base, fs.readlinkSync(e.abs, { encoding: 'buffer' }) as Buffer);
    } else {
      const { major, minor } = rdevSplit(e.st.rdev);
      await writer.addEmpty({ ...base, rdevMajor: type === S_IFDIR ? 0 : major, rdevMinor: type === S_IFDIR ? 0 : minor });
    }
  }
  void lookup;
  return stats;
}

function checkSize(rel: string, size: number): void {
  if (size > NEWC_MAX_FILE_SIZE) {
    const gib = (size / 2 ** 30).toFixed(1);
    throw new FileTooLargeError(
      `/${rel} is ${gib} GiB: the cpio newc format holds files up to 4 GiB - 1. ` +
        `Exclude it from the image (or split it) and build again.`,
    );
  }
}
