// The keys of `mkma persist`'s list, as a table: which keys, what they do (in words, for a help
// screen), and the action on the view. persist/tui.tsx looks a key up here and runs it; a new
// key is a new row: the help overlay (F1) and the footer are drawn from these rows.
import type { Key } from 'ink';
import { displayPath } from './text.js';
import type { PersistView } from './view.js';

/** What a key's action may do besides changing the view. */
export interface KeyContext {
  view: PersistView;
  /** rows a page key moves */
  page: number;
  /** a message in place of the status line (by default a key clears it) */
  say(lines: string[]): void;
  quit(): void;
  search(): void;
  /** scan again (it says how that went) */
  rescan(): void;
  /** the rules screen, or a message why there is nothing to append */
  showRules(): void;
  confirm(): void;
  /** the help overlay: the keys and what the marks mean */
  help(): void;
}

export interface Binding {
  /** the keys, as a help screen names them */
  keys: string;
  /** what they do */
  does: string;
  /** `raw`: the key's bytes as the terminal sent them (Ink's Key has no F1) */
  match(input: string, key: Key, raw: string): boolean;
  /** `input` is the key's text (which of the keys it was) */
  run(c: KeyContext, input: string): void;
  /**
   * Its hint in the footer, and the hint's rank: when the terminal is too narrow for all, the
   * highest ranks go first (save and quit rank 0: they stay).
   */
  footer?: { text: string; rank: number };
}

/** What terminals send for F1 (xterm, the Linux console, rxvt). */
const F1 = ['\u001BOP', '\u001B[11~', '\u001B[[A', '\u001B[1P'];

const is =
  (...inputs: string[]) =>
  (input: string) =>
    inputs.includes(input);

/** Moving the cursor: in the list and while typing a search. */
export const MOVE_KEYS: Binding[] = [
  { keys: '↑', does: 'up', match: (_i, k) => k.upArrow, run: (c) => c.view.move(-1) },
  { keys: '↓', does: 'down', match: (_i, k) => k.downArrow, run: (c) => c.view.move(1) },
  { keys: 'PgUp', does: 'a page up', match: (_i, k) => k.pageUp, run: (c) => c.view.move(-c.page) },
  { keys: 'PgDn', does: 'a page down', match: (_i, k) => k.pageDown, run: (c) => c.view.move(c.page) },
  { keys: 'Home', does: 'to the first row', match: (_i, k) => k.home, run: (c) => c.view.home() },
  { keys: 'End', does: 'to the last row', match: (_i, k) => k.end, run: (c) => c.view.end() },
];

/** The list's own keys. */
export const LIST_KEYS: Binding[] = [
  {
    keys: 'F1 H',
    does: 'this help: the keys, and what the marks and letters mean',
    match: (i, _k, raw) => i === 'H' || F1.includes(raw),
    run: (c) => c.help(),
    footer: { text: 'F1 help', rank: 1 },
  },
  { keys: 'k j', does: 'up, down', match: is('k', 'j'), run: (c, i) => c.view.move(i === 'k' ? -1 : 1) },
  { keys: 'g G', does: 'to the first, the last row', match: is('g', 'G'), run: (c, i) => (i === 'g' ? c.view.home() : c.view.end()) },
  {
    keys: '← h',
    does: 'fold, or go to the parent',
    match: (i, k) => k.leftArrow || i === 'h',
    run: (c) => c.view.left(),
    footer: { text: '↑↓←→ move/fold', rank: 6 },
  },
  { keys: '→ l', does: 'unfold, or go to the first child', match: (i, k) => k.rightArrow || i === 'l', run: (c) => c.view.right() },
  { keys: '-', does: 'fold everything', match: is('-'), run: (c) => c.view.expandAll(false) },
  { keys: '+ *', does: 'unfold everything', match: is('+', '*'), run: (c) => c.view.expandAll(true) },
  {
    keys: 'space',
    does: 'save or leave out the entry and what is below it',
    match: is(' '),
    footer: { text: 'space toggle', rank: 2 },
    run: (c) => {
      const inc = c.view.toggle();
      if (inc === undefined) return;
      const e = c.view.tree.entries[c.view.current];
      c.say([`/${displayPath(e.path)}${e.type === 'dir' ? '/' : ''}: ${inc ? 'saved' : 'not saved'} (your choice)`]);
    },
  },
  {
    keys: 'A N',
    does: 'save everything, nothing',
    match: is('A', 'N'),
    run: (c, i) => {
      c.view.setAll(i === 'A');
      c.say([i === 'A' ? 'everything will be saved (your choice)' : 'nothing will be saved (your choice)']);
    },
  },
  {
    keys: 'U',
    does: 'forget your choices: the rules decide',
    match: is('U'),
    run: (c) => {
      c.view.resetChoices();
      c.say(['your choices are forgotten: the rules decide']);
    },
  },
  { keys: '/', does: 'find (filter the list)', match: is('/'), run: (c) => c.search(), footer: { text: '/ find', rank: 3 } },
  { keys: 'esc', does: 'clear the filter', match: (_i, k) => k.escape, run: (c) => c.view.clearFilter() },
  { keys: '?', does: 'why is this saved or not', match: is('?'), run: (c) => c.say(c.view.explain()), footer: { text: '? why', rank: 5 } },
  { keys: 'r', does: 'scan again', match: is('r'), run: (c) => c.rescan(), footer: { text: 'r rescan', rank: 7 } },
  {
    keys: 'w',
    does: 'append your choices to the rules file',
    match: is('w'),
    run: (c) => c.showRules(),
    footer: { text: 'w rules', rank: 4 },
  },
  {
    keys: '⏎',
    does: 'save a layer (asks first)',
    match: (_i, k) => k.return,
    run: (c) => c.confirm(),
    footer: { text: '⏎ save', rank: 0 },
  },
  {
    keys: 'q',
    does: 'quit without saving (asks when you made choices)',
    match: is('q'),
    run: (c) => c.quit(),
    footer: { text: 'q quit', rank: 0 },
  },
];

/** The keys while typing a search (they are handled in persist/tui.tsx; listed for the help). */
export const SEARCH_KEYS: { keys: string; does: string }[] = [
  { keys: 'type', does: 'filter as you type: paths that contain the text, any case' },
  { keys: '⏎', does: 'keep the filter, back to the list' },
  { keys: 'esc', does: 'clear the filter' },
];

/**
 * The footer: the hints of `bindings` in their order, those of rank 0 and 1 (save, quit, help)
 * last, where the eye finds them; the highest ranks are left out first until the line fits
 * `width` columns.
 */
export function footerLine(bindings: Binding[], width: number, textWidth: (s: string) => number): string {
  const all = bindings.flatMap((b) => (b.footer ? [b.footer] : []));
  const hints = [...all.filter((h) => h.rank > 1), ...all.filter((h) => h.rank <= 1)];
  const ranks = [...new Set(hints.map((h) => h.rank))].sort((a, b) => b - a);
  for (let k = 0; ; k++) {
    const shown = hints.filter((h) => !ranks.slice(0, k).includes(h.rank)).map((h) => h.text);
    const line = shown.join('  ');
    if (textWidth(line) <= width || k >= ranks.length - 1) return line;
  }
}
