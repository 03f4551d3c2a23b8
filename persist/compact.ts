// `mkma layers compact`: consecutive layers merged into one equivalent layer, and --into-base:
// every active layer folded into a new base.cpio.zst.
//
// The new layer is the difference the range makes, found by construction: the tree below the
// range (base + the layers before it, unpacked into a private tmpfs) is the lowerdir of an
// overlay with an empty upperdir; the range's layers are applied onto the merged view with the
// boot's own apply code (mkma-unpack -l where it builds, else format/apply.ts); the upperdir
// then holds exactly what the range changes, and persist's scanner and writer save it. A
// whiteout that hides nothing below never reaches the upperdir, and an entry a later layer
// replaced is only there as its last version.
//
// Atomicity (docs/FORMAT.md, "Compacted layers"): the new layer's name declares the range it
// supersedes (format/compacted.ts), and every lister ignores superseded layers, so the rename
// that completes the new file is the commit point. Old files are removed after it; a crash in
// between leaves them superseded, and the next compaction removes them first.
// --into-base compacts every active layer into one first (same commit point), writes the new
// base under a temporary name and renames it over base.cpio.zst (the old base stays whole until
// then), then removes that one layer: applying a layer a second time onto a tree that already
// holds it changes nothing (its removals are recreated by its own merge), so base' + layer and
// base' are the same tree in the moment between.
// A compaction killed with SIGKILL cannot unmount its work area: the next compaction (or mkma
// chroot) removes it first and says so (persist/workarea.ts).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FILES, ZSTD_LEVEL } from '../lib/contract.js';
import { MkmaError, UsageError } from '../lib/errors.js';
import { formatBytes, type Reporter } from '../lib/progress.js';
import { runSync } from '../lib/run.js';
import { applyLayer, applyLayersNative, unpackImages, type ApplyReport } from '../format/apply.js';
import { compactedName } from '../format/compacted.js';
import { listImages } from '../format/images.js';
import { parseLayerName } from '../format/names.js';
import { packTree } from '../format/pack.js';
import { readManifest } from '../format/reader.js';
import { fsyncDir } from '../format/writer.js';
import { scanUpper } from './scan.js';
import { acquireLock, planLayer, removeStaleTemporaries, writeLayer } from './write.js';
import { removeStaleWorkAreas, staleWarning, workArea } from './workarea.js';

export interface CompactOptions {
  imagesDir: string;
  /** "FROM..TO": layer names or 1-based positions in boot order, either side optional; default all */
  range?: string;
  /** zstd level (default: the highest the range's layers record, else the base's: rangeLevel) */
  level?: number;
  message?: string;
  /** mkma-unpack (builder/unpacker.ts), or null for the TypeScript apply code */
  unpacker: string | null;
  reporter: Reporter;
  /** where the private tmpfs is mounted (default os.tmpdir()) */
  workBase?: string;
  /**
   * the whole base below the range, not only what the range touches (mkma-unpack -t): the
   * slower way, which the tests compare with (both must give the same layer)
   */
  wholeBase?: boolean;
}

export interface CompactResult {
  /** the new layer, or null when the range held nothing (then only removed) */
  layer: string | null;
  replaced: string[];
  /** bytes of the replaced files, and of the new one */
  bytesBefore: number;
  bytesAfter: number;
  entries: number;
  /** the zstd level the new layer was written at */
  level: number;
  /** superseded layers and temporary files of an interrupted compaction, removed first */
  cleaned: string[];
}

const BASE_TEMP_RE = new RegExp(`^\\.${FILES.base.replace(/\./g, '\\.')}\\.tmp-\\d+(?:-[0-9a-f]+)?$`);

