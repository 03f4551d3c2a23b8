// Pure logic behind `mkma persist`'s terminal UI (persist/tui.tsx): the tree of changes, folding,
// the visible rows, what the user's choices include, the search filter and the text of each row,
// sized to the terminal. No React here, so it can be tested (and kept fast) on its own.
//
// The tree is stored in preorder (a node's descendants are the indexes i+1 .. end[i]-1), so the
// visible rows are one forward walk that jumps over folded subtrees, and a choice on a directory
// only recomputes that directory's range and the counts of its ancestors.

import { formatBytes } from '../lib/progress.js';
import { decide, overrideFor } from './model.js';
import type { ChangeEntry, ChangeKind, Decision, Overrides, ScanResult } from './model.js';

// ---------------------------------------------------------------------------------------------
// The tree

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
  return { path, kind: 'container', type: 'dir', size: 0, totalSize: 0, mode: 0o40755, uid: 0, gid: 0, mtime: 0, xattrs: [], hardlinks: [] };
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

export type DecisionCache = Map<string, { type: ChangeEntry['type']; decision: Decision }>;

/** The rules' decision for every node; `cache` (by path, checked against the type) saves work across rescans. */
export function ruleDecisions(tree: ChangeTree, decideRule: (e: ChangeEntry) => Decision, cache?: DecisionCache): Decision[] {
  const out: Decision[] = new Array(tree.entries.length);
  for (let i = 0; i < tree.entries.length; i++) {
    const e = tree.entries[i];
    const c = cache?.get(e.path);
    if (c && c.type === e.type) {
      out[i] = c.decision;
      continue;
    }
    const d = decideRule(e);
    cache?.set(e.path, { type: e.type, decision: d });
    out[i] = d;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// What is included

export interface Inclusion {
  /** 1 if this change is included (0 for containers) */
  own: Uint8Array;
  /** 1 if a choice of the user (not a rule) decides this node */
  overridden: Uint8Array;
  /** included changes in the subtree, the node itself included */
  inc: Int32Array;
  /** bytes of the included changes in the subtree */
  incBytes: Float64Array;
}

export type IncludeState = 'all' | 'none' | 'partial';

/** Decides the nodes of the range [from, to) (a whole subtree), `inherited` being the choice above it. */
function decideRange(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, from: number, to: number, inherited: boolean | undefined): void {
  // choice in effect per node of the range: -1 none, 0 exclude, 1 include
  const eff = new Int8Array(to - from);
  const inh = inherited === undefined ? -1 : inherited ? 1 : 0;
  for (let i = from; i < to; i++) {
    const o = overrides.size ? overrides.get(tree.entries[i].path) : undefined;
    let v: number;
    if (o !== undefined) v = o ? 1 : 0;
    else {
      const p = tree.parent[i];
      v = p >= from ? eff[p - from] : inh;
    }
    eff[i - from] = v;
    inc.overridden[i] = v >= 0 ? 1 : 0;
    inc.own[i] = tree.counted[i] ? (v >= 0 ? v : rules[i].included ? 1 : 0) : 0;
  }
  for (let i = to - 1; i >= from; i--) {
    inc.inc[i] = 0;
    inc.incBytes[i] = 0;
  }
  for (let i = to - 1; i >= from; i--) {
    if (inc.own[i]) {
      inc.inc[i] += 1;
      inc.incBytes[i] += tree.entries[i].size;
    }
    const p = tree.parent[i];
    if (p >= from) {
      inc.inc[p] += inc.inc[i];
      inc.incBytes[p] += inc.incBytes[i];
    }
  }
}

export function computeInclusion(tree: ChangeTree, rules: Decision[], overrides: Overrides): Inclusion {
  const n = tree.entries.length;
  const inc: Inclusion = { own: new Uint8Array(n), overridden: new Uint8Array(n), inc: new Int32Array(n), incBytes: new Float64Array(n) };
  decideRange(tree, rules, overrides, inc, 0, n, undefined);
  return inc;
}

/** After the choices on `i` or below it changed: recompute its subtree, then its ancestors' counts. */
export function updateInclusion(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, i: number): void {
  const before = inc.inc[i];
  const beforeBytes = inc.incBytes[i];
  const p = tree.parent[i];
  const inherited = p >= 0 ? overrideFor(tree.entries[p].path, overrides) : undefined;
  decideRange(tree, rules, overrides, inc, i, tree.end[i], inherited);
  const d = inc.inc[i] - before;
  const db = inc.incBytes[i] - beforeBytes;
  for (let a = p; a >= 0; a = tree.parent[a]) {
    inc.inc[a] += d;
    inc.incBytes[a] += db;
  }
}

export function includeState(tree: ChangeTree, inc: Inclusion, i: number): IncludeState {
  const total = tree.changes[i];
  const n = inc.inc[i];
  if (n === 0) return 'none';
  return n === total ? 'all' : 'partial';
}

/**
 * Would the layer hold this node? A change: the decision on it. A container directory: yes when
 * something below it is saved (it has to exist for that).
 */
export function nodeIncluded(tree: ChangeTree, inc: Inclusion, i: number): boolean {
  return tree.counted[i] ? inc.own[i] === 1 : inc.inc[i] > 0;
}

/** The user's choice for a subtree: sets it on `i` and forgets the choices below (the subtree follows). */
export function setChoice(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, i: number, include: boolean): void {
  const path = tree.entries[i].path;
  const prefix = `${path}/`;
  for (const k of [...overrides.keys()]) if (k.startsWith(prefix)) overrides.delete(k);
  overrides.set(path, include);
  updateInclusion(tree, rules, overrides, inc, i);
}

/** Space: include the subtree, or exclude it when it is already wholly included. Returns the new choice. */
export function toggleChoice(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, i: number): boolean {
  const include = includeState(tree, inc, i) !== 'all';
  setChoice(tree, rules, overrides, inc, i, include);
  return include;
}

export interface Summary {
  /** entries the layer will hold: the included changes and the directories they need */
  entries: number;
  bytes: number;
  /** included changes (containers not counted) */
  changes: number;
  /** included whiteouts */
  deleted: number;
  /** included opaque directories */
  replaced: number;
  /** changes left out, and their bytes */
  excluded: number;
  excludedBytes: number;
}

export function summarize(tree: ChangeTree, inc: Inclusion): Summary {
  const s: Summary = { entries: 0, bytes: 0, changes: 0, deleted: 0, replaced: 0, excluded: 0, excludedBytes: 0 };
  const n = tree.entries.length;
  for (let i = 0; i < n; i++) {
    const e = tree.entries[i];
    if (tree.counted[i]) {
      if (inc.own[i]) {
        s.entries++;
        s.changes++;
        s.bytes += e.size;
        if (e.kind === 'deleted') s.deleted++;
        else if (e.kind === 'replaced') s.replaced++;
      } else {
        s.excluded++;
        s.excludedBytes += e.size;
      }
    } else if (!tree.synthetic[i] && inc.inc[i] > 0) {
      s.entries++;
      s.bytes += e.size;
    }
  }
  return s;
}

export function totals(tree: ChangeTree, inc: Inclusion): { changes: number; bytes: number; included: number; includedBytes: number } {
  const t = { changes: 0, bytes: 0, included: 0, includedBytes: 0 };
  for (let i = 0; i < tree.entries.length; i = tree.end[i]) {
    t.changes += tree.changes[i];
    t.bytes += tree.bytes[i];
    t.included += inc.inc[i];
    t.includedBytes += inc.incBytes[i];
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Visible rows and the search filter

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
    const lp = lowerPaths ? (lowerPaths[i] ??= displayPath(tree.entries[i].path).toLowerCase()) : displayPath(tree.entries[i].path).toLowerCase();
    if (!lp.includes(q)) continue;
    keep[i] |= KEEP_MATCH;
    matches++;
    for (let p = tree.parent[i]; p >= 0 && !(keep[p] & KEEP_ANCESTOR); p = tree.parent[p]) keep[p] |= KEEP_ANCESTOR;
  }
  return { keep, matches };
}

// ---------------------------------------------------------------------------------------------
// Text: names as the terminal shows them, widths, truncation

/** Raw latin1 bytes → text for the screen: UTF-8 when it is, control characters as '?'. */
export function displayPath(raw: string): string {
  let s = raw;
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(raw)) {
    const utf8 = Buffer.from(raw, 'latin1').toString('utf8');
    if (!utf8.includes('\uFFFD')) s = utf8;
  }
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
}

/** Terminal columns of one code point (0 for combining marks, 2 for wide East Asian and emoji). */
export function charWidth(cp: number): number {
  if (cp < 0x300) return 1;
  if ((cp >= 0x300 && cp <= 0x36f) || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0xfe00 && cp <= 0xfe0f)) return 0;
  if (
    (cp >= 0x1100 && cp <= 0x115f) ||
    (cp >= 0x2e80 && cp <= 0x303e) ||
    (cp >= 0x3041 && cp <= 0x33ff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0xa000 && cp <= 0xa4cf) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe30 && cp <= 0xfe4f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1f64f) ||
    (cp >= 0x1f900 && cp <= 0x1f9ff) ||
    (cp >= 0x20000 && cp <= 0x3fffd)
  )
    return 2;
  return 1;
}

