// Applying layers with overlayfs semantics: the TypeScript side of docs/FORMAT.md's "Applying a
// layer" (mkma-unpack -l and the init's busybox fallback are the two others; the conformance
// corpus, test/conformance/, holds the three to the same trees).
//
// Safety: before anything is removed, renamed, chowned or chmodded in the tree, every parent
// of its path is checked with lstat (a real directory, never a symlink); directory metadata
// goes through a descriptor opened O_NOFOLLOW; xattr paths go through the same check.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UNPACK_EXIT, UNPACK_PROTOCOL } from '../lib/contract.js';
import { runSync } from '../lib/run.js';
import { escapeXattrPath, isSafeRel, type Manifest, type XattrRecord } from './manifest.js';
import { bootLayers, listImages } from './images.js';
import { BASE_NAME } from './names.js';
import { extractImage, readManifest, setDirMeta, type ExtractProgress } from './reader.js';

const toBuf = (s: string) => Buffer.from(s, 'latin1');

function lstatOrNull(p: Buffer): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

/**
 * The path `rel` inside `root`, or null when a parent component is not a real directory (a
 * symlink, a file, missing): in the layer's view such a path does not exist below, and
 * following the symlink would reach something else.
 */
export function realPathInTree(root: string, rel: string): Buffer | null {
  if (rel === '.') return toBuf(root);
  const parts = rel.split('/');
  let cur = toBuf(root);
  for (let i = 0; i < parts.length - 1; i++) {
    cur = Buffer.concat([cur, toBuf('/' + parts[i])]);
    const st = lstatOrNull(cur);
    if (!st || !st.isDirectory()) return null;
  }
  return Buffer.concat([cur, toBuf('/' + parts[parts.length - 1])]);
}

/**
 * Rule 3: merge the staged layer into the tree, top-down, renaming entries into place. `stage`
 * and `tree` are real directories (checked by the caller, and here for every level below).
 */
export function mergeStaged(stage: Buffer, tree: Buffer): void {
  const names = fs.readdirSync(stage, { encoding: 'buffer' }) as Buffer[];
  names.sort(Buffer.compare);
  for (const name of names) {
    const s = Buffer.concat([stage, toBuf('/'), name]);
    const t = Buffer.concat([tree, toBuf('/'), name]);
    // the staged directory as extracted: before its children move out (that changes its mtime)
    const sst = fs.lstatSync(s);
    const tst = lstatOrNull(t);
    if (sst.isDirectory() && tst?.isDirectory()) {
      mergeStaged(s, t);
      setDirMeta(t, sst);
      fs.rmdirSync(s);
      continue;
    }
    // rm never follows a symlink (Node's rm: lstat, unlink)
    if (tst) fs.rmSync(t, { recursive: true, force: true });
    fs.renameSync(s, t);
  }
}

/**
 * Rule 4: the %xattrs records whose path is in the tree (parents real directories, the path
 * itself there; a final symlink is not followed: setfattr -h). Returns the first warning,
 * if any: a path not in the tree, or what setfattr refused.
 */
export function restoreXattrs(tree: string, records: XattrRecord[]): string | null {
  let warning: string | null = null;
  const ok = records.filter((r) => {
    const p = (r.path === '.' || isSafeRel(r.path)) && realPathInTree(tree, r.path);
    if (p && lstatOrNull(p)) return true;
    warning ??= `extended attributes not restored: ${r.path} is not in the tree`;
    return false;
  });
  if (!ok.some((r) => r.attrs.length)) return warning;
  const dump = ok.map((r) => `# file: ${escapeXattrPath(r.path)}\n${r.attrs.map(([n, v]) => `${n}=${v}`).join('\n')}\n`).join('\n');
  const r = runSync('setfattr', ['-h', '--restore=-'], { cwd: tree, input: Buffer.from(dump, 'latin1'), allowFailure: true });
  if (!r.ok) warning ??= `some extended attributes could not be restored: ${r.stderr.trim().split('\n').pop()}`;
  return warning;
}

export interface ApplyReport {
  file: string;
  applied: boolean;
  reason?: string;
  entries: number;
  deleted: number;
  /** what could not be restored (xattrs): the layer is still applied */
  warnings: string[];
}

