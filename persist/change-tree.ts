// The tree of changes behind `mkma persist`'s view: the scan's entries in preorder with subtree
// ranges and totals, the rows a walk through the expanded directories shows, and the search.
// No React and no text here (persist/view.ts drives it, persist/rows.ts draws it).
//
// The tree is stored in preorder (a node's descendants are the indexes i+1 .. end[i]-1), so the
// visible rows are one forward walk that jumps over folded subtrees, and a choice on a directory
// only recomputes that directory's range and the counts of its ancestors (persist/inclusion.ts).
import type { ChangeEntry } from './model.js';
import { displayPath } from './text.js';

export interface ChangeTree {
  /** the entries in preorder (parents before children, siblings in scan order) */
  entries: ChangeEntry[];
  /** parent node, -1 at the top */
  parent: Int32Array;
  depth: Int32Array;
  /** index just past the node's last descendant */
  end: Int32Array;
  /** path → node */
  byPath: Map<string, number>;
  /** 1 for a change (anything but a 'container' directory) */
  counted: Uint8Array;
  /** 1 for a parent directory that the scan did not list (made up so the tree holds together) */
  synthetic: Uint8Array;
  /** changes in the subtree, the node itself included */
  changes: Int32Array;
  /** bytes of the changes in the subtree, the node itself included */
  bytes: Float64Array;
}

function syntheticDir(path: string): ChangeEntry {
  return {
    path,
    kind: 'container',
    type: 'dir',
    size: 0,
    totalSize: 0,
    mode: 0o40755,
    uid: 0,
    gid: 0,
    mtime: 0,
    xattrs: [],
    hardlinks: [],
  };
}

export function buildTree(input: ChangeEntry[]): ChangeTree {
  // First pass: one slot per distinct path, linked to its parent (made up when missing), the
  // children in a singly linked list in input order. Plain arrays of numbers: 100k entries.
  const slotEntry: ChangeEntry[] = [];
  const slotSynthetic: boolean[] = [];
  const firstChild: number[] = [];
  const lastChild: number[] = [];
  const nextSibling: number[] = [];
  const slotOf = new Map<string, number>();
  let firstRoot = -1;
  let lastRoot = -1;
  // the slots of the last path's ancestors: with sorted input, the parent is on it (no lookup)
  const chain: number[] = [];
  const link = (slot: number, path: string): void => {
    const slash = path.lastIndexOf('/');
    if (slash < 0) {
      if (lastRoot < 0) firstRoot = slot;
      else nextSibling[lastRoot] = slot;
      lastRoot = slot;
      return;
    }
    let p: number | undefined;
    while (chain.length) {
      const top = chain[chain.length - 1];
      const tp = slotEntry[top].path;
      if (tp.length === slash && path.startsWith(tp)) {
        p = top;
        break;
      }
      if (tp.length < slash && path.charCodeAt(tp.length) === 47 && path.startsWith(tp)) break;
      chain.pop();
    }
    const parentPath = p === undefined ? path.slice(0, slash) : '';
    if (p === undefined) p = slotOf.get(parentPath);
    if (p === undefined) {
      p = newSlot(syntheticDir(parentPath), true);
      link(p, parentPath);
    }
    if (lastChild[p] < 0) firstChild[p] = slot;
    else nextSibling[lastChild[p]] = slot;
    lastChild[p] = slot;
  };
  const newSlot = (e: ChangeEntry, synthetic: boolean): number => {
    const slot = slotEntry.length;
    slotEntry.push(e);
    slotSynthetic.push(synthetic);
    firstChild.push(-1);
    lastChild.push(-1);
    nextSibling.push(-1);
    slotOf.set(e.path, slot);
    return slot;
  };
  for (const e of input) {
    let path = e.path;
    if (path.charCodeAt(0) === 47 || path.charCodeAt(path.length - 1) === 47) path = path.replace(/^\/+|\/+$/g, '');
    if (path === '' || path === '.') continue;
    const entry = path === e.path ? e : { ...e, path };
    const known = slotOf.get(path);
    if (known !== undefined) {
      // A made-up parent listed later (unsorted input): take the real entry. Duplicates: first wins.
      if (slotSynthetic[known]) {
        slotEntry[known] = entry;
        slotSynthetic[known] = false;
      }
      continue;
    }
    const slot = newSlot(entry, false);
    link(slot, path);
    chain.push(slot);
  }

  // Second pass: preorder walk (iterative: trees can be deep).
  const n = slotEntry.length;
  const entries: ChangeEntry[] = new Array(n);
  const parent = new Int32Array(n);
  const depth = new Int32Array(n);
  const end = new Int32Array(n);
  const counted = new Uint8Array(n);
  const synthetic = new Uint8Array(n);
  // the same map, re-pointed from slots to nodes as the walk goes
  const byPath = slotOf;
  let next = 0;
  // stack of open nodes (by new index) and the slot to visit next under each
  const openNode: number[] = [];
  const openSlot: number[] = [];
  let slot = firstRoot;
  for (;;) {
    while (slot < 0) {
      if (!openNode.length) break;
      const done = openNode.pop()!;
      end[done] = next;
      slot = openSlot.pop()!;
    }
    if (slot < 0) break;
    const i = next++;
    const e = slotEntry[slot];
    entries[i] = e;
    const d = openNode.length;
    parent[i] = d ? openNode[d - 1] : -1;
    depth[i] = d;
    counted[i] = e.kind === 'container' ? 0 : 1;
    synthetic[i] = slotSynthetic[slot] ? 1 : 0;
    byPath.set(e.path, i);
    // descend: remember where to continue at this level
    openNode.push(i);
    openSlot.push(nextSibling[slot]);
    slot = firstChild[slot];
  }

  const changes = new Int32Array(n);
  const bytes = new Float64Array(n);
  for (let i = n - 1; i >= 0; i--) {
    if (counted[i]) {
      changes[i] += 1;
      bytes[i] += entries[i].size;
    }
    const p = parent[i];
    if (p >= 0) {
      changes[p] += changes[i];
      bytes[p] += bytes[i];
    }
  }
  return { entries, parent, depth, end, byPath, counted, synthetic, changes, bytes };
}