/** What an interrupted compaction left (call with the lock held): superseded layers, temporaries. */
export function finishInterrupted(imagesDir: string): string[] {
  const cleaned = removeStaleTemporaries(imagesDir);
  for (const name of fs.readdirSync(imagesDir)) {
    if (!BASE_TEMP_RE.test(name) || !fs.lstatSync(path.join(imagesDir, name)).isFile()) continue;
    fs.rmSync(path.join(imagesDir, name));
    cleaned.push(name);
  }
  for (const i of listImages(imagesDir).ignored) {
    if (!i.reason.startsWith('superseded')) continue;
    fs.rmSync(path.join(imagesDir, i.name));
    cleaned.push(i.name);
  }
  if (cleaned.length) fsyncDir(imagesDir);
  return cleaned;
}

/** The layers FROM..TO names (positions 1-based, or names) among `layers`, in boot order. */
export function selectRange(layers: string[], range: string | undefined): { start: number; end: number } {
  if (range === undefined || range === '') return { start: 0, end: layers.length };
  const m = /^(.*?)\.\.(.*)$/.exec(range);
  if (!m) throw new UsageError(`compact: the range is FROM..TO (names or positions, e.g. 2..5 or 3..), not ${JSON.stringify(range)}`);
  const at = (s: string, dflt: number): number => {
    if (s === '') return dflt;
    if (/^[0-9]+$/.test(s)) {
      const n = Number(s);
      if (n < 1 || n > layers.length) throw new UsageError(`compact: there is no layer ${n} (${layers.length} active layer(s))`);
      return n - 1;
    }
    const i = layers.indexOf(s);
    if (i < 0) throw new UsageError(`compact: ${s} is not an active layer (mkma layers lists them)`);
    return i;
  };
  const start = at(m[1], 0);
  const end = at(m[2], layers.length - 1) + 1;
  if (end <= start) throw new UsageError(`compact: ${range}: FROM comes after TO`);
  return { start, end };
}

function mount(args: string[]): void {
  runSync('mount', args);
}

/**
 * What killed compactions and chroot sessions left in the work areas' directory (their tmpfs and
 * mounts: SIGKILL cannot be cleaned up after), removed first and reported (persist/workarea.ts).
 */
function removeStaleWork(o: Pick<CompactOptions, 'workBase' | 'reporter'>): void {
  for (const s of removeStaleWorkAreas(o.workBase ?? os.tmpdir())) o.reporter.warn(staleWarning(s));
}

/** A private tmpfs for the trees (persist/workarea.ts). */
function compactArea(o: Pick<CompactOptions, 'workBase'>) {
  return workArea(o.workBase ?? os.tmpdir(), 'compact');
}

function refuseSkipped(reports: ApplyReport[]): void {
  const bad = reports.filter((r) => !r.applied);
  if (bad.length) {
    throw new MkmaError(
      `cannot compact: ${bad.map((r) => `${path.basename(r.file)} (${r.reason})`).join(', ')} cannot be applied; ` +
        `the boot skips it. Remove it or leave it out of the range.`,
    );
  }
}

/** The zstd level the base was built with (what a new layer is written at), else the default. */
export function baseLevel(imagesDir: string): number {
  try {
    return readManifest(path.join(imagesDir, FILES.base)).zstdLevel ?? ZSTD_LEVEL.default;
  } catch {
    return ZSTD_LEVEL.default;
  }
}

/**
 * The level a compacted layer is written at: the highest its layers record (each records the
 * level it was written with, `zstd_level`: the base's when `mkma persist` wrote it), so that it
 * is compressed as they were; for layers of an older mkma that record none, the base's.
 */
export function rangeLevel(imagesDir: string, range: string[]): number {
  const levels = range.map((l) => {
    try {
      return readManifest(path.join(imagesDir, l)).zstdLevel;
    } catch {
      return undefined; // the apply says what is wrong with it
    }
  });
  const recorded = levels.filter((n): n is number => n !== undefined);
  return recorded.length ? Math.max(...recorded) : baseLevel(imagesDir);
}

/**
 * Compaction folds what the boot applies, and its result is active: a disabled, failed or
 * on-trial layer among them would be lost or made active silently (a compacted name
 * supersedes every layer in its range, whatever its state). So each must be decided first.
 */
