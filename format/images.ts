// What an images directory holds, as the boot sees it: base.cpio.zst and the layers in the
// order the init applies them (format/names.ts: natural order of the names; the init's
// sort_layers is its shell sibling), and the files named like layers that are never applied.
// One listing for `mkma unpack` (format/apply.ts), `mkma verify` and `mkma layers`.
import * as fs from 'node:fs';
import { supersededLayers } from './compacted.js';
import { appliedAtBoot, LAYER_PREFIX, layerId, parseLayerName, sortLayerNames } from './names.js';
import { notRegularFiles } from './reader.js';

export interface IgnoredImage {
  name: string;
  reason: 'not a regular file' | 'not a layer name' | 'another file holds the same layer' | `superseded by ${string}`;
}

export interface ImagesListing {
  /** layer file names in boot order (regular files only), whatever their state */
  layers: string[];
  /** entries that start like a layer but are never applied, with why */
  ignored: IgnoredImage[];
}

/** The layers of `imagesDir` in boot order, and what the boot ignores (a FIFO is never opened). */
export function listImages(imagesDir: string): ImagesListing {
  const all = fs.readdirSync(imagesDir);
  const named = sortLayerNames(all);
  const odd = new Set(notRegularFiles(imagesDir, named));
  const regular = named.filter((n) => !odd.has(n));
  // left by a compaction interrupted after its commit point (format/compacted.ts)
  const superseded = supersededLayers(regular);
  // the same id under two names (copied by hand: a rename never makes two) counts once, as
  // the init's plan_layers does
  const ids = new Set<string>();
  const twice = new Set<string>();
  for (const n of regular) {
    if (superseded.has(n)) continue;
    const id = layerId(n)!;
    if (ids.has(id)) twice.add(n);
    ids.add(id);
  }
  const layers = regular.filter((n) => !superseded.has(n) && !twice.has(n));
  const ignored = all
    .filter((n) => n.startsWith(LAYER_PREFIX) && !layers.includes(n))
    .map((name): IgnoredImage => ({
      name,
      reason: odd.has(name)
        ? 'not a regular file'
        : superseded.has(name)
          ? `superseded by ${superseded.get(name)!}`
          : twice.has(name)
            ? 'another file holds the same layer'
            : 'not a layer name',
    }));
  return { layers, ignored };
}

/** The layers a boot applies, in order (format/names.ts appliedAtBoot: before the init counts a try). */
export function bootLayers(listing: ImagesListing): string[] {
  return listing.layers.filter((n) => appliedAtBoot(parseLayerName(n)!));
}