export function hasChildren(tree: ChangeTree, i: number): boolean {
  return tree.end[i] > i + 1;
}

/**
 * The rows on screen, in order: a walk that only enters expanded directories. `keep` (from
 * filterTree) hides the nodes that neither match nor lead to a match.
 */
export function visibleRows(tree: ChangeTree, isExpanded: (i: number) => boolean, keep?: Uint8Array): Int32Array {
  const n = tree.entries.length;
  let out = new Int32Array(Math.min(n, 1024));
  let len = 0;
  let i = 0;
  while (i < n) {
    if (keep && !keep[i]) {
      i = tree.end[i];
      continue;
    }
    if (len === out.length) {
      const bigger = new Int32Array(Math.min(n, out.length * 2));
      bigger.set(out);
      out = bigger;
    }
    out[len++] = i;
    i = hasChildren(tree, i) && isExpanded(i) ? i + 1 : tree.end[i];
  }
  return out.subarray(0, len);
}

/** Index of node `i` in the rows (ascending), or -1. */
export function rowOf(rows: Int32Array, i: number): number {
  let lo = 0;
  let hi = rows.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const v = rows[mid];
    if (v === i) return mid;
    if (v < i) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

export const KEEP_MATCH = 1;
export const KEEP_ANCESTOR = 2;

/**
 * Search: the nodes whose path (as shown, case-insensitive) holds `query` get KEEP_MATCH, their
 * ancestors KEEP_ANCESTOR.
 */
export function filterTree(tree: ChangeTree, query: string, lowerPaths?: string[]): { keep: Uint8Array; matches: number } {
  const n = tree.entries.length;
  const keep = new Uint8Array(n);
  const q = query.toLowerCase();
  let matches = 0;
  for (let i = 0; i < n; i++) {
    const lp = lowerPaths
      ? (lowerPaths[i] ??= displayPath(tree.entries[i].path).toLowerCase())
      : displayPath(tree.entries[i].path).toLowerCase();
    if (!lp.includes(q)) continue;
    keep[i] |= KEEP_MATCH;
    matches++;
    for (let p = tree.parent[i]; p >= 0 && !(keep[p] & KEEP_ANCESTOR); p = tree.parent[p]) keep[p] |= KEEP_ANCESTOR;
  }
  return { keep, matches };
}