/** Rule 2: every opaque and delete path, in the manifest's order, never through a symlink. */
function applyRemovals(tree: string, m: Manifest): number {
  let removed = 0;
  const removals = m.removals ?? [...m.opaque, ...m.deleted].map((p) => ({ path: p }));
  for (const { path: rel } of removals) {
    const p = realPathInTree(tree, rel);
    if (p && lstatOrNull(p)) {
      fs.rmSync(p, { recursive: true, force: true });
      removed++;
    }
  }
  return removed;
}

/** Applies one layer to `tree`; a layer that cannot be read is skipped whole (tree unchanged). */
export async function applyLayer(tree: string, file: string, stage: string): Promise<ApplyReport> {
  let manifest: Manifest;
  fs.rmSync(stage, { recursive: true, force: true });
  fs.mkdirSync(stage, { mode: 0o700 });
  try {
    manifest = readManifest(file);
    if (manifest.kind !== 'layer') throw new Error(`not a layer (kind ${manifest.kind})`);
    await extractImage(file, stage);
  } catch (e) {
    fs.rmSync(stage, { recursive: true, force: true });
    const msg = (e as Error).message;
    return {
      file,
      applied: false,
      reason: msg.startsWith(`${file}: `) ? msg.slice(file.length + 2) : msg,
      entries: 0,
      deleted: 0,
      warnings: [],
    };
  }
  const deleted = applyRemovals(tree, manifest);
  mergeStaged(toBuf(stage), toBuf(tree));
  const warning = restoreXattrs(tree, manifest.xattrs);
  fs.rmSync(stage, { recursive: true, force: true });
  return { file, applied: true, entries: manifest.entries, deleted, warnings: warning ? [warning] : [] };
}

export interface UnpackReport {
  base: { entries: number; bytes: number; warnings: string[] };
  layers: ApplyReport[];
  /** files named like layers that are not applied: not a layer name, or not a regular file */
  ignored: string[];
  /** why each ignored file was ignored, for the user */
  warnings: string[];
}

/**
 * `mkma unpack`: on the host, exactly what the init does at boot. With `unpacker` (the
 * mkma-unpack binary, builder/unpacker.ts) the work is done by it, as in the initramfs: the
 * base with -X, then every layer in one `-l` process; otherwise in TypeScript (same rules,
 * same corpus: test/conformance/).
 */
export async function unpackImages(
  imagesDir: string,
  into: string,
  onLayer?: (r: ApplyReport) => void,
  unpacker?: string | null,
  onBaseProgress?: ExtractProgress,
  /** these layers (file names, in boot order) instead of every active one */
  only?: string[],
  /**
   * with `unpacker`: the base only as far as these layers (file names) reach — the paths of
   * their entries, removals and xattrs, the directories above them, and every hardlinked file
   * (mkma-unpack -t). Applying those layers onto it changes the same paths in the same way as
   * on the whole base: what `mkma layers compact` needs below its range, at a fraction of the cost.
   */
  touchedBy?: string[],
): Promise<UnpackReport> {
  const basePath = path.join(imagesDir, BASE_NAME);
  const manifest = readManifest(basePath);
  if (manifest.kind !== 'base') throw new Error(`${basePath} is not a base image (kind ${manifest.kind})`);
  fs.mkdirSync(into, { recursive: true });
  // a FIFO or a directory named like a layer: never opened (a FIFO would block)
  const listing = listImages(imagesDir);
  // disabled and failed layers are not applied, as at boot (their names say so)
  const layers = only ?? bootLayers(listing);
  const ignored = listing.ignored.map((i) => i.name);
  const warnings = listing.ignored.map((i) => `ignoring ${i.name}: ${i.reason}`);
  const stage = path.join(path.dirname(path.resolve(into)), `.${path.basename(into)}.mkma-stage`);
  if (unpacker) {
    const baseWarnings = unpackBaseNative(
      unpacker,
      basePath,
      into,
      touchedBy?.map((n) => path.join(imagesDir, n)),
    );
    const reports = layers.length ? applyLayersNative(unpacker, into, stage, imagesDir, layers, onLayer) : [];
    return {
      base: { entries: manifest.entries, bytes: manifest.unpackedBytes, warnings: baseWarnings },
      layers: reports,
      ignored,
      warnings,
    };
  }
  const base = await extractImage(basePath, into, onBaseProgress);
  const w = restoreXattrs(into, manifest.xattrs);
  const reports: ApplyReport[] = [];
  for (const name of layers) {
    const r = await applyLayer(into, path.join(imagesDir, name), stage);
    reports.push(r);
    onLayer?.(r);
  }
  return { base: { ...base, warnings: w ? [w] : [] }, layers: reports, ignored, warnings };
}