export function textWidth(s: string): number {
  let w = 0;
  for (const ch of s) w += charWidth(ch.codePointAt(0)!);
  return w;
}

/** Cuts the middle out of `s` ("usr/lib/…/file.so") so that it fits `width` columns. */
export function truncateMiddle(s: string, width: number): string {
  if (width <= 0) return '';
  if (textWidth(s) <= width) return s;
  if (width === 1) return '…';
  const chars = [...s];
  const room = width - 1;
  const headRoom = Math.floor(room / 2);
  let head = '';
  let hw = 0;
  let hi = 0;
  for (; hi < chars.length; hi++) {
    const w = charWidth(chars[hi].codePointAt(0)!);
    if (hw + w > headRoom) break;
    head += chars[hi];
    hw += w;
  }
  let tail = '';
  let tw = 0;
  for (let ti = chars.length - 1; ti >= hi; ti--) {
    const w = charWidth(chars[ti].codePointAt(0)!);
    if (hw + tw + w > room) break;
    tail = chars[ti] + tail;
    tw += w;
  }
  return `${head}…${tail}`;
}

/** Cuts the end of `s` ("long text…") to fit `width` columns. */
export function truncateEnd(s: string, width: number): string {
  if (width <= 0) return '';
  if (textWidth(s) <= width) return s;
  let out = '';
  let w = 0;
  for (const ch of s) {
    const cw = charWidth(ch.codePointAt(0)!);
    if (w + cw > width - 1) break;
    out += ch;
    w += cw;
  }
  return `${out}…`;
}

