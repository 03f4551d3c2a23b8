// A persist change entry for tests of the change tree, the rows and the TUI: a root-owned file
// (or directory) with the given size and nothing else set.
import type { ChangeEntry, ChangeKind, EntryType } from '../../persist/model.js';

export function changeEntry(
  path: string,
  kind: ChangeKind,
  type: EntryType = 'file',
  size = 0,
  extra: Partial<ChangeEntry> = {},
): ChangeEntry {
  return {
    path,
    kind,
    type,
    size,
    totalSize: size,
    mode: type === 'dir' ? 0o40755 : 0o100644,
    uid: 0,
    gid: 0,
    mtime: 0,
    xattrs: [],
    hardlinks: [],
    ...extra,
  };
}
