// Compacted layers, and the commit point that makes `mkma layers compact` atomic (docs/FORMAT.md,
// "Compacted layers"). A compacted layer is named
//     persistence.<LAST>+from+<FIRST>.cpio.zst
// where FIRST and LAST are the ids of the first and last layer it replaces. Its name declares
// what it supersedes: every other layer whose own range (its id, or a compacted layer's
// FIRST..LAST) lies within FIRST..LAST by natural order. Whoever lists layers (listImages here,
// the init's sort_layers) ignores a superseded layer, so the rename that gives the new layer
// its name is the one moment the images change: before it the old layers apply, after it the
// new one does, and the old files are only removed after that (a crash in between leaves them
// superseded, and the next compaction removes them).
//
// Why "+": the name must sort right after LAST and before every later layer, and "+" is the
// smallest byte a layer id may hold (format/names.ts LAYER_ID_RE), below "-" of "LAST-2".
import { FILES } from '../lib/contract.js';
import { layerId, naturalKey, LAYER_PREFIX, LAYER_SUFFIX } from './names.js';

export const COMPACT_MARK = FILES.compactMark;

/** The natural-order range [first, last] a layer covers: its own id, or a compacted layer's ends. */
export function layerRange(fileName: string): { first: string; last: string; compacted: boolean } | null {
  const id = layerId(fileName);
  if (id === null) return null;
  const at = id.indexOf(COMPACT_MARK);
  if (at > 0 && at + COMPACT_MARK.length < id.length) {
    const last = id.slice(0, at);
    const first = id.slice(at + COMPACT_MARK.length);
    if (!first.includes(COMPACT_MARK)) return { first, last, compacted: true };
  }
  return { first: id, last: id, compacted: false };
}

/** The name of the layer that replaces `first`..`last` (file names, in boot order). */
export function compactedName(firstLayer: string, lastLayer: string): string {
  const a = layerRange(firstLayer);
  const b = layerRange(lastLayer);
  if (!a || !b) throw new Error(`not layer names: ${firstLayer}, ${lastLayer}`);
  return `${LAYER_PREFIX}${b.last}${COMPACT_MARK}${a.first}${LAYER_SUFFIX}`;
}

/**
 * For each superseded layer among `names`, the compacted layer that supersedes it (the widest
 * one, when a later compaction covered an earlier one that was not removed yet).
 */
export function supersededLayers(names: string[]): Map<string, string> {
  const ranges = names.map((n) => ({ n, r: layerRange(n) })).filter((x) => x.r !== null);
  const keyed = ranges.map(({ n, r }) => ({ n, compacted: r!.compacted, lo: naturalKey(r!.first), hi: naturalKey(r!.last) }));
  const out = new Map<string, string>();
  for (const c of keyed) {
    if (!c.compacted) continue;
    for (const l of keyed) {
      if (l.n === c.n || l.lo < c.lo || l.hi > c.hi) continue;
      const prev = out.get(l.n);
      const p = prev && keyed.find((k) => k.n === prev);
      if (!p || c.lo < p.lo || c.hi > p.hi) out.set(l.n, c.n);
    }
  }
  // two compacted layers with the same range: each covers the other; keep the one sorting last
  for (const [l, c] of out) if (out.get(c) === l) out.delete(l < c ? c : l);
  return out;
}
