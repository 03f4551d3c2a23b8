// Applying layers with overlayfs semantics (the TypeScript side of the rules written down in
// manifest.ts; init/templates/layer.sh is the shell side, both tested on test/fixtures/layers).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { escapeXattrPath, type Manifest, type XattrRecord } from './manifest.js';
import { BASE_NAME, sortLayerNames } from './names.js';
import { extractImage, readManifest } from './reader.js';

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
 * symlink, a file, missing): in the layer's view such a path does not exist below, so there
 * is nothing to delete, and following the symlink would delete something else.
 */
export function realPathInTree(root: string, rel: string): Buffer | null {
  const parts = rel.split('/');
  let cur = toBuf(root);
  for (let i = 0; i < parts.length - 1; i++) {
    cur = Buffer.concat([cur, toBuf('/' + parts[i])]);
    const st = lstatOrNull(cur);
    if (!st || !st.isDirectory()) return null;
  }
  return Buffer.concat([cur, toBuf('/' + parts[parts.length - 1])]);
}

/** Step 3: merge the staged layer into the tree, top-down, renaming entries into place. */
export function mergeStaged(stage: Buffer, tree: Buffer): void {
  const names = fs.readdirSync(stage, { encoding: 'buffer' }) as Buffer[];
  names.sort(Buffer.compare);
  for (const name of names) {
    const s = Buffer.concat([stage, toBuf('/'), name]);
    const t = Buffer.concat([tree, toBuf('/'), name]);
    const sst = fs.lstatSync(s);
    const tst = lstatOrNull(t);
    if (sst.isDirectory() && tst?.isDirectory()) {
      mergeStaged(s, t);
      fs.chownSync(t, sst.uid, sst.gid);
      fs.chmodSync(t, sst.mode & 0o7777);
      fs.utimesSync(t, sst.atime, sst.mtime);
      continue;
    }
    if (tst) fs.rmSync(t, { recursive: true, force: true });
    fs.renameSync(s, t);
  }
}

export function restoreXattrs(tree: string, records: XattrRecord[]): void {
  if (!records.length) return;
  const dump = records
    .map((r) => `# file: ${escapeXattrPath(r.path)}\n${r.attrs.map(([n, v]) => `${n}=${v}`).join('\n')}\n`)
    .join('\n');
  const r = spawnSync('setfattr', ['-h', '--restore=-'], { cwd: tree, input: Buffer.from(dump, 'latin1') });
  if (r.error) throw new Error(`cannot run setfattr (apt-get install attr): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`setfattr --restore failed: ${r.stderr.toString().trim()}`);
}

export class LayerSkipped extends Error {}

export interface ApplyReport {
  file: string;
  applied: boolean;
  reason?: string;
  entries: number;
  deleted: number;
}

/** Applies one layer to `tree`; a layer that cannot be read is skipped whole (tree unchanged). */
export async function applyLayer(tree: string, file: string, stage: string): Promise<ApplyReport> {
  let manifest: Manifest;
  fs.rmSync(stage, { recursive: true, force: true });
  fs.mkdirSync(stage, { mode: 0o700 });
  try {
    manifest = readManifest(file);
    if (manifest.kind !== 'layer') throw new LayerSkipped(`not a layer (kind ${manifest.kind})`);
    await extractImage(file, stage);
  } catch (e) {
    fs.rmSync(stage, { recursive: true, force: true });
    return { file, applied: false, reason: (e as Error).message, entries: 0, deleted: 0 };
  }
  let deleted = 0;
  for (const rel of [...manifest.opaque, ...manifest.deleted]) {
    const p = realPathInTree(tree, rel);
    if (p && lstatOrNull(p)) {
      fs.rmSync(p, { recursive: true, force: true });
      deleted++;
    }
  }
  mergeStaged(toBuf(stage), toBuf(tree));
  restoreXattrs(tree, manifest.xattrs);
  fs.rmSync(stage, { recursive: true, force: true });
  return { file, applied: true, entries: manifest.entries, deleted };
}

export interface UnpackReport {
  base: { entries: number; bytes: number };
  layers: ApplyReport[];
  ignored: string[];
}

/**
 * `mkma unpack`: on the host, exactly what the init does at boot. With `unpacker` (the
 * mkma-unpack binary, builder/unpacker.ts) the work is done by it, as in the initramfs: the
 * base with -X, then every layer in one `-l` process; otherwise in TypeScript (same rules,
 * same fixtures: test/integration/layering.test.ts).
 */
export async function unpackImages(imagesDir: string, into: string, onLayer?: (r: ApplyReport) => void, unpacker?: string | null): Promise<UnpackReport> {
  const basePath = path.join(imagesDir, BASE_NAME);
  const manifest = readManifest(basePath);
  if (manifest.kind !== 'base') throw new Error(`${basePath} is not a base image (kind ${manifest.kind})`);
  fs.mkdirSync(into, { recursive: true });
  const all = fs.readdirSync(imagesDir);
  const layers = sortLayerNames(all);
  const ignored = all.filter((n) => n.startsWith('persistence.') && !layers.includes(n));
  const stage = path.join(path.dirname(path.resolve(into)), `.${path.basename(into)}.mkma-stage`);
  if (unpacker) {
    unpackBaseNative(unpacker, basePath, into);
    const reports = layers.length ? applyLayersNative(unpacker, into, stage, imagesDir, layers, onLayer) : [];
    return { base: { entries: manifest.entries, bytes: manifest.unpackedBytes }, layers: reports, ignored };
  }
  const base = await extractImage(basePath, into);
  restoreXattrs(into, manifest.xattrs);
  const reports: ApplyReport[] = [];
  for (const name of layers) {
    const r = await applyLayer(into, path.join(imagesDir, name), stage);
    reports.push(r);
    onLayer?.(r);
  }
  return { base, layers: reports, ignored };
}

function runUnpacker(bin: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(bin, args, { maxBuffer: 256 << 20 });
  if (r.error) throw new Error(`cannot run ${bin}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout.toString('latin1'), stderr: r.stderr.toString('latin1').trim() };
}

