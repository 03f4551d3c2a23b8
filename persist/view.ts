// The view of `mkma persist`'s terminal UI (persist/tui.tsx draws it and maps keys to it): the
// tree of changes, the owner's choices, folding, the search filter and the cursor, kept across
// rescans. Pure state, no React: tested (and kept fast) on its own.
import { buildTree, filterTree, hasChildren, KEEP_ANCESTOR, KEEP_MATCH, rowOf, visibleRows, type ChangeTree } from './change-tree.js';
import {
  computeInclusion,
  freezeInclusion,
  ruleDecisions,
  summarize,
  toggleChoice,
  type DecisionCache,
  type Inclusion,
  type Summary,
} from './inclusion.js';
import type { ChangeEntry, Decision, Include, Overrides, ScanResult } from './model.js';
import { explain, rowParts, type RowParts } from './rows.js';

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
    for (let i = 0; i < this.tree.entries.length; i = this.tree.end[i])
      if (hasChildren(this.tree, i)) this.expanded.add(this.tree.entries[i].path);
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
      else
        for (let i = 0; i < this.tree.entries.length; i++)
          if (this.filter.keep[i] & KEEP_ANCESTOR) this.filter.collapsed.add(this.tree.entries[i].path);
    } else {
      this.expanded.clear();
      if (open)
        for (let i = 0; i < this.tree.entries.length; i++) if (hasChildren(this.tree, i)) this.expanded.add(this.tree.entries[i].path);
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
  includeFn(): Include {
    return freezeInclusion(this.tree, this.inc, this.overrides, this.decideRule);
  }

  explain(i = this.current): string[] {
    return i < 0 ? [] : explain(this.tree, this.rules, this.overrides, this.inc, i);
  }

  row(r: number, width: number): RowParts {
    const i = this.rows[r];
    return rowParts(this.tree, this.inc, i, width, {
      cursor: r === this.cursor,
      expanded: this.isExpanded(i),
      foldable: this.isFoldable(i),
    });
  }
}