function refuseUndecided(layers: string[]): void {
  const undecided = layers.filter((n) => parseLayerName(n)?.status !== 'active');
  if (undecided.length) {
    throw new UsageError(
      `compact: ${undecided.join(', ')} ${undecided.length > 1 ? 'are' : 'is'} not active: ` +
        `enable, bless or remove ${undecided.length > 1 ? 'them' : 'it'} first (mkma layers enable|bless|remove NAME), ` +
        `or compact a range without ${undecided.length > 1 ? 'them' : 'it'}`,
    );
  }
}

/**
 * Compacts the range with the lock held. The new layer is written under its compacted name
 * (the commit point), then the old layers are removed.
 */
async function compactLocked(o: CompactOptions, cleaned: string[]): Promise<CompactResult> {
  const { imagesDir, reporter } = o;
  const layers = listImages(imagesDir).layers;
  const { start, end } = selectRange(layers, o.range);
  const range = layers.slice(start, end);
  refuseUndecided(layers.slice(0, end));
  if (range.length < 2) throw new UsageError(`compact: ${range.length} layer(s) in the range: nothing to compact (it takes two or more)`);
  const bytesBefore = range.reduce((n, l) => n + fs.statSync(path.join(imagesDir, l)).size, 0);
  const work = compactArea(o);
  try {
    const below = path.join(work.dir, 'below');
    const upper = path.join(work.dir, 'upper');
    const wk = path.join(work.dir, 'work');
    const merged = path.join(work.dir, 'merged');
    let stage = reporter.stage('below', `base${start ? ` + ${start} layer(s)` : ''}: what lies below the range`);
    // only the base's paths the range reaches (and with mkma-unpack only): applying the range
    // reads and changes nothing else of it, so the upperdir comes out the same (FORMAT.md)
    const touched = o.wholeBase ? undefined : range;
    const under = await unpackImages(imagesDir, below, undefined, o.unpacker, undefined, layers.slice(0, start), touched);
    stage.done(`${under.base.entries} base entries`);
    for (const d of [upper, wk, merged]) fs.mkdirSync(d);
    mount(['-t', 'overlay', 'overlay', '-o', `lowerdir=${below},upperdir=${upper},workdir=${wk},redirect_dir=off,metacopy=off`, merged]);
    stage = reporter.stage('apply', `${range.length} layer(s) onto an overlay of it`);
    // the staging directories inside the merged view: the merge renames within one filesystem
    const stageDir = path.join(merged, '.mkma-compact-stage');
    let reports: ApplyReport[];
    if (o.unpacker) {
      reports = applyLayersNative(o.unpacker, merged, stageDir, imagesDir, range, (r) =>
        stage.progress(`${path.basename(r.file)}: ${r.entries} entries`),
      );
    } else {
      reports = [];
      for (const l of range) reports.push(await applyLayer(merged, path.join(imagesDir, l), stageDir));
    }
    refuseSkipped(reports);
    runSync('umount', [merged]);
    stage.done();
    stage = reporter.stage('scan', 'what the range changes');
    const scan = await scanUpper(upper, below);
    if (scan.skipped.length) throw new MkmaError(`cannot compact: ${scan.skipped.map((s) => `/${s.path}: ${s.reason}`).join('; ')}`);
    const plan = planLayer(scan, () => true);
    stage.done(`${plan.changes} change(s)`);
    const name = compactedName(range[0], range[range.length - 1]);
    if (fs.existsSync(path.join(imagesDir, name))) throw new MkmaError(`${name} exists already in ${imagesDir}`);
    const level = o.level ?? rangeLevel(imagesDir, range);
    stage = reporter.stage('write', `${name} (zstd level ${level})`);
    // a range that changes nothing still gets its (empty) layer: its name is the commit point
    const r = await writeLayer({
      upper,
      scan,
      include: () => true,
      plan: { ...plan, changes: Math.max(plan.changes, 1) },
      statsFromScan: true,
      imagesDir,
      level,
      message: o.message ?? `compacted ${range.length} layers: ${range[0]} .. ${range[range.length - 1]}`,
      fileName: name,
      lockHeld: true,
      onProgress: (p) => stage.count({ entries: p.entries, bytes: p.bytesIn }, { entries: plan.write.length }),
      onWarning: (m) => reporter.warn(m),
    });
    stage.done(`${r.entries} entries, ${formatBytes(r.bytesOut)}`);
    // committed: the old layers are superseded; now they go
    for (const l of range) fs.rmSync(path.join(imagesDir, l));
    fsyncDir(imagesDir);
    return { layer: name, replaced: range, bytesBefore, bytesAfter: r.bytesOut, entries: r.entries, level, cleaned };
  } finally {
    work.done();
  }
}