/** warn lines of mkma-unpack (xattrs it could not restore) become errors, like restoreXattrs. */
function throwOnWarnings(out: string): void {
  const warn = out.split('\n').find((l) => l.startsWith('warn '));
  if (warn) throw new Error(warn.slice(5));
}

function unpackBaseNative(bin: string, basePath: string, into: string): void {
  const b = runUnpacker(bin, ['-X', '--', basePath, into]);
  if (b.status !== 0) throw new Error(b.stderr || `mkma-unpack failed (exit ${b.status})`);
  throwOnWarnings(b.stdout);
}

function applyLayersNative(bin: string, into: string, stage: string, imagesDir: string, layers: string[], onLayer?: (r: ApplyReport) => void): ApplyReport[] {
  const r = runUnpacker(bin, ['-l', '--', into, stage, ...layers.map((n) => path.join(imagesDir, n))]);
  if (r.status === 2 || r.status === null) throw new Error(r.stderr || `mkma-unpack -l failed (${r.status ?? 'killed'})`);
  const reports: ApplyReport[] = [];
  // "ok NAME ENTRIES REMOVED" | "skip NAME REASON" | "partial NAME REASON" | "warn NAME TEXT"
  for (const line of r.stdout.split('\n').filter(Boolean)) {
    const [what, name, ...rest] = line.split(' ');
    const file = path.join(imagesDir, name);
    if (what === 'warn') throw new Error(`${name}: ${rest.join(' ')}`);
    const report: ApplyReport = what === 'ok'
      ? { file, applied: true, entries: Number(rest[0]), deleted: Number(rest[1]) }
      : { file, applied: false, reason: (what === 'partial' ? 'PARTLY APPLIED: ' : '') + rest.join(' '), entries: 0, deleted: 0 };
    reports.push(report);
    onLayer?.(report);
  }
  if (reports.length !== layers.length) throw new Error(`mkma-unpack -l reported ${reports.length} of ${layers.length} layers: ${r.stderr}`);
  return reports;
}
