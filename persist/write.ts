// Writes the chosen changes of the upperdir as a layer file (format/manifest.ts):
//   - every included entry, plus its parent directories (from the upperdir) so that the layer
//     applies on its own;
//   - 'deleted' (whiteouts) → `delete PATH` in the manifest, no archive entry;
//   - 'replaced' (opaque directories) → `opaque PATH` + the directory entry;
//   - xattrs other than overlayfs' own → the manifest's %xattrs;
//   - hardlink groups (within what is saved) stored once, inside one shard.
// The file appears atomically (ArchiveWriter: temporary name, fsync, rename, fsync of the
// directory). One persist at a time per images directory: an flock(2) on a lock file there
// (acquireLock); what a killed run left behind (its temporary file) is removed by the next one.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { layerId, layerNameFor, LAYER_PREFIX, NEW_LAYER_STATE, parseLayerName } from '../format/names.js';
import { collectHardlinks, packEntries, type TreeEntry } from '../format/tree.js';
import { ArchiveWriter, type WriterProgress } from '../format/writer.js';
import type { ChangeEntry, ScanResult } from './model.js';
import { MkmaError } from '../lib/errors.js';
import { describeFailure, runSync } from '../lib/run.js';

export const LOCK_NAME = '.mkma-persist.lock';
/** Kept free on the storage device beyond the layer's estimated size. */
export const SPACE_MARGIN = 16 << 20;

export class PersistBusyError extends MkmaError {}
export class NoSpaceError extends MkmaError {}
/** writeLayer was given a plan that saves nothing: no (empty) layer is ever written. */
export class NothingToSaveError extends MkmaError {}

export interface LayerPlan {
  /** entries that go into the archive, in scan order (included changes + their parent directories) */
  write: ChangeEntry[];
  /** whiteouts to record as `delete` */
  deleted: string[];
  /** opaque directories to record as `opaque` */
  opaque: string[];
  /** included changes (not counting parent directories added for structure) */
  changes: number;
  /** file + symlink bytes that go into the archive */
  bytes: number;
}

const parentOf = (p: string) => {
  const slash = p.lastIndexOf('/');
  return slash < 0 ? '' : p.slice(0, slash);
};

/**
 * What a layer holds for this scan and choice. A 'container' directory is written only as the
 * parent of something saved (it is no change of its own).
 */
export function planLayer(scan: ScanResult, include: (e: ChangeEntry) => boolean): LayerPlan {
  const chosen = new Set<string>();
  const needed = new Set<string>();
  const deleted: string[] = [];
  const opaque: string[] = [];
  let changes = 0;
  const need = (p: string) => {
    for (let d = parentOf(p); d !== '' && !needed.has(d); d = parentOf(d)) needed.add(d);
  };
  for (const e of scan.entries) {
    if (e.kind === 'container' || !include(e)) continue;
    changes++;
    need(e.path);
    if (e.kind === 'deleted') {
      deleted.push(e.path);
      continue;
    }
    if (e.kind === 'replaced') opaque.push(e.path);
    chosen.add(e.path);
  }
  const write = scan.entries.filter((e) => e.kind !== 'deleted' && (chosen.has(e.path) || needed.has(e.path)));
  let bytes = 0;
  for (const e of write) if (e.type === 'file' || e.type === 'symlink') bytes += e.size;
  return { write, deleted, opaque, changes, bytes };
}

/**
 * Why a plan saves nothing, or null when it saves something. A persist with nothing to save
 * writes nothing (an empty layer would cost a file and a boot step for no change) and says
 * why: `changes` is the count of changes found, `leftOutBy` what left them out.
 */
export function nothingToSave(
  plan: Pick<LayerPlan, 'changes'>,
  changes: number,
  leftOutBy: 'the rules' | 'your choices',
  since = 'boot',
): string | null {
  if (plan.changes > 0) return null;
  return changes === 0 ? `no changes since ${since}` : `${changes} change(s), all left out by ${leftOutBy}`;
}

// ---------------------------------------------------------------------------------------------
// The lock. flock(2), not a pid in a file: the kernel releases it when its holder dies (killed,
// power loss: then the file is simply unlocked), and exactly one of several contenders gets
// it. A pid file cannot do both: two persists that both find a dead owner's pid both take the
// file over. Node has no flock(2); `flock` (util-linux) locks the descriptor we pass it, and as
// the lock belongs to the open file description, which we keep, it stays ours after `flock`
// exits, until we close the descriptor or die.

/** flock(1)'s exit status when the lock is held by someone else (--conflict-exit-code). */
const LOCK_CONFLICT = 75;