export function padEnd(s: string, width: number): string {
  const w = textWidth(s);
  return w >= width ? s : s + ' '.repeat(width - w);
}

/** One screen line: fits `width` columns exactly, padded with spaces. */
export function fitLine(s: string, width: number): string {
  return padEnd(truncateEnd(s, width), width);
}

// ---------------------------------------------------------------------------------------------
// Rows

export const KIND_MARK: Record<ChangeKind, string> = { added: 'A', modified: 'M', metadata: 'm', deleted: 'D', replaced: 'R', container: ' ' };
export const KIND_WORD: Record<ChangeKind, string> = {
  added: 'added',
  modified: 'modified',
  metadata: 'metadata only',
  deleted: 'deleted',
  replaced: 'replaced dir',
  container: 'folder',
};
export const TYPE_WORD: Record<ChangeEntry['type'], string> = {
  file: 'file',
  dir: 'directory',
  symlink: 'symlink',
  char: 'character device',
  block: 'block device',
  fifo: 'fifo',
  socket: 'socket',
  whiteout: 'path',
};
export const SIZE_WIDTH = 8;
/** columns taken by everything but the indentation and the name */
const ROW_FIXED = 2 + 1 + 1 + 3 + 1 + 1 + 1 + 1 + SIZE_WIDTH;
const MIN_NAME = 16;

