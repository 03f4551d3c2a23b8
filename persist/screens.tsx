// What `mkma persist`'s terminal UI draws, screen by screen: the header, the body of each mode
// (the list, the rules to append, the confirmation, the result), the status line and the key
// help. Plain functions of the view and the mode: persist/tui.tsx owns the state and the keys.
// A new screen (an overlay, a legend) is a new Mode and one more case in `body`.
//
// Every line is cut to the terminal's width (never wrapped), and only the rows in the window
// are drawn.
import { memo, type ReactElement } from 'react';
import { Text } from 'ink';
import { formatBytes } from '../lib/progress.js';
import { countLines, plural, type LayerCounts } from './counts.js';
import { totals, type Summary } from './inclusion.js';
import { footerLine, LIST_KEYS, MOVE_KEYS, SEARCH_KEYS } from './keys.js';
import { KIND_LEGEND, MARK_LEGEND, rowText, type RowParts } from './rows.js';
import { displayPath, fitLine, textWidth, truncateMiddle } from './text.js';
import { newLayerNote } from './write.js';
import type { PersistView } from './view.js';

/** What the write did: the layer file, its counts (counts.ts, as confirmed) and its size on disk. */
export type WriteResult = { file: string; counts: LayerCounts; bytesOut: number };

/** What the UI shows and which keys it takes. */
export type Mode =
  | { name: 'main' }
  | { name: 'search'; query: string }
  | { name: 'rules'; lines: string[]; busy: boolean }
  | { name: 'confirm'; summary: Summary; counts: LayerCounts; warnings: string[] }
  | { name: 'writing'; summary: Summary; counts: LayerCounts; warnings: string[] }
  | { name: 'result'; result: WriteResult }
  /** the key help and the legend (from the list), scrolled to line `top` */
  | { name: 'help'; top: number }
  /** q or Ctrl-C with choices not saved: asks first */
  | { name: 'quit'; choices: number };

/** NO_COLOR (any non-empty value, no-color.org): no colour anywhere; bold and inverse stay. */
export function colourOff(): boolean {
  return !!process.env.NO_COLOR;
}

const KIND_COLOR: Record<string, string> = { A: 'green', M: 'yellow', P: 'cyan', D: 'red', R: 'magenta' };

export const Row = memo(
  function Row({ p }: { p: RowParts }) {
    const colour = !colourOff();
    const dim = colour && p.state === 'none';
    return (
      <Text wrap="truncate" inverse={p.pointer === '>'} dimColor={dim}>
        {p.pointer} {p.indent}
        {p.fold} <Text color={colour && p.state === 'partial' ? 'yellow' : undefined}>{p.mark}</Text>{' '}
        <Text color={colour ? KIND_COLOR[p.kind] : undefined}>{p.kind}</Text> {p.name} {p.size}
      </Text>
    );
  },
  (a, b) => rowText(a.p) === rowText(b.p) && a.p.state === b.p.state,
);

export function Line({
  text,
  width,
  color,
  dimColor,
  ...style
}: {
  text: string;
  width: number;
  bold?: boolean;
  color?: string;
  dimColor?: boolean;
  inverse?: boolean;
}) {
  const colour = !colourOff();
  return (
    <Text wrap="truncate" {...style} color={colour ? color : undefined} dimColor={colour && dimColor}>
      {fitLine(text, width)}
    </Text>
  );
}

export { plural };

/** The upperdir, the number of changes and what will be saved. */
export function header(view: PersistView, width: number): string {
  const scan = view.scan;
  const tot = totals(view.tree, view.inc);
  const skipped = scan.skipped.length ? ` · ${scan.skipped.length} skipped` : '';
  const counts = ` ${plural(tot.changes, 'change')} · save ${tot.included} (${formatBytes(tot.includedBytes)} of ${formatBytes(tot.bytes)})${skipped}`;
  const upperRoom = Math.max(8, width - counts.length - 1);
  return `${truncateMiddle(scan.upper, upperRoom)}:${counts}`;
}

export interface BodyProps {
  view: PersistView;
  mode: Mode;
  width: number;
  height: number;
  rulesFile: string;
  canSaveRules: boolean;
}

