// What `mkma persist` knows about the overlay's upperdir: one shared model for the scanner
// (persist/scan.ts), the rules (persist/rules.ts), the terminal UI (persist/tui.tsx) and the
// layer writer (persist/write.ts).
import { RUNTIME } from '../lib/contract.js';

/** How an upperdir entry changes the system, as overlayfs shows it in the merged view. */
export type ChangeKind =
  /** new: nothing at this path below */
  | 'added'
  /** content (or type of a non-directory) changed: a different file replaces the lower one */
  | 'modified'
  /** copied up for a metadata change only (chmod/chown/xattr/touch): same size and content */
  | 'metadata'
  /** a whiteout: the lower path is deleted */
  | 'deleted'
  /** an opaque directory: replaces the lower directory and everything that was in it */
  | 'replaced'
  /** a directory that exists below and only holds changes (not a change itself) */
  | 'container';

export type EntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' | 'whiteout';

export interface ChangeEntry {
  /** path relative to the root, raw bytes as latin1 ("etc/hostname"); no leading slash */
  path: string;
  kind: ChangeKind;
  type: EntryType;
  /** bytes stored for this entry (file size, symlink target length; 0 for others) */
  size: number;
  /** bytes under this directory (itself included), for the tree view's totals */
  totalSize: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  /** xattrs other than overlayfs' own, as getfattr prints them (-e base64) */
  xattrs: Array<[string, string]>;
  /** paths of other upperdir entries sharing this inode (hardlinks), if any */
  hardlinks: string[];
  /** symlink target, raw bytes as latin1 */
  target?: string;
  /**
   * what the lower tree has at this path, when it has something there (set by the scan: the
   * type of what a whiteout deletes, of what a modified/replaced entry replaces)
   */
  lowerType?: EntryType;
}

export interface ScanResult {
  upper: string;
  lower: string | null;
  /** every entry of the upperdir, sorted by path, parents before children */
  entries: ChangeEntry[];
  /** entries that cannot be saved (sockets, other mounts), with the reason */
  skipped: Array<{ path: string; reason: string }>;
  stats: { entries: number; bytes: number; scanMs: number };
}

/** A persist rule: gitignore-style pattern, exclude unless negated with `!` (= include). */
export interface Rule {
  pattern: string;
  include: boolean;
  /** where it came from, for "why is this excluded": "default", "/etc/mkma/persist.rules:12", "--exclude" */
  source: string;
}

/** The rules' decision on one entry. */
export interface Decision {
  included: boolean;
  /** the last rule that matched, if any */
  rule: Rule | null;
}

/** What the layer holds: the final answer (rules and the owner's choices) for any entry. */
export type Include = (e: ChangeEntry) => boolean;

export const DEFAULT_RULES_PATH = '/etc/mkma/persist.rules';
export const DEFAULT_UPPER: string = RUNTIME.upper;
export const DEFAULT_LOWER: string = RUNTIME.lower;

/**
 * The user's choices in the UI (or --include/--exclude on exact paths): path → include?, each
 * applying to the path and everything below it; the deepest choice wins over shallower ones
 * and over the rules.
 */
export type Overrides = Map<string, boolean>;

export function overrideFor(path: string, overrides: Overrides): boolean | undefined {
  let p = path;
  for (;;) {
    const o = overrides.get(p);
    if (o !== undefined) return o;
    const slash = p.lastIndexOf('/');
    if (slash < 0) return undefined;
    p = p.slice(0, slash);
  }
}

/** Final decision for one entry: the user's choice if any, else the rules'. */
export function decide(entry: ChangeEntry, ruleDecision: Decision, overrides: Overrides): Decision & { overridden: boolean } {
  const o = overrideFor(entry.path, overrides);
  if (o !== undefined) return { included: o, rule: ruleDecision.rule, overridden: true };
  return { ...ruleDecision, overridden: false };
}