export async function compactLayers(o: CompactOptions): Promise<CompactResult> {
  const release = acquireLock(o.imagesDir, 'mkma layers compact');
  try {
    const cleaned = finishInterrupted(o.imagesDir);
    removeStaleWork(o);
    return await compactLocked(o, cleaned);
  } finally {
    release();
  }
}

export interface IntoBaseResult {
  /** the layers folded into the base (before a compaction into one, if there were several) */
  folded: string[];
  baseBytesBefore: number;
  baseBytesAfter: number;
  cleaned: string[];
}

/**
 * base_format = erofs / squashfs: the init boots base.erofs / base.squashfs, which only the
 * build makes (builder/base-image.ts). A new base.cpio.zst beside it, with the layers removed,
 * would boot the old base without them: refused before anything is touched.
 */
function refuseBaseImage(imagesDir: string): void {
  const image = [FILES.baseErofs, FILES.baseSquashfs].find((n) => fs.existsSync(path.join(imagesDir, n)));
  if (image)
    throw new UsageError(
      `compact --into-base: these images boot from ${image} (base_format ${image.split('.')[1]}), which --into-base cannot rewrite: ` +
        `the folded layers would be lost at boot. Compact without --into-base (one layer beside ${image}), or build a new base with mkma build`,
    );
}

/** --into-base: every active layer into a new base.cpio.zst (see the top of this file). */
export async function foldIntoBase(o: Omit<CompactOptions, 'range' | 'message'>): Promise<IntoBaseResult> {
  const { imagesDir, reporter } = o;
  refuseBaseImage(imagesDir);
  const release = acquireLock(imagesDir, 'mkma layers compact');
  try {
    const cleaned = finishInterrupted(imagesDir);
    removeStaleWork(o);
    const basePath = path.join(imagesDir, FILES.base);
    const baseBytesBefore = fs.statSync(basePath).size;
    let layers = listImages(imagesDir).layers;
    const folded = [...layers];
    refuseUndecided(layers);
    if (!layers.length) return { folded, baseBytesBefore, baseBytesAfter: baseBytesBefore, cleaned };
    if (layers.length > 1) {
      await compactLocked({ ...o, range: undefined }, cleaned);
      layers = listImages(imagesDir).layers;
    }
    const [layer] = layers;
    const base = readManifest(basePath);
    const work = compactArea(o);
    try {
      const tree = path.join(work.dir, 'tree');
      let stage = reporter.stage('unpack', `base + ${layer}`);
      const u = await unpackImages(imagesDir, tree, undefined, o.unpacker, undefined, [layer]);
      refuseSkipped(u.layers);
      stage.done();
      stage = reporter.stage('write', `new ${FILES.base} (the old one stays until it is complete)`);
      // ArchiveWriter writes .base.cpio.zst.tmp-…, fsyncs it and renames it over the old base
      const r = await packTree(tree, basePath, {
        kind: 'base',
        level: o.level ?? base.zstdLevel ?? ZSTD_LEVEL.default,
        mode: 0o600,
        message: base.message,
        onProgress: (p) => stage.count({ entries: p.entries, bytes: p.bytesIn }),
      });
      stage.done(`${r.manifest.entries} entries, ${formatBytes(r.fileBytes)}`);
      fs.rmSync(path.join(imagesDir, layer));
      fsyncDir(imagesDir);
      return { folded, baseBytesBefore, baseBytesAfter: r.fileBytes, cleaned };
    } finally {
      work.done();
    }
  } finally {
    release();
  }
}
