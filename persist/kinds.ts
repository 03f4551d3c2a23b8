// The letters and words of each kind of change, and the legend of the marks: shared by the
// rows of the UI (persist/rows.ts) and `mkma persist --help`/`--dry-run`, which must not load
// the terminal text modules (string-width, cli-truncate: ~0.13 s of start-up) to print them.
import type { ChangeKind } from './model.js';

// One letter per kind, none differing from another only by case: P (properties), not m/M.
export const KIND_MARK: Record<ChangeKind, string> = {
  added: 'A',
  modified: 'M',
  metadata: 'P',
  deleted: 'D',
  replaced: 'R',
  container: ' ',
};
export const KIND_WORD: Record<ChangeKind, string> = {
  added: 'added',
  modified: 'modified',
  metadata: 'properties only',
  deleted: 'deleted',
  replaced: 'replaced dir',
  container: 'folder',
};
/** The legend: each kind's letter and what it means (the help overlay, `mkma persist --help`). */
export const KIND_LEGEND: { mark: string; means: string }[] = [
  { mark: KIND_MARK.added, means: 'added' },
  { mark: KIND_MARK.modified, means: 'modified (contents)' },
  { mark: KIND_MARK.metadata, means: 'properties only (mode, owner, times: chmod/chown/touch)' },
  { mark: KIND_MARK.deleted, means: 'deleted' },
  { mark: KIND_MARK.replaced, means: 'replaced directory (its old contents are dropped)' },
];

/** The legend of the marks in front of a row. */
export const MARK_LEGEND: { mark: string; means: string }[] = [
  { mark: '[x]', means: 'saved' },
  { mark: '[ ]', means: 'not saved' },
  { mark: '[~]', means: 'partly: some of what is below is saved' },
];