function runUnpacker(bin: string, args: string[]): { status: number | null; signal: string | null; stdout: string; stderr: string } {
  const r = runSync(bin, args, { allowFailure: true });
  return { status: r.status, signal: r.signal, stdout: r.stdoutBytes.toString('latin1'), stderr: r.stderr.trim() };
}

function unpackBaseNative(bin: string, basePath: string, into: string, touchedBy: string[] = []): string[] {
  const b = runUnpacker(bin, ['-X', ...touchedBy.flatMap((f) => ['-t', f]), '--', basePath, into]);
  if (b.status !== UNPACK_EXIT.ok) throw new Error(b.stderr || `mkma-unpack failed (${b.signal ?? `exit ${b.status}`})`);
  return b.stdout
    .split('\n')
    .filter((l) => l.startsWith(`${UNPACK_PROTOCOL.warn} `))
    .map((l) => l.split(' ').slice(2).join(' '));
}

/**
 * All layers through one `mkma-unpack -l` (docs/FORMAT.md, "mkma-unpack -l"): one result line
 * per layer. If it ends without one for some layers (crashed, killed), the first of them was
 * partly applied when its "merge" line came, else not at all; the rest are applied by a new
 * run, as the init does (init/templates/layer-native.sh).
 */
export function applyLayersNative(
  bin: string,
  into: string,
  stage: string,
  imagesDir: string,
  layers: string[],
  onLayer?: (r: ApplyReport) => void,
): ApplyReport[] {
  const reports: ApplyReport[] = [];
  let todo = layers;
  while (todo.length) {
    const r = runUnpacker(bin, ['-l', '--', into, stage, ...todo.map((n) => path.join(imagesDir, n))]);
    if (r.status === UNPACK_EXIT.usage) throw new Error(r.stderr || 'mkma-unpack -l failed');
    let warns: string[] = [];
    let merging: string | null = null;
    for (const line of r.stdout.split('\n').filter(Boolean)) {
      const [what, name, ...rest] = line.split(' ');
      const text = rest.join(' ');
      if (what === UNPACK_PROTOCOL.warn) warns.push(text);
      else if (what === UNPACK_PROTOCOL.merge) merging = name;
      else if (what === UNPACK_PROTOCOL.ok || what === UNPACK_PROTOCOL.skip || what === UNPACK_PROTOCOL.partial) {
        const file = path.join(imagesDir, name);
        const report: ApplyReport =
          what === UNPACK_PROTOCOL.ok
            ? { file, applied: true, entries: Number(rest[0]), deleted: Number(rest[1]), warnings: warns }
            : {
                file,
                applied: false,
                reason: (what === UNPACK_PROTOCOL.partial ? 'PARTLY APPLIED: ' : '') + text,
                entries: 0,
                deleted: 0,
                warnings: warns,
              };
        reports.push(report);
        onLayer?.(report);
        warns = [];
        merging = null;
      }
    }
    const done = reports.length - (layers.length - todo.length);
    if (done >= todo.length) break;
    // no result line for todo[done]: mkma-unpack ended early
    const how = r.signal ? `was killed by ${r.signal}` : `ended with exit status ${r.status}`;
    const name = todo[done];
    const report: ApplyReport = {
      file: path.join(imagesDir, name),
      applied: false,
      entries: 0,
      deleted: 0,
      warnings: warns,
      reason: merging === name ? `PARTLY APPLIED: mkma-unpack ${how} while merging it` : `mkma-unpack ${how} before applying it`,
    };
    reports.push(report);
    onLayer?.(report);
    for (const d of fs.readdirSync(path.dirname(stage))) {
      if (d.startsWith(`${path.basename(stage)}.`)) fs.rmSync(path.join(path.dirname(stage), d), { recursive: true, force: true });
    }
    todo = todo.slice(done + 1);
  }
  return reports;
}
