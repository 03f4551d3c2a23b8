// Stage 3: base.cpio.zst, the packed root filesystem.
import type * as fs from 'node:fs';
import type { ExcludeDecision } from '../format/tree.js';

/**
 * What must not be in a base image. 'empty' keeps the directory (a mount point, or a place
 * programs expect) without what was in it at build time.
 */
export const BASE_EXCLUDES: Record<string, ExcludeDecision> = {
  proc: 'empty',
  sys: 'empty',
  dev: 'empty',
  run: 'empty',
  tmp: 'empty',
  'var/tmp': 'empty',
  'var/lib/apt/lists': 'empty',
  // the distribution's initrd tooling state is meaningless in an mkma image
  'var/lib/initramfs-tools': 'empty',
};

export function baseExclude(rel: string, _st: fs.Stats): ExcludeDecision {
  return BASE_EXCLUDES[rel] ?? 'keep';
}