/**
 * Who holds the lock, from the lock file's text (`PID COMMAND`, written by the holder): the
 * command only when it is one mkma writes (the file is on the storage: anything may be there).
 */
export function lockHolder(text: string): { pid: number; command: string | null } {
  const m = /^([0-9]+)(?: (mkma(?: [a-z-]+){1,2}))?\n?$/.exec(text);
  return m ? { pid: Number(m[1]), command: m[2] ?? null } : { pid: 0, command: null };
}

/** Why the lock cannot be taken: who holds it (the lock file's text), and what to do. */
export function lockBusyMessage(imagesDir: string, holderText: string, command: string): string {
  const h = lockHolder(holderText);
  const who = h.command === null ? 'another mkma command' : h.command === command ? `another ${command}` : h.command;
  const pid = h.pid > 0 ? ` (pid ${h.pid})` : '';
  const doing = h.command === 'mkma persist' ? `is writing a layer to ${imagesDir}` : `holds the lock of ${imagesDir}`;
  return `${who}${pid} ${doing}; wait for it to finish and run ${command} again`;
}

/**
 * Takes the images directory's persist lock (it does not wait); returns its release function.
 * `command` (e.g. "mkma chroot") is written into the lock file with the pid, for the message
 * another mkma command gets meanwhile.
 */
