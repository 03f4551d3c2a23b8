// The keys of `mkma persist`'s list, as a table: which keys, what they do (in words, for a help
// screen), and the action on the view. persist/tui.tsx looks a key up here and runs it; a new
// key is a new row, and a help overlay or legend can list the rows.
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
}

export interface Binding {
  /** the keys, as a help screen names them */
  keys: string;
  /** what they do */
  does: string;
  match(input: string, key: Key): boolean;
  /** `input` is the key's text (which of the keys it was) */
  run(c: KeyContext, input: string): void;
}

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
  { keys: 'q', does: 'quit without saving', match: is('q'), run: (c) => c.quit() },
  { keys: 'k j', does: 'up, down', match: is('k', 'j'), run: (c, i) => c.view.move(i === 'k' ? -1 : 1) },
  { keys: 'g G', does: 'to the first, the last row', match: is('g', 'G'), run: (c, i) => (i === 'g' ? c.view.home() : c.view.end()) },
  { keys: '← h', does: 'fold, or go to the parent', match: (i, k) => k.leftArrow || i === 'h', run: (c) => c.view.left() },
  { keys: '→ l', does: 'unfold, or go to the first child', match: (i, k) => k.rightArrow || i === 'l', run: (c) => c.view.right() },
  { keys: '-', does: 'fold everything', match: is('-'), run: (c) => c.view.expandAll(false) },
  { keys: '+ *', does: 'unfold everything', match: is('+', '*'), run: (c) => c.view.expandAll(true) },
  {
    keys: 'space',
    does: 'save or leave out the entry and what is below it',
    match: is(' '),
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
  { keys: '/', does: 'find (filter the list)', match: is('/'), run: (c) => c.search() },
  { keys: 'esc', does: 'clear the filter', match: (_i, k) => k.escape, run: (c) => c.view.clearFilter() },
  { keys: '?', does: 'why is this saved or not', match: is('?'), run: (c) => c.say(c.view.explain()) },
  { keys: 'r', does: 'scan again', match: is('r'), run: (c) => c.rescan() },
  { keys: 'w', does: 'append your choices to the rules file', match: is('w'), run: (c) => c.showRules() },
  { keys: '⏎', does: 'save a layer', match: (_i, k) => k.return, run: (c) => c.confirm() },
];
