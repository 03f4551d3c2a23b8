// `mkma chroot`'s image side: the tree the boot makes of an images directory, changeable on the
// host, and afterwards what changed, as `mkma persist` sees a booted system's changes.
//
// The tree is made as `mkma layers compact` makes the tree below a range (persist/compact.ts):
// base + the layers the boot applies, unpacked by `mkma unpack`'s code (format/apply.ts, with
// mkma-unpack where it builds) into a private tmpfs (persist/workarea.ts), which is the lowerdir
// of an overlay whose upperdir starts empty. The session runs in the overlay (the caller's
// chroot helpers, builder/chroot.ts); then every process still rooted there is stopped, the
// overlay is unmounted, and the upperdir is scanned against the lower tree by persist's scanner:
// the same ChangeEntry list the persist UI and writer take, whiteouts and opaque directories
// included.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { onCleanup } from '../lib/cleanup.js';
import { MkmaError } from '../lib/errors.js';
import type { Reporter } from '../lib/progress.js';
import { runSync } from '../lib/run.js';
import { unpackImages, type ApplyReport } from '../format/apply.js';
import { parseGetfattrDump } from '../format/xattrs.js';
import type { ChangeEntry, ScanResult } from './model.js';
import { scanUpper } from './scan.js';
import { stopProcessesIn, workArea } from './workarea.js';

export interface ImageTree {
  /** the merged view: the root the session works in */
  root: string;
  /** the unpacked base + layers (the overlay's lowerdir) */
  lower: string;
  /** the session's changes (the overlay's upperdir) */
  upper: string;
  /** the layers applied, in boot order */
  applied: string[];
  /** layers the boot skips (damaged), with why: skipped here too */
  skipped: ApplyReport[];
}

export interface SessionOptions {
  imagesDir: string;
  /** mkma-unpack (builder/unpacker.ts), or null for the TypeScript apply code */
  unpacker: string | null;
  reporter: Reporter;
  /** where the private tmpfs is made (default os.tmpdir()) */
  workBase?: string;
}

export interface SessionEnd {
  /** what `enter` resolved with (the command's exit status) */
  status: number;
  /** the upperdir against the lower tree (persist/scan.ts), no-op copy-ups left out */
  scan: ScanResult;
  tree: ImageTree;
}

/** The xattrs of one path (no trusted.overlay.*), as the scan lists them: [name, "0s…"] sorted. */
function xattrsOf(abs: string): Array<[string, string]> {
  const r = runSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'base64', '--', abs], { allowFailure: true });
  if (!r.ok) return [];
  const attrs = parseGetfattrDump(r.stdout).flatMap((rec) => rec.attrs);
  return attrs.filter(([n]) => !n.startsWith('trusted.overlay.')).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * A copy-up that changes nothing: a 'metadata' entry whose mode, owner, mtime and xattrs are the
 * lower file's. The chroot helpers make such entries (policy-rc.d and resolv.conf are moved
 * aside and back: the copy keeps the lower file's times), and so does a program that opens a
 * file for writing and writes nothing. They would be layer entries that change no tree.
 */
export function unchangedCopyUp(e: ChangeEntry, lower: string): boolean {
  if (e.kind !== 'metadata' || e.type === 'dir') return false;
  const below = fs.lstatSync(path.join(lower, Buffer.from(e.path, 'latin1').toString()), { throwIfNoEntry: false });
  if (!below) return false;
  if (below.mode !== e.mode || below.uid !== e.uid || below.gid !== e.gid || Math.floor(below.mtimeMs / 1000) !== e.mtime) return false;
  const mine = [...e.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const theirs = xattrsOf(path.join(lower, e.path));
  return JSON.stringify(mine) === JSON.stringify(theirs);
}

/** The scan without no-op copy-ups (unchangedCopyUp). */
function withoutNoops(scan: ScanResult, lower: string): ScanResult {
  const entries = scan.entries.filter((e) => !unchangedCopyUp(e, lower));
  return entries.length === scan.entries.length ? scan : { ...scan, entries };
}

/**
 * Makes the tree the boot would make of `imagesDir` in an overlay, runs `enter` on it, and
 * then `leave` with what changed; everything mounted is undone afterwards, whatever happens
 * (lib/cleanup.ts: also on SIGINT, SIGTERM, SIGHUP). The caller holds persist's lock.
 */
export async function chrootSession<T>(
  o: SessionOptions,
  enter: (tree: ImageTree) => Promise<number>,
  leave: (end: SessionEnd) => Promise<T>,
): Promise<T> {
  const { imagesDir, reporter } = o;
  const work = workArea(o.workBase ?? os.tmpdir(), 'chroot');
  for (const s of work.stale) reporter.info(`    removed ${s} (left by a killed mkma ${/mkma-work-([a-z]+)-/.exec(s)?.[1]})`);
  try {
    const lower = path.join(work.dir, 'lower');
    const upper = path.join(work.dir, 'upper');
    const wk = path.join(work.dir, 'work');
    const root = path.join(work.dir, 'root');
    let stage = reporter.stage('unpack', `${imagesDir}: base + the layers the boot applies`);
    const report = await unpackImages(imagesDir, lower, undefined, o.unpacker);
    const applied = report.layers.filter((r) => r.applied).map((r) => path.basename(r.file));
    const skipped = report.layers.filter((r) => !r.applied);
    for (const s of skipped) reporter.warn(`LAYER SKIPPED ${path.basename(s.file)}: ${s.reason} (as at boot)`);
    for (const w of [...report.base.warnings, ...report.warnings]) reporter.warn(w);
    stage.done(`base (${report.base.entries} entries) + ${applied.length} layer(s)`);
    for (const d of [upper, wk, root]) fs.mkdirSync(d, { mode: 0o755 });
    // as the init mounts the root: an upperdir that is a plain layer (no redirects, no metacopy)
    runSync('mount', [
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=${lower},upperdir=${upper},workdir=${wk},redirect_dir=off,metacopy=off`,
      root,
    ]);
    const tree: ImageTree = { root, lower, upper, applied, skipped };
    // interrupted: what still runs in the tree is stopped before its mounts go (newest cleanup first)
    const releaseStop = onCleanup(`stop processes in ${root}`, () => stopProcessesIn(root, 500));
    let status: number;
    try {
      status = await enter(tree);
    } finally {
      const left = stopProcessesIn(root);
      if (left) reporter.warn(`stopped ${left} process(es) still running in the chroot`);
      releaseStop();
    }
    const um = runSync('umount', [root], { allowFailure: true });
    if (!um.ok) throw new MkmaError(`cannot unmount the chroot's overlay ${root}: ${um.stderr.trim()}; nothing was saved`);
    stage = reporter.stage('scan', 'what the session changed');
    const scan = withoutNoops(await scanUpper(upper, lower), lower);
    stage.done(`${scan.entries.filter((e) => e.kind !== 'container').length} change(s)`);
    return await leave({ status, scan, tree });
  } finally {
    work.done();
  }
}
