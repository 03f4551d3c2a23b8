// Changing a layer's state: a rename(2) of its file in the images directory (docs/FORMAT.md
// "Layer names and states"), never a rewrite. rename is atomic: a crash (SIGKILL, power loss)
// leaves the old name or the new one. The file is fsynced before (its name then points at
// data on disk), the directory after (the new name is on disk before we say it is done).
// Removing is an unlink, fsynced the same way. The callers hold persist's lock.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MkmaError, UsageError } from '../lib/errors.js';
import { listImages } from './images.js';
import { layerFileName, parseLayerName, type LayerName, type LayerState } from './names.js';

export class LayerNotFoundError extends UsageError {}

function fsyncPath(p: string, flags: number): void {
  const fd = fs.openSync(p, flags);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

const fsyncDir = (dir: string) => fsyncPath(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);

/** Every layer of the directory, in boot order, read (format/images.ts: regular files, the same id once). */
export function layersIn(imagesDir: string): LayerName[] {
  return listImages(imagesDir).layers.map((n) => parseLayerName(n)!);
}

/**
 * The layer `name` names: its id (`20261122T021500Z`), or its file name in any state
 * (`persistence.20261122T021500Z@disabled.cpio.zst`, as `mkma layers` shows it).
 */
export function findLayer(imagesDir: string, name: string): LayerName {
  const all = layersIn(imagesDir);
  const id = parseLayerName(name)?.id ?? name;
  const found = all.find((l) => l.id === id);
  if (!found) {
    const known = all.map((l) => l.id);
    throw new LayerNotFoundError(
      `no layer ${JSON.stringify(name)} in ${imagesDir}${known.length ? ` (layers: ${known.join(', ')})` : ' (it holds no layers)'}; mkma layers lists them`,
    );
  }
  return found;
}

/** Renames `layer` into state `to` (nothing when it is in it already); the new file name. */
export function setLayerState(imagesDir: string, layer: LayerName, to: LayerState): string {
  const next = layerFileName(layer.id, to);
  if (next === layer.file) return next;
  const from = path.join(imagesDir, layer.file);
  const dest = path.join(imagesDir, next);
  // never over another file (rename(2) would replace it): a name is taken only by a copy made by hand
  if (fs.lstatSync(dest, { throwIfNoEntry: false })) throw new MkmaError(`cannot rename ${layer.file} to ${next}: ${next} exists`);
  fsyncPath(from, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  fs.renameSync(from, dest);
  fsyncDir(imagesDir);
  return next;
}

/** Deletes the layer's file (unlink, then fsync of the directory). */
export function removeLayerFile(imagesDir: string, layer: LayerName): void {
  fs.unlinkSync(path.join(imagesDir, layer.file));
  fsyncDir(imagesDir);
}