export interface RowParts {
  /** '>' on the cursor's row */
  pointer: string;
  indent: string;
  /** '▾' expanded, '▸' folded, ' ' for leaves */
  fold: string;
  /** '[x]', '[ ]' or '[~]' */
  mark: string;
  state: IncludeState;
  /** A M m D R, ' ' for container directories */
  kind: string;
  kindOf: ChangeKind;
  /** the name, truncated in the middle and padded to its column */
  name: string;
  /** right-aligned */
  size: string;
}

export function rowParts(tree: ChangeTree, inc: Inclusion, i: number, width: number, opts: { cursor: boolean; expanded: boolean; foldable: boolean }): RowParts {
  const e = tree.entries[i];
  const depth = tree.depth[i];
  const indentCols = Math.max(0, Math.min(depth * 2, width - ROW_FIXED - MIN_NAME));
  const nameWidth = Math.max(0, width - ROW_FIXED - indentCols);
  const state = includeState(tree, inc, i);
  const slash = e.path.lastIndexOf('/');
  let name = displayPath(slash < 0 ? e.path : e.path.slice(slash + 1));
  if (e.type === 'dir') name += '/';
  else if (e.type === 'symlink' && e.target !== undefined) name += ` -> ${displayPath(e.target)}`;
  let size = '';
  if (e.type === 'dir') size = tree.bytes[i] > 0 ? formatBytes(tree.bytes[i]) : '';
  else if (e.kind !== 'deleted') size = formatBytes(e.size);
  return {
    pointer: opts.cursor ? '>' : ' ',
    indent: ' '.repeat(indentCols),
    fold: opts.foldable ? (opts.expanded ? '▾' : '▸') : ' ',
    mark: tree.changes[i] === 0 ? '   ' : state === 'all' ? '[x]' : state === 'none' ? '[ ]' : '[~]',
    state,
    kind: KIND_MARK[e.kind],
    kindOf: e.kind,
    name: padEnd(truncateMiddle(name, nameWidth), nameWidth),
    size: size.padStart(SIZE_WIDTH).slice(-SIZE_WIDTH),
  };
}

export function rowText(p: RowParts): string {
  return `${p.pointer} ${p.indent}${p.fold} ${p.mark} ${p.kind} ${p.name} ${p.size}`;
}

// ---------------------------------------------------------------------------------------------
// Explanations and rules

function ruleText(d: Decision): string {
  const r = d.rule!;
  return `${r.include ? '!' : ''}${r.pattern}`;
}

/** Why node `i` is (not) saved, in a few short lines: for `?`. */
export function explain(tree: ChangeTree, rules: Decision[], overrides: Overrides, inc: Inclusion, i: number): string[] {
  const e = tree.entries[i];
  const what = e.kind === 'container' ? 'folder' : `${KIND_WORD[e.kind]}${e.kind === 'replaced' ? '' : ` ${TYPE_WORD[e.type]}`}`;
  const lines = [`/${displayPath(e.path)}${e.type === 'dir' ? '/' : ''}: ${what}`];
  const below = tree.changes[i] - (tree.counted[i] ? 1 : 0);
  const incBelow = inc.inc[i] - (tree.counted[i] ? inc.own[i] : 0);
  if (!tree.counted[i]) {
    lines.push(`not a change itself: ${incBelow} of ${below} changes below are saved`);
    return lines;
  }
  const d = decide(e, rules[i], overrides);
  const verdict = d.included ? 'saved' : 'not saved';
  if (d.overridden) {
    let p = e.path;
    while (!overrides.has(p) && p.includes('/')) p = p.slice(0, p.lastIndexOf('/'));
    lines.push(`${verdict}: your choice${p === e.path ? '' : ` (on /${displayPath(p)})`}`);
    if (d.rule) lines.push(`the rules say ${rules[i].included ? 'save' : 'skip'}: ${ruleText(d)} (${d.rule.source})`);
  } else if (d.rule) {
    lines.push(`${verdict}: rule ${ruleText(d)}`);
    lines.push(`from ${d.rule.source}`);
  } else {
    lines.push(`${verdict}: no rule matches`);
  }
  if (below > 0) lines.push(`${incBelow} of ${below} changes below are saved`);
  return lines;
}

