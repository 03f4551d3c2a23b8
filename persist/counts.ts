// What a layer holds, counted once and said in the same words everywhere: the UI's confirm and
// result screens and `mkma persist --yes` (they disagreed: the confirmation counted whiteouts
// as entries and file bytes, the result counted archive entries and the cpio stream's bytes).
import { formatBytes } from '../lib/progress.js';
import type { LayerPlan } from './write.js';

export interface LayerCounts {
  /** the changes saved (directories added only as parents not counted) */
  changes: number;
  /** archive entries: what is saved and the parent directories it needs (whiteouts not included) */
  entries: number;
  /** whiteouts: paths the layer deletes */
  deleted: number;
  /** opaque directories: their old contents are dropped */
  replaced: number;
  /** bytes of file contents and link targets, before compression (no archive headers) */
  bytes: number;
}

export function layerCounts(plan: LayerPlan): LayerCounts {
  return {
    changes: plan.changes,
    entries: plan.write.length,
    deleted: plan.deleted.length,
    replaced: plan.opaque.length,
    bytes: plan.bytes,
  };
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** The counts as labelled lines, for the confirm and result screens (short: 50 columns). */
export function countLines(c: LayerCounts): string[] {
  return [
    `  changes    ${c.changes} saved`,
    `  entries    ${c.entries} incl. parent directories`,
    ...(c.deleted || c.replaced
      ? [`  deletes    ${plural(c.deleted, 'path')}, replaces ${plural(c.replaced, 'directory', 'directories')}`]
      : []),
    `  size       ${formatBytes(c.bytes)} before compression`,
  ];
}

/** The counts in one line, the same words (mkma persist --yes); `bytesOut`: the layer file. */
export function countSentence(c: LayerCounts, bytesOut: number): string {
  const extra = [
    ...(c.deleted ? [plural(c.deleted, 'deletion')] : []),
    ...(c.replaced ? [plural(c.replaced, 'replaced directory', 'replaced directories')] : []),
  ];
  return (
    `${plural(c.changes, 'change')}, ${c.entries} entries incl. parent directories${extra.map((e) => `, ${e}`).join('')} ` +
    `(${formatBytes(c.bytes)} before compression, ${formatBytes(bytesOut)} compressed)`
  );
}
