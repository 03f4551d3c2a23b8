// Packing a whole directory tree into an image (base images, test fixtures, benchmarks).
import { ArchiveWriter, type WriterOptions, type WriterResult } from './writer.js';
import { collectHardlinks, packEntries, walkTree, type ExcludeFn, type PackStats } from './tree.js';
import { XattrReader } from './xattrs.js';

export interface PackTreeOptions extends WriterOptions {
  exclude?: ExcludeFn;
  /** which xattr names go into the manifest (default: all but overlayfs' own) */
  keepXattr?: (name: string) => boolean;
}

export const notOverlayXattr = (name: string) => !name.startsWith('trusted.overlay.');

export async function packTree(
  root: string,
  out: string,
  opts: PackTreeOptions,
): Promise<WriterResult & { stats: PackStats; xattrWarnings: string }> {
  // Pass 1 (stat only) finds hardlink groups, so pass 2 can stream and still store each group
  // once, together: memory grows with the number of hardlinked files, not with the tree.
  const hardlinks = collectHardlinks(walkTree(root, opts.exclude));
  const writer = new ArchiveWriter(out, opts);
  const xattrs = opts.manifest === false ? null : new XattrReader(root, opts.keepXattr ?? notOverlayXattr);
  try {
    const stats = await packEntries(writer, walkTree(root, opts.exclude), hardlinks, (e) => xattrs?.add(e.rel));
    const { records, warnings } = xattrs ? await xattrs.finish() : { records: [], warnings: '' };
    for (const r of records) writer.addXattrs(r);
    const result = await writer.finish();
    return { ...result, stats, xattrWarnings: warnings };
  } catch (e) {
    xattrs?.kill();
    writer.abort();
    throw e;
  }
}
