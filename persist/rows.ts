// What one row of the list shows (pointer, indentation, fold mark, choice, kind, name, size),
// sized to the terminal's width exactly, and the explanation of a row (`?`).
import { formatBytes } from '../lib/progress.js';
import type { ChangeTree } from './change-tree.js';
import { includeState, type IncludeState, type Inclusion } from './inclusion.js';
import { decide, type ChangeEntry, type ChangeKind, type Decision, type Overrides } from './model.js';
import { KIND_MARK, KIND_WORD } from './kinds.js';
import { displayPath, padEnd, truncateMiddle } from './text.js';

export { KIND_LEGEND, KIND_MARK, KIND_WORD, MARK_LEGEND } from './kinds.js';

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
  /** A M P D R, ' ' for container directories */
  kind: string;
  kindOf: ChangeKind;
  /** the name, truncated in the middle and padded to its column */
  name: string;
  /** right-aligned */
  size: string;
}

export function rowParts(
  tree: ChangeTree,
  inc: Inclusion,
  i: number,
  width: number,
  opts: { cursor: boolean; expanded: boolean; foldable: boolean },
): RowParts {
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