/** Escapes a path for a gitignore-style pattern. */
function escapePattern(path: string): string {
  let s = path.replace(/[\\*?[\]]/g, (c) => `\\${c}`);
  if (s.endsWith(' ')) s = `${s.slice(0, -1)}\\ `;
  return s;
}

/**
 * The user's choices as rule lines (used when no rulesFromOverrides is given): anchored paths,
 * shallower first so the deeper ones win; a directory also gets "dir/**" so the choice covers
 * everything below it.
 */
export function ruleLinesFromOverrides(overrides: Overrides, isDir: (path: string) => boolean): string[] {
  const paths = [...overrides.keys()].sort((a, b) => a.split('/').length - b.split('/').length || (a < b ? -1 : a > b ? 1 : 0));
  const out: string[] = [];
  for (const p of paths) {
    const neg = overrides.get(p) ? '!' : '';
    const pat = `/${escapePattern(p)}`;
    out.push(`${neg}${pat}`);
    if (isDir(p)) out.push(`${neg}${pat}/**`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The view: tree + choices + folding + filter + cursor, driven by the keys

export interface ScanDiff {
  added: number;
  removed: number;
}

export class PersistView {
  scan!: ScanResult;
  tree!: ChangeTree;
  rules!: Decision[];
  inc!: Inclusion;
  rows: Int32Array = new Int32Array(0);
  /** index in rows */
  cursor = 0;
  /** first row on screen */
  top = 0;
  /** expanded directories, by path (survive rescans) */
  readonly expanded = new Set<string>();
  filter: { query: string; keep: Uint8Array; matches: number; collapsed: Set<string> } | null = null;
  private readonly decisionCache: DecisionCache = new Map();
  private lowerPaths: string[] = [];

  constructor(
    scan: ScanResult,
    private readonly decideRule: (e: ChangeEntry) => Decision,
    readonly overrides: Overrides = new Map(),
  ) {
    this.load(scan);
    for (let i = 0; i < this.tree.entries.length; i = this.tree.end[i]) if (hasChildren(this.tree, i)) this.expanded.add(this.tree.entries[i].path);
    this.rebuildRows();
  }

  private load(scan: ScanResult): void {
    this.scan = scan;
    this.tree = buildTree(scan.entries);
    this.rules = ruleDecisions(this.tree, this.decideRule, this.decisionCache);
    this.inc = computeInclusion(this.tree, this.rules, this.overrides);
    this.lowerPaths = [];
  }

  get size(): number {
    return this.rows.length;
  }

  /** node under the cursor, -1 when the list is empty */
  get current(): number {
    return this.rows.length ? this.rows[this.cursor] : -1;
  }

  isExpanded(i: number): boolean {
    const path = this.tree.entries[i].path;
    if (this.filter) return (this.filter.keep[i] & KEEP_ANCESTOR) !== 0 && !this.filter.collapsed.has(path);
    return this.expanded.has(path);
  }

  isFoldable(i: number): boolean {
    if (this.filter) return (this.filter.keep[i] & KEEP_ANCESTOR) !== 0;
    return hasChildren(this.tree, i);
  }

  private rebuildRows(keepNode = this.current): void {
    this.rows = visibleRows(this.tree, (i) => this.isExpanded(i), this.filter?.keep);
    this.placeCursor(keepNode);
  }

  /** Cursor on node `i`, else its nearest visible ancestor, else the same row number. */
  private placeCursor(i: number): void {
    for (let n = i; n >= 0; n = this.tree.parent[n]) {
      const r = rowOf(this.rows, n);
      if (r >= 0) {
        this.cursor = r;
        return;
      }
    }
    this.cursor = Math.max(0, Math.min(this.cursor, this.rows.length - 1));
  }

  // moving
  move(delta: number): void {
    if (!this.rows.length) return;
    this.cursor = Math.max(0, Math.min(this.rows.length - 1, this.cursor + delta));
  }
  home(): void {
    this.cursor = 0;
  }
  end(): void {
    this.cursor = Math.max(0, this.rows.length - 1);
  }

  /** Keeps the cursor inside a window of `height` rows; returns the first row to show. */
  scrollTo(height: number): number {
    const h = Math.max(1, height);
    if (this.cursor < this.top) this.top = this.cursor;
    if (this.cursor >= this.top + h) this.top = this.cursor - h + 1;
    this.top = Math.max(0, Math.min(this.top, this.rows.length - h));
    return this.top;
  }

  // folding
  setExpanded(i: number, open: boolean): void {
    const path = this.tree.entries[i].path;
    if (this.filter) {
      if (open) this.filter.collapsed.delete(path);
      else this.filter.collapsed.add(path);
    } else if (open) this.expanded.add(path);
    else this.expanded.delete(path);
    this.rebuildRows(i);
  }
  /** ←: fold an open directory, else go to the parent. */
  left(): void {
    const i = this.current;
    if (i < 0) return;
    if (this.isFoldable(i) && this.isExpanded(i)) this.setExpanded(i, false);
    else if (this.tree.parent[i] >= 0) this.placeCursor(this.tree.parent[i]);
  }
  /** →: unfold a folded directory, else go to its first child. */
  right(): void {
    const i = this.current;
    if (i < 0 || !this.isFoldable(i)) return;
    if (!this.isExpanded(i)) this.setExpanded(i, true);
    else this.move(1);
  }
  /** Unfolds everything (outside a filter: can be a long list, still only one walk). */
  expandAll(open: boolean): void {
    if (this.filter) {
      if (open) this.filter.collapsed.clear();
      else for (let i = 0; i < this.tree.entries.length; i++) if (this.filter.keep[i] & KEEP_ANCESTOR) this.filter.collapsed.add(this.tree.entries[i].path);
    } else {
      this.expanded.clear();
      if (open) for (let i = 0; i < this.tree.entries.length; i++) if (hasChildren(this.tree, i)) this.expanded.add(this.tree.entries[i].path);
    }
    const cur = this.current;
    // after folding everything the cursor goes to its top-level directory
    let top = cur;
    if (!open) while (top >= 0 && this.tree.parent[top] >= 0) top = this.tree.parent[top];
    this.rebuildRows(top);
  }

  // choices
  toggle(): boolean | undefined {
    const i = this.current;
    if (i < 0) return undefined;
    return toggleChoice(this.tree, this.rules, this.overrides, this.inc, i);
  }
  setAll(include: boolean): void {
    this.overrides.clear();
    for (let i = 0; i < this.tree.entries.length; i = this.tree.end[i]) this.overrides.set(this.tree.entries[i].path, include);
    this.inc = computeInclusion(this.tree, this.rules, this.overrides);
  }
  /** Forgets the user's choices: back to what the rules say. */
  resetChoices(): void {
    this.overrides.clear();
    this.inc = computeInclusion(this.tree, this.rules, this.overrides);
  }

  // filter
  setFilter(query: string): number {
    if (!query) {
      this.clearFilter();
      return 0;
    }
    const cur = this.current;
    const { keep, matches } = filterTree(this.tree, query, this.lowerPaths);
    this.filter = { query, keep, matches, collapsed: this.filter?.collapsed ?? new Set() };
    this.rebuildRows(cur);
    // on a row that is only there as a parent: go to the first match below
    const i = this.current;
    if (i >= 0 && !(keep[i] & KEEP_MATCH)) {
      for (let r = this.cursor; r < this.rows.length; r++) {
        if (keep[this.rows[r]] & KEEP_MATCH) {
          this.cursor = r;
          break;
        }
      }
    }
    return matches;
  }
  clearFilter(): void {
    if (!this.filter) return;
    const cur = this.current;
    this.filter = null;
    // the entry found stays visible: open its parents
    for (let p = cur >= 0 ? this.tree.parent[cur] : -1; p >= 0; p = this.tree.parent[p]) this.expanded.add(this.tree.entries[p].path);
    this.rebuildRows(cur);
  }

  // rescans
  /** Takes a new scan, keeping the choices, the folding, the filter and the cursor (by path). */
  applyScan(scan: ScanResult): ScanDiff {
    const oldTree = this.tree;
    const curPath = this.current >= 0 ? oldTree.entries[this.current].path : null;
    const screenLine = this.cursor - this.top;
    this.load(scan);
    let added = 0;
    for (const e of this.tree.entries) if (!oldTree.byPath.has(e.path)) added++;
    let removed = 0;
    for (const e of oldTree.entries) if (!this.tree.byPath.has(e.path)) removed++;
    // new top-level directories open, like at the start
    for (let i = 0; i < this.tree.entries.length; i = this.tree.end[i]) {
      const p = this.tree.entries[i].path;
      if (!oldTree.byPath.has(p) && hasChildren(this.tree, i)) this.expanded.add(p);
    }
    if (this.filter) {
      const { keep, matches } = filterTree(this.tree, this.filter.query, this.lowerPaths);
      this.filter = { ...this.filter, keep, matches };
    }
    let node = -1;
    if (curPath !== null) {
      let p = curPath;
      for (;;) {
        const i = this.tree.byPath.get(p);
        if (i !== undefined) {
          node = i;
          break;
        }
        const slash = p.lastIndexOf('/');
        if (slash < 0) break;
        p = p.slice(0, slash);
      }
    }
    this.rebuildRows(node);
    this.top = Math.max(0, this.cursor - screenLine);
    return { added, removed };
  }

  // results
  summary(): Summary {
    return summarize(this.tree, this.inc);
  }

  /**
   * The include function for the writer, frozen at the time of the call. Entries of this scan
   * answer from the tree; others (a newer scan) from the rules and the choices.
   */
  includeFn(): (e: ChangeEntry) => boolean {
    const tree = this.tree;
    const own = this.inc.own.slice();
    const below = this.inc.inc.slice();
    const overrides = new Map(this.overrides);
    const decideRule = this.decideRule;
    return (e: ChangeEntry) => {
      const i = tree.byPath.get(e.path);
      if (i !== undefined && tree.entries[i].type === e.type) return tree.counted[i] ? own[i] === 1 : below[i] > 0;
      if (e.kind === 'container') return true;
      return decide(e, decideRule(e), overrides).included;
    };
  }

  explain(i = this.current): string[] {
    return i < 0 ? [] : explain(this.tree, this.rules, this.overrides, this.inc, i);
  }

  row(r: number, width: number): RowParts {
    const i = this.rows[r];
    return rowParts(this.tree, this.inc, i, width, { cursor: r === this.cursor, expanded: this.isExpanded(i), foldable: this.isFoldable(i) });
  }

  isDir(path: string): boolean {
    const i = this.tree.byPath.get(path);
    return i !== undefined && this.tree.entries[i].type === 'dir';
  }
}