/** The lines between the header and the status line, exactly `height` of them. */
export function body(p: BodyProps): ReactElement[] {
  const { view, mode, width, height } = p;
  const out: ReactElement[] = [];
  const lines = (texts: string[], style: (k: number) => { bold?: boolean; color?: string } = () => ({})) =>
    texts.forEach((l, k) => out.push(<Line key={k} width={width} text={l} {...style(k)} />));
  if (mode.name === 'main' || mode.name === 'search') {
    const top = view.scrollTo(height);
    const last = Math.min(view.size, top + height);
    for (let r = top; r < last; r++) out.push(<Row key={r - top} p={view.row(r, width)} />);
    if (!view.size)
      out.push(
        <Line
          key="empty"
          width={width}
          dimColor
          text={view.filter ? `  nothing matches "${view.filter.query}"` : '  no changes since boot'}
        />,
      );
  } else if (mode.name === 'rules') {
    out.push(<Line key="t" width={width} bold text={`Append ${plural(mode.lines.length, 'line')} to ${p.rulesFile}?`} />);
    const room = height - 3;
    const shown = mode.lines.length > room ? mode.lines.slice(0, Math.max(0, room - 1)) : mode.lines;
    shown.forEach((l, k) => out.push(<Line key={`l${k}`} width={width} text={`  ${truncateMiddle(l, width - 2)}`} />));
    if (shown.length < mode.lines.length)
      out.push(<Line key="more" width={width} dimColor text={`  … ${mode.lines.length - shown.length} more`} />);
    out.push(<Line key="gap" width={width} text="" />);
    out.push(
      <Line
        key="q"
        width={width}
        text={mode.busy ? 'saving…' : p.canSaveRules ? 'y append · n back' : 'saving rules is not available here · any key goes back'}
      />,
    );
  } else if (mode.name === 'confirm' || mode.name === 'writing') {
    const warnings = warningLines(mode.warnings, width);
    // the warnings follow the title: lines 1..warnings.length
    lines(keepLast(confirmation(view, mode, warnings, mode.name === 'writing'), height), (k) => ({
      bold: k === 0,
      color: k >= 1 && k <= warnings.length ? 'yellow' : undefined,
    }));
  } else if (mode.name === 'result') {
    lines(keepLast(resultLines(mode.result, width), height), (k) => ({ bold: k === 0, color: k === 0 ? 'green' : undefined }));
  } else if (mode.name === 'help') {
    const all = helpLines(width);
    const top = helpTop(mode.top, height, width);
    lines(all.slice(top, top + height), (k) => ({ bold: HELP_TITLES.has(all[top + k]) }));
  } else if (mode.name === 'quit') {
    lines(
      [
        'Quit without saving?',
        '',
        ...wrapWords(
          `${plural(mode.choices, 'choice')} of yours ${mode.choices === 1 ? 'is' : 'are'} not saved, neither as a layer nor as rules (w).`,
          width - 2,
        ).map((l) => `  ${l}`),
        '',
        'y quit · n back',
      ],
      (k) => ({ bold: k === 0 }),
    );
  }
  while (out.length < height) out.push(<Text key={`pad${out.length}`}> </Text>);
  out.length = Math.min(out.length, height);
  return out;
}

const HELP_TITLES = new Set(['Keys', 'While finding (/)', 'Marks', 'Kinds']);

/** The help overlay's text: the key tables of persist/keys.ts, then the legend. */
export function helpLines(width: number): string[] {
  const keyed = [...MOVE_KEYS, ...LIST_KEYS];
  const w = Math.max(...[...keyed, ...SEARCH_KEYS].map((b) => textWidth(b.keys)));
  // what a key does, wrapped below itself when the terminal is narrow
  const row = (keys: string, does: string) =>
    wrapWords(does, Math.max(10, width - w - 4)).map((l, k) => `  ${k ? ' '.repeat(w) : keys + ' '.repeat(w - textWidth(keys))}  ${l}`);
  return [
    'Keys',
    ...keyed.flatMap((b) => row(b.keys, b.does)),
    '',
    'While finding (/)',
    ...SEARCH_KEYS.flatMap((b) => row(b.keys, b.does)),
    '',
    'Marks',
    ...MARK_LEGEND.flatMap((m) => row(m.mark, m.means)),
    '',
    'Kinds',
    ...KIND_LEGEND.flatMap((k) => row(k.mark, k.means)),
  ];
}

/** The first line of the help shown in a window of `height` lines (scrolling stops at the end). */
export function helpTop(top: number, height: number, width: number): number {
  return Math.max(0, Math.min(top, helpLines(width).length - height));
}