export function acquireLock(imagesDir: string, command = 'mkma persist'): () => void {
  const file = path.join(path.resolve(imagesDir), LOCK_NAME);
  const { O_RDWR, O_CREAT, O_NOFOLLOW } = fs.constants;
  for (let attempt = 0; attempt < 5; attempt++) {
    let fd: number;
    try {
      fd = fs.openSync(file, O_RDWR | O_CREAT | O_NOFOLLOW, 0o600);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EROFS') throw new MkmaError(`${imagesDir} is on a read-only filesystem`);
      if (code === 'ELOOP') throw new MkmaError(`${file} is a symbolic link, not mkma's lock file: remove it and run mkma persist again`);
      throw e;
    }
    let locked = false;
    try {
      const r = runSync('flock', ['--exclusive', '--nonblock', '--conflict-exit-code', String(LOCK_CONFLICT), '3'], {
        fds: [fd],
        allowFailure: true,
      });
      if (r.status === LOCK_CONFLICT) throw new PersistBusyError(lockBusyMessage(imagesDir, fs.readFileSync(fd, 'latin1'), command));
      if (!r.ok) throw new MkmaError(`cannot lock ${file}: ${describeFailure(r)}`);
      // The holder before us removes the file when it is done, possibly after we opened it:
      // then we locked a file nobody else will open, and must start again.
      const held = fs.fstatSync(fd);
      const now = fs.lstatSync(file, { throwIfNoEntry: false });
      if (now?.ino === held.ino && now.dev === held.dev) locked = true;
    } finally {
      if (!locked) fs.closeSync(fd);
    }
    if (!locked) continue;
    // the owner's pid and command, for the message another mkma command shows meanwhile
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid} ${command}\n`, 0);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // removed while still locked: whoever opened it meanwhile sees it gone (above) and retries
      fs.rmSync(file, { force: true });
      fs.closeSync(fd);
    };
  }
  throw new PersistBusyError(`cannot take the lock ${file} (other mkma commands keep taking it)`);
}

const TEMP_RE = /^\.persistence\..*\.tmp-\d+(?:-[0-9a-f]+)?$/;

/**
 * Removes temporary layer files in the images directory: with the lock held, any that exists
 * was left by a persist that was killed or lost power. Call with the lock held.
 */
export function removeStaleTemporaries(imagesDir: string): string[] {
  const removed: string[] = [];
  for (const name of fs.readdirSync(imagesDir)) {
    if (!TEMP_RE.test(name) || !name.startsWith('.' + LAYER_PREFIX)) continue;
    const p = path.join(imagesDir, name);
    // a regular file only: never follow or remove what only looks like ours
    if (!fs.lstatSync(p, { throwIfNoEntry: false })?.isFile()) continue;
    fs.rmSync(p, { force: true });
    removed.push(name);
  }
  return removed;
}

/**
 * A new layer's file name: persistence.<UTC stamp>@trial-3-0.cpio.zst (NEW_LAYER_STATE: on
 * trial until a boot with it reaches multi-user, docs/FORMAT.md "Layer names and states"), or
 * with -2, -3 … after the stamp if a layer of that second exists, in any state (an id is one
 * layer whatever its state). A compaction passes its own name (fileName) and stays active: it
 * folds only active layers (persist/compact.ts refuses others), content that booted already.
 */
export function pickLayerName(imagesDir: string, now: Date): string {
  let names: string[] = [];
  try {
    names = fs.readdirSync(imagesDir);
  } catch {
    // no directory yet: every name is free
  }
  const taken = new Set(names.map(layerId));
  for (let n = 1; ; n++) {
    const name = layerNameFor(now, n === 1 ? '' : `-${n}`, NEW_LAYER_STATE);
    if (!taken.has(layerId(name))) return name;
  }
}

/**
 * What a new layer's state means for its owner, as short lines for persist's output (the
 * command line and the UI): a layer on trial must see a boot through.
 */
export function newLayerNote(fileName: string): string[] {
  const l = parseLayerName(fileName);
  if (l?.status !== 'trial') return ['It applies at the next boot.'];
  return [
    'It applies at the next boot, on trial: it is kept once a boot with it',
    `reaches multi-user; after ${l.triesLeft} boots that do not, the boot leaves it out`,
    `(mkma layers bless ${l.id} accepts it now).`,
  ];
}

export interface WriteLayerOptions {
  upper: string;
  scan: ScanResult;
  include: (e: ChangeEntry) => boolean;
  /** planLayer(scan, include), when the caller has it already (it is not computed again) */
  plan?: LayerPlan;
  /**
   * Take mode, owner, size and mtime from the scan instead of a new lstat of every entry: for a
   * scan made just before (mkma persist --yes). Off by default: a scan the user looked at for a
   * while in the UI is older than the files (their sizes would be padded/truncated to it).
   */
  statsFromScan?: boolean;
  imagesDir: string;
  level: number;
  message?: string;
  /** the data_sha256 of the base the layer is written on (persist/base-identity.ts), when known */
  baseDataSha256?: string;
  now?: Date;
  onProgress?: (p: WriterProgress) => void;
  onWarning?: (msg: string) => void;
  /** aborting removes the temporary file and the lock, and rejects */
  signal?: AbortSignal;
  /** zstd frames compressed at once (default: the writer's) */
  jobs?: number;
  /** the layer's file name (default: pickLayerName), e.g. a compacted layer's (format/compacted.ts) */
  fileName?: string;
  /** the caller holds the images directory's lock already (acquireLock) */
  lockHeld?: boolean;
}

export interface WriteLayerResult {
  /** full path of the new layer */
  file: string;
  /** cpio entries in the layer */
  entries: number;
  /** uncompressed cpio bytes */
  bytesIn: number;
  /** bytes of the layer file */
  bytesOut: number;
  deleted: number;
  replaced: number;
  /** stale temporary files of killed runs that were removed first */
  cleaned: string[];
}

function statfsFree(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

/**
 * The archive entries of a plan. `fresh`: each entry as lstat sees it now. Otherwise with the
 * scan's own lstat data (find printed mode, owner, size and mtime; hardlink groups are the
 * scan's), without a second stat of every path; what the scan could not see is looked at here:
 * devices (st_rdev), and timestamps up to 1970 (find prints them as a negative fraction).
 * Either way an entry that vanished since the scan is left out with a warning; a file whose size
 * changed since its stat is padded or truncated by ArchiveWriter, which says so.
 */
export function treeFromScan(upper: string, write: ChangeEntry[], fresh: boolean, onWarning?: (msg: string) => void): TreeEntry[] {
  const upperB = Buffer.from(upper);
  const slash = Buffer.from('/');
  // hardlink groups: one (fake) inode number per group, shared by its members
  const inoOf = new Map<string, number>();
  let nextIno = 1;
  const tree: TreeEntry[] = [];
  for (const e of write) {
    const rel = Buffer.from(e.path, 'latin1');
    const abs = Buffer.concat([upperB, slash, rel]);
    if (e.type === 'socket' || e.type === 'whiteout') continue;
    let st: StatLike;
    if (fresh || e.type === 'char' || e.type === 'block' || e.mtime <= 0) {
      let real: fs.Stats | undefined;
      try {
        real = fs.lstatSync(abs);
      } catch {
        real = undefined;
      }
      if (!real) {
        onWarning?.(vanishedWarning(e.path));
        continue;
      }
      if (real.isSocket()) continue;
      st = real;
    } else {
      // (existsSync follows symlinks: a symlink's own existence takes an lstat). A plain
      // regular file is not checked here: the writer opens it before writing anything and
      // skips it when it is gone (packEntries' onVanished), one stat per file less.
      const plainFile = e.type === 'file' && !e.hardlinks.length;
      if (!plainFile && (e.type === 'symlink' ? !fs.lstatSync(abs, { throwIfNoEntry: false }) : !fs.existsSync(abs))) {
        onWarning?.(vanishedWarning(e.path));
        continue;
      }
      let ino = 0;
      let nlink = e.type === 'dir' ? 2 : 1;
      if (e.hardlinks.length && e.type !== 'dir') {
        ino = inoOf.get(e.path) ?? 0;
        if (!ino) {
          ino = nextIno++;
          inoOf.set(e.path, ino);
          for (const h of e.hardlinks) inoOf.set(h, ino);
        }
        nlink = e.hardlinks.length + 1;
      }
      st = {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.type === 'file' ? e.size : 0,
        mtimeMs: e.mtime * 1000,
        nlink,
        dev: 0,
        ino,
        rdev: 0,
      };
    }
    tree.push({ rel, abs, st: st as fs.Stats });
  }
  return tree;
}

/** The warning for an entry gone between the scan and the write (`rel`: raw, latin1). */
const vanishedWarning = (rel: string) => `/${rel} vanished since the scan; not saved`;

/** The fields of fs.Stats that format/tree.ts's packEntries and collectHardlinks read. */
type StatLike = Pick<fs.Stats, 'mode' | 'uid' | 'gid' | 'size' | 'mtimeMs' | 'nlink' | 'dev' | 'ino' | 'rdev'>;

export async function writeLayer(opts: WriteLayerOptions): Promise<WriteLayerResult> {
  const plan = opts.plan ?? planLayer(opts.scan, opts.include);
  if (plan.changes === 0) throw new NothingToSaveError('nothing to save: no change is chosen (no layer was written)');
  const release = opts.lockHeld ? () => {} : acquireLock(opts.imagesDir);
  let writer: ArchiveWriter | null = null;
  try {
    const cleaned = removeStaleTemporaries(opts.imagesDir);
    const estimate = plan.bytes + 512 * (plan.write.length + plan.deleted.length);
    const free = statfsFree(opts.imagesDir);
    if (free < estimate + SPACE_MARGIN) {
      const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
      throw new NoSpaceError(
        `not enough space in ${opts.imagesDir}: the layer may need up to ${mib(estimate)} (before compression) ` +
          `+ ${mib(SPACE_MARGIN)} to spare, and ${mib(free)} is free. Free some space (old layers can be merged ` +
          `or removed), or save less (--exclude).`,
      );
    }
    const now = opts.now ?? new Date();
    const finalPath = path.join(opts.imagesDir, opts.fileName ?? pickLayerName(opts.imagesDir, now));
    writer = new ArchiveWriter(finalPath, {
      kind: 'layer',
      level: opts.level,
      mode: 0o600,
      created: now,
      message: opts.message,
      baseDataSha256: opts.baseDataSha256,
      onProgress: opts.onProgress,
      onWarning: opts.onWarning,
      ...(opts.jobs ? { jobs: opts.jobs } : {}),
      // Two zstd threads per shard: the last shard's compression is the tail of a persist,
      // which one thread ran alone (bench figure 4, 208 MiB upperdir: 2.1-2.2 s against
      // 2.4 s with one thread; the base pack showed no difference, it keeps one).
      threads: 2,
    });
    const tree = treeFromScan(opts.upper, plan.write, !opts.statsFromScan, opts.onWarning);
    const byPath = new Map(plan.write.map((e) => [e.path, e]));
    const signal = opts.signal;
    const stats = await packEntries(
      writer,
      tree,
      collectHardlinks(tree),
      () => {
        if (signal?.aborted) throw new Error('interrupted');
      },
      (e) => opts.onWarning?.(vanishedWarning(e.rel.toString('latin1'))),
    );
    void stats;
    for (const t of tree) {
      const p = t.rel.toString('latin1');
      const e = byPath.get(p);
      if (e && e.xattrs.length) writer.addXattrs({ path: p, attrs: e.xattrs });
    }
    for (const p of plan.opaque) writer.addOpaque(p);
    for (const p of plan.deleted) writer.addDeleted(p);
    if (signal?.aborted) throw new Error('interrupted');
    const r = await writer.finish();
    return {
      file: r.path,
      entries: r.manifest.entries,
      bytesIn: r.cpioBytes,
      bytesOut: r.fileBytes,
      deleted: plan.deleted.length,
      replaced: plan.opaque.length,
      cleaned,
    };
  } catch (e) {
    writer?.abort();
    throw e;
  } finally {
    release();
  }
}
