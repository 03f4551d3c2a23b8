// A layer's file name changes with its state (docs/FORMAT.md "Layer names and states"): the
// boot renames a layer on trial before it applies it, so console lines name the layer by its
// id in whatever state it is in by then.
import { layerId } from '../../format/names.js';

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A regular expression source matching the file name of `fileName`'s layer in any state. */
export function layerInAnyState(fileName: string): string {
  const id = layerId(fileName);
  if (id === null) throw new Error(`${fileName} is not a layer name`);
  return `persistence\\.${escapeRe(id)}(?:@[a-z0-9,-]+)?\\.cpio\\.zst`;
}