/** The one-line legend shown until the first key press. */
export function legendHint(width: number): string {
  const long = `${MARK_LEGEND.map((m) => `${m.mark} ${m.means.split(':')[0]}`).join('  ')}  · F1: keys, and the letters`;
  return textWidth(long) <= width ? long : '[x] saved [ ] not [~] partly · F1 help';
}

/** At most `height` lines: short of room, blank lines go first, then the lines before the last (the question). */
function keepLast(texts: string[], height: number): string[] {
  if (texts.length <= height) return texts;
  const compact = texts.filter((l) => l !== '');
  if (compact.length <= height) return compact;
  return [...compact.slice(0, Math.max(0, height - 1)), compact[compact.length - 1]].slice(-height);
}

/** `text` in lines of at most `width` columns, broken at spaces (a longer word is cut later). */
function wrapWords(text: string, width: number): string[] {
  const out: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && textWidth(`${line} ${word}`) > width) {
      out.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) out.push(line);
  return out;
}

/** The target's warnings, wrapped: in the label column when there is room, else below the label. */
function warningLines(warnings: string[], width: number): string[] {
  const label = '  warning    ';
  return warnings.flatMap((w) =>
    width >= 70
      ? wrapWords(w, width - label.length).map((l, k) => (k ? ' '.repeat(label.length) : label) + l)
      : wrapWords(`warning: ${w}`, width - 2).map((l) => `  ${l}`),
  );
}

/** The confirm screen; the target's warnings (warningLines) come first, below the title: lines cut for room are the counts'. */
function confirmation(view: PersistView, m: { summary: Summary; counts: LayerCounts }, warnings: string[], writing: boolean): string[] {
  const skipped = view.scan.skipped.length;
  const s = m.summary;
  return [
    'Save a new persistence layer',
    ...warnings,
    ...countLines(m.counts),
    `  left out   ${plural(s.excluded, 'change')}, ${formatBytes(s.excludedBytes)}`,
    ...(skipped ? [`  skipped    ${plural(skipped, 'entry', 'entries')} that cannot be saved`] : []),
    '',
    writing ? 'writing…' : 'Save now? y yes · n back',
  ];
}

function resultLines(r: WriteResult, width: number): string[] {
  return [
    'Saved',
    `  layer      ${truncateMiddle(r.file, width - 13)}`,
    ...countLines(r.counts),
    `  compressed ${formatBytes(r.bytesOut)} (the layer file)`,
    '',
    ...newLayerNote(r.file.slice(r.file.lastIndexOf('/') + 1)),
    'Press any key to exit.',
  ];
}

/** The status line(s): a message, the search prompt, or where the cursor is. */
export function status(view: PersistView, mode: Mode, message: string[] | null, height: number, width: number): string[] {
  if (mode.name === 'search') return [`/${mode.query}▏ ${view.filter ? plural(view.filter.matches, 'match', 'matches') : ''}`];
  if (message?.length) return message.slice(0, height);
  if (mode.name !== 'main') return [''];
  const e = view.current >= 0 ? view.tree.entries[view.current] : null;
  const where = e
    ? `/${displayPath(e.path)}${e.type === 'dir' ? '/' : e.type === 'symlink' && e.target !== undefined ? ` -> ${displayPath(e.target)}` : ''}`
    : '';
  const filter = view.filter
    ? `[filter "${truncateMiddle(view.filter.query, 20)}": ${plural(view.filter.matches, 'match', 'matches')}, esc clears] `
    : '';
  return [filter + truncateMiddle(where, width - textWidth(filter))];
}

const HELP: Partial<Record<Mode['name'], string>> = {
  search: 'type to filter  ⏎ keep  esc clear  ↑↓ move',
  help: '↑↓ PgUp PgDn scroll  any other key closes',
};

/**
 * The footer of a mode: on the list, the hints of persist/keys.ts that fit `width`; on the help,
 * how much of it is below (`height`: the body's).
 */
export function help(mode: Mode, width: number, height: number): string {
  if (mode.name === 'main') return footerLine([...MOVE_KEYS, ...LIST_KEYS], width, textWidth);
  if (mode.name === 'help') {
    const below = helpLines(width).length - helpTop(mode.top, height, width) - height;
    const long = `↓ ${plural(below, 'more line')} (the legend is last)  ${HELP.help}`;
    if (below > 0) return textWidth(long) <= width ? long : `↓ ${below} more (legend last) · other keys close`;
  }
  return HELP[mode.name] ?? '';
}
