import { afterEach, describe, expect, jest, test } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { cleanup, render } from 'ink-testing-library';
import stringWidth from 'string-width';
import type { ChangeEntry, ChangeKind, Decision, EntryType, Rule, ScanResult } from '../../persist/model.js';
import { PersistApp, type PersistAppProps, type PersistOutcome } from '../../persist/tui.js';
import { footerLine, LIST_KEYS, MOVE_KEYS } from '../../persist/keys.js';
import { KIND_LEGEND } from '../../persist/rows.js';
import { layerCounts, type LayerCounts } from '../../persist/counts.js';
import { helpLines } from '../../persist/screens.js';
import { planLayer, type LayerPlan } from '../../persist/write.js';
import { changeEntry } from '../helpers/change-entry.js';

// --- a realistic upperdir after a day of use ------------------------------------------------

function entry(path: string, kind: ChangeKind, type: EntryType = 'file', size = 0, extra: Partial<ChangeEntry> = {}): ChangeEntry {
  return changeEntry(path, kind, type, size, { mtime: 1700000000, ...extra });
}

const LONG_DIR = 'home/alice/projects/some-really-long-directory-name-for-testing-truncation/another-deeply-nested-folder';
const LONG_FILE = `${LONG_DIR}/with-a-file-name-that-is-way-too-long-to-fit-in-eighty-columns-of-terminal.txt`;

function baseEntries(): ChangeEntry[] {
  const list: ChangeEntry[] = [
    entry('etc', 'container', 'dir'),
    entry('etc/apt', 'container', 'dir'),
    entry('etc/apt/sources.list.d', 'container', 'dir'),
    entry('etc/apt/sources.list.d/extra.list', 'added', 'file', 120),
    entry('etc/hostname', 'modified', 'file', 10),
    entry('etc/machine-id', 'modified', 'file', 33),
    entry('etc/motd', 'deleted', 'whiteout'),
    entry('etc/resolv.conf', 'modified', 'symlink', 39, { target: '../run/systemd/resolve/stub-resolv.conf' }),
    entry('etc/ssh', 'container', 'dir'),
    entry('etc/ssh/ssh_host_ed25519_key', 'added', 'file', 411),
    entry('etc/ssh/ssh_host_ed25519_key.pub', 'added', 'file', 103),
    entry('etc/ssh/sshd_config', 'metadata', 'file', 3223),
    entry('home', 'container', 'dir'),
    entry('home/alice', 'added', 'dir'),
    entry('home/alice/.bash_history', 'added', 'file', 2048),
    entry('home/alice/.bashrc', 'added', 'file', 3771),
    entry('home/alice/.cache', 'added', 'dir'),
    entry('home/alice/.cache/big.bin', 'added', 'file', 50 * 1024 * 1024),
    entry('home/alice/projects', 'added', 'dir'),
    entry('home/alice/projects/some-really-long-directory-name-for-testing-truncation', 'added', 'dir'),
    entry(LONG_DIR, 'added', 'dir'),
    entry(LONG_FILE, 'added', 'file', 12345),
    entry('root', 'container', 'dir'),
    entry('root/.bash_history', 'added', 'file', 900),
    entry('tmp', 'container', 'dir'),
    entry('tmp/junk.tar', 'added', 'file', 4 * 1024 * 1024),
    entry('var', 'container', 'dir'),
    entry('var/cache', 'container', 'dir'),
    entry('var/cache/apt', 'replaced', 'dir'),
    entry('var/cache/apt/pkgcache.bin', 'added', 'file', 30 * 1024 * 1024),
    entry('var/lib', 'container', 'dir'),
    entry('var/lib/dpkg', 'container', 'dir'),
    entry('var/lib/dpkg/status', 'modified', 'file', 512 * 1024),
    entry('var/log', 'container', 'dir'),
    entry('var/log/journal', 'added', 'dir'),
    entry('var/log/journal/system.journal', 'added', 'file', 8 * 1024 * 1024),
  ];
  return list;
}

function scanOf(entries: ChangeEntry[]): ScanResult {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return {
    upper: '/overlay/fresh',
    lower: '/overlay/base',
    entries: sorted,
    skipped: [{ path: 'run/foo.sock', reason: 'socket' }],
    stats: { entries: sorted.length, bytes: sorted.reduce((a, e) => a + e.size, 0), scanMs: 12 },
  };
}

const RULES: Rule[] = [
  { pattern: '/tmp', include: false, source: 'default' },
  { pattern: '/var/cache', include: false, source: 'default' },
  { pattern: '.cache', include: false, source: '/etc/mkma/persist.rules:3' },
  { pattern: '/etc/ssh', include: true, source: '/etc/mkma/persist.rules:7' },
];

/** A stand-in for rules.ts: anchored patterns cover their subtree, others match a path segment. */
function decideRule(e: ChangeEntry): Decision {
  let d: Decision = { included: true, rule: null };
  for (const r of RULES) {
    const hit = r.pattern.startsWith('/')
      ? e.path === r.pattern.slice(1) || e.path.startsWith(`${r.pattern.slice(1)}/`)
      : e.path.split('/').includes(r.pattern);
    if (hit) d = { included: r.include, rule: r };
  }
  return d;
}

// --- helpers ----------------------------------------------------------------------------------

const KEY = {
  up: '\u001B[A',
  down: '\u001B[B',
  right: '\u001B[C',
  left: '\u001B[D',
  pgdn: '\u001B[6~',
  pgup: '\u001B[5~',
  home: '\u001B[H',
  end: '\u001B[F',
  esc: '\u001B',
  enter: '\r',
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// eslint-disable-next-line no-control-regex
const strip = (s: string) => s.replace(/\u001B\[[0-9;]*m/g, '');

type WriteResult = { file: string; counts: LayerCounts; bytesOut: number };

function setup(over: Partial<PersistAppProps> = {}) {
  const outcome: PersistOutcome[] = [];
  const onConfirm = jest.fn(
    // as cli/persist-cmd.ts: the counts of the plan it was given and written
    async (_include: (e: ChangeEntry) => boolean, plan: LayerPlan): Promise<WriteResult> => ({
      file: '/persist/layers/0003-20250101-120000.mkl',
      counts: layerCounts(plan),
      bytesOut: Math.round(plan.bytes / 3),
    }),
  );
  const saveRules = jest.fn(async (_lines: string[]) => {});
  const props: PersistAppProps = {
    scan: scanOf(baseEntries()),
    decideRule,
    rulesFile: '/etc/mkma/persist.rules',
    saveRules,
    onConfirm,
    width: 80,
    height: 24,
    onExit: (o) => outcome.push(o),
    ...over,
  };
  const app = render(<PersistApp {...props} />);
  const frame = () => strip(app.lastFrame() ?? '');
  const lines = () => frame().split('\n');
  const press = async (...keys: string[]) => {
    for (const k of keys) {
      app.stdin.write(k);
      await sleep(25);
    }
  };
  const type = async (text: string) => {
    for (const ch of text) await press(ch);
  };
  /** the row of the list that shows `name` */
  const rowWith = (name: string) => lines().find((l) => l.includes(` ${name}`)) ?? '';
  const cursorRow = () => lines().find((l) => l.startsWith('>')) ?? '';
  return { app, frame, lines, press, type, rowWith, cursorRow, onConfirm, saveRules, outcome, props };
}

/**
 * Runs `check` until it passes, at most 2 s: Ink draws a key's frame asynchronously, and on a
 * loaded machine that can take longer than press' pause.
 */
async function eventually(check: () => void, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      check();
      return;
    } catch (e) {
      if (Date.now() > end) throw e;
    }
    await sleep(10);
  }
}

function header(lines: string[]) {
  return lines[0];
}

async function moveTo(t: ReturnType<typeof setup>, name: string) {
  for (let k = 0; k < 60 && !t.cursorRow().includes(` ${name}`); k++) await t.press(KEY.down);
  expect(t.cursorRow()).toContain(` ${name}`);
}

afterEach(() => {
  cleanup();
});

// --- tests --------------------------------------------------------------------------------------

describe('PersistApp', () => {
  test('main screen at 80x24: header, tree, status, help; no line over 80 columns', async () => {
    const t = setup();
    await sleep(30);
    const lines = t.lines();
    if (process.env.PERSIST_SCREENSHOT) console.log(`${lines.join('\n')}`);
    expect(lines.length).toBe(23); // one short of the terminal: Ink redraws in place
    for (const l of lines) expect([...l].length).toBeLessThanOrEqual(80);
    // 24 changes; saved: all but tmp/junk.tar, var/cache/apt(+pkgcache), .cache(+big.bin)
    expect(header(lines)).toBe('/overlay/fresh: 24 changes · save 19 (8.5 MiB of 93 MiB) · 1 skipped');
    expect(header(lines)).toContain('1 skipped');
    expect(lines[1]).toMatch(/^> ▾ \[x\] {3}etc\/ +/);
    expect(t.rowWith('apt/')).toMatch(/▸ \[x\] {3}apt\//);
    expect(t.rowWith('motd')).toMatch(/\[x\] D motd/);
    expect(t.rowWith('hostname')).toMatch(/\[x\] M hostname +10 B$/);
    expect(t.rowWith('resolv.conf')).toContain('M resolv.conf -> ../run/systemd/resolve/stub-resolv.conf');
    expect(t.rowWith('tmp/')).toMatch(/▾ \[ \] {3}tmp\/ +4\.0 MiB$/);
    expect(t.rowWith('home/')).toMatch(/\[~\]/);
    // the footer names F1; r rescan (the lowest of the hints) does not fit next to it
    expect(lines[lines.length - 1]).toBe('↑↓←→ move/fold  space toggle  / find  ? why  w rules  F1 help  ⏎ save  q quit');
    // until the first key: the legend hint, then where the cursor is
    expect(lines[lines.length - 2]).toBe('[x] saved  [ ] not saved  [~] partly  · F1: keys, and the letters');
    await t.press(KEY.down, KEY.up);
    await eventually(() => expect(t.lines().at(-2)).toBe('/etc/'));
  });

  test('F1 and H open the help, drawn from the key table, with the legend; it scrolls and any other key closes it', async () => {
    const t = setup();
    await t.press('\u001BOP'); // F1 as xterm sends it
    await eventually(() => expect(t.frame()).toContain('this help'));
    let f = t.frame();
    expect(f).toContain('Keys');
    // every key of persist/keys.ts, with what it does
    expect(t.lines()[1]).toBe('Keys');
    if (process.env.PERSIST_SCREENSHOT) console.log(f);
    expect(f).toMatch(/^ {2}↑ {6}up$/m);
    expect(f).toMatch(/^ {2}F1 H {3}this help: the keys, and what the marks and letters mean/m);
    // more help than room (20 lines of body): the footer says how much is below
    const below = helpLines(80).length - 20;
    expect(below).toBeGreaterThan(1);
    expect(t.lines().at(-1)).toBe(`↓ ${below} more lines (the legend is last)  ↑↓ PgUp PgDn scroll  any other key closes`);
    for (const l of t.lines()) expect(stringWidth(l)).toBeLessThanOrEqual(80);
    // all of it, scrolling down a line at a time
    const seen = new Set<string>(t.lines().slice(1, -2));
    for (let k = 0; k < 40; k++) {
      await t.press(KEY.down);
      for (const l of t.lines().slice(1, -2)) seen.add(l.trimEnd());
    }
    const text = [...seen].join('\n');
    for (const b of [...MOVE_KEYS, ...LIST_KEYS]) expect(text).toContain(`${b.keys}`);
    for (const b of [...MOVE_KEYS, ...LIST_KEYS]) expect(text).toContain(b.does);
    expect(text).toMatch(/^ {2}\[x\] +saved$/m);
    expect(text).toMatch(/^ {2}\[ \] +not saved$/m);
    expect(text).toMatch(/^ {2}\[~\] +partly: some of what is below is saved$/m);
    for (const [mark, means] of [
      ['A', 'added'],
      ['M', 'modified \\(contents\\)'],
      ['P', 'properties only'],
      ['D', 'deleted'],
      ['R', 'replaced directory'],
    ])
      expect(text).toMatch(new RegExp(`^ {2}${mark} +${means}`, 'm'));
    // no two kind letters differ only by case
    const letters = KIND_LEGEND.map((k) => k.mark.toLowerCase());
    expect(new Set(letters).size).toBe(letters.length);
    // the last line stays at the bottom: scrolling stops there
    expect(t.lines().at(-1)).toBe('↑↓ PgUp PgDn scroll  any other key closes');
    expect(t.lines().at(-3)).toMatch(/^ {2}R +replaced directory/);
    await t.press('x'); // any other key closes
    await eventually(() => expect(t.frame()).toContain('space toggle'));
    expect(t.cursorRow()).toContain(' etc/');
    await t.press('H');
    await eventually(() => expect(t.frame()).toContain('this help'));
    f = t.frame();
    expect(f).toContain('this help');
    await t.press(KEY.esc);
    await eventually(() => expect(t.frame()).not.toContain('this help'));
    expect(t.outcome).toEqual([]);
  });

  test('at 50 columns: the footer keeps help, save and quit; the legend hint is short', async () => {
    const t = setup({ width: 50, height: 14 });
    await sleep(30);
    const lines = t.lines();
    expect(lines.length).toBe(13);
    for (const l of lines) expect(stringWidth(l)).toBeLessThanOrEqual(50);
    expect(lines.at(-1)!.trimEnd()).toBe('space toggle  / find  F1 help  ⏎ save  q quit');
    expect(lines.at(-2)!.trimEnd()).toBe('[x] saved [ ] not [~] partly · F1 help');
    await t.press('\u001B[11~'); // F1 as rxvt sends it
    await eventually(() => expect(t.frame()).toContain('Keys'));
    for (const l of t.lines()) expect(stringWidth(l)).toBeLessThanOrEqual(50);
    // what a key does wraps below itself: nothing is cut
    expect(t.frame()).toMatch(/^ {2}F1 H {3}this help: the keys, and what the marks$/m);
    expect(t.frame()).toMatch(/^ {9}and letters mean$/m);
    expect(t.lines().at(-1)).toMatch(/^↓ \d+ more \(legend last\) · other keys close$/);
    for (let k = 0; k < 6; k++) await t.press(KEY.pgdn);
    await eventually(() => expect(t.lines().at(-1)).toBe('↑↓ PgUp PgDn scroll  any other key closes'));
    expect(t.lines().slice(-4, -2)).toEqual(['  R      replaced directory (its old contents are', '         dropped)']);
    await t.press('q');
    await eventually(() => expect(t.frame()).toContain('F1 help'));
    expect(t.outcome).toEqual([]);
  });

  test('NO_COLOR (any non-empty value) removes every colour; bold and inverse stay', async () => {
    // eslint-disable-next-line no-control-regex
    const colours = (s: string) => s.match(/\u001B\[(?:2|3[0-79]|9[0-7]|4[0-79]|10[0-7])m/g) ?? [];
    const screens = async () => {
      const t = setup();
      const out = [t.app.lastFrame() ?? ''];
      await t.press('\u001BOP');
      await eventually(() => expect(t.frame()).toContain('this help'));
      out.push(t.app.lastFrame() ?? '');
      await t.press('q', KEY.enter);
      await eventually(() => expect(t.frame()).toContain('Save now?'));
      out.push(t.app.lastFrame() ?? '');
      await t.press('n', ' ', 'q');
      await eventually(() => expect(t.frame()).toContain('Quit without saving?'));
      out.push(t.app.lastFrame() ?? '');
      cleanup();
      return out.join('\n');
    };
    // Ink's own chalk (not the one a test would import by name), at full colour: under jest
    // stdout is no terminal and chalk's level is 0
    const inkChalk = createRequire(join(process.cwd(), 'node_modules/ink/package.json')).resolve('chalk');
    const chalk = ((await import(pathToFileURL(inkChalk).href)) as { default: { level: number } }).default;
    const level = chalk.level;
    chalk.level = 3;
    const saved = process.env.NO_COLOR;
    try {
      delete process.env.NO_COLOR;
      const coloured = await screens();
      expect(colours(coloured).length).toBeGreaterThan(0); // the test can fail: colour is on by default
      for (const value of ['1', 'yes']) {
        process.env.NO_COLOR = value;
        const plain = await screens();
        expect(colours(plain)).toEqual([]);
        expect(plain).toContain('\u001B[7m'); // the cursor's row: inverse, not a colour
        expect(plain).toContain('\u001B[1m'); // titles: bold
        expect(strip(plain)).toContain('Quit without saving?');
      }
      process.env.NO_COLOR = '';
      expect(colours(await screens()).length).toBeGreaterThan(0); // empty: as if unset
    } finally {
      chalk.level = level;
      if (saved === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = saved;
    }
  });

  test('the footer never cuts save or quit, down to the width of those two', () => {
    for (let w = 16; w <= 120; w++) {
      const line = footerLine([...MOVE_KEYS, ...LIST_KEYS], w, stringWidth);
      expect(line).toMatch(/⏎ save {2}q quit$/);
      expect(stringWidth(line)).toBeLessThanOrEqual(Math.max(w, stringWidth('F1 help  ⏎ save  q quit')));
    }
  });

  test('move, fold and unfold; ← on a child goes to the parent', async () => {
    const t = setup();
    await t.press(KEY.down);
    expect(t.cursorRow()).toContain(' apt/');
    expect(t.rowWith('sources.list.d/')).toBe('');
    await t.press(KEY.right);
    expect(t.cursorRow()).toContain('▾ [x]   apt/');
    expect(t.rowWith('sources.list.d/')).toContain('▸');
    await t.press('l', 'l', 'l'); // unfold sources.list.d? no: first l goes to the child, next unfolds it, next enters
    expect(t.cursorRow()).toContain('A extra.list');
    await t.press('h'); // leaf: to parent
    expect(t.cursorRow()).toContain(' sources.list.d/');
    await t.press(KEY.left); // fold it
    expect(t.rowWith('extra.list')).toBe('');
    await t.press('k', 'j', 'j');
    expect(t.cursorRow()).toContain(' hostname');
    await t.press(KEY.end);
    expect(t.cursorRow()).toContain(' log/');
    await t.press(KEY.home);
    expect(t.cursorRow()).toContain(' etc/');
    await t.press(KEY.left); // fold etc
    expect(t.rowWith('hostname')).toBe('');
    expect(t.lines()[2]).toContain(' home/');
    await t.press(KEY.pgdn);
    expect(t.cursorRow()).toContain(' log/');
    await t.press(KEY.pgup);
    expect(t.cursorRow()).toContain(' etc/');
  });

  test('space excludes a subtree: header total and confirm numbers; Enter → y writes without it', async () => {
    const t = setup();
    expect(header(t.lines())).toContain('save 19 (8.5 MiB of');
    await moveTo(t, 'ssh/');
    await t.press(' ');
    expect(t.cursorRow()).toMatch(/\[ \] {3}ssh\//);
    expect(header(t.lines())).toContain('save 16 (8.5 MiB of');
    expect(t.rowWith('etc/')).toContain('[~]');
    expect(t.lines().at(-2)).toContain('/etc/ssh/: not saved (your choice)');

    await t.press(KEY.enter);
    await eventually(() => expect(t.frame()).toContain('Save now?'));
    const confirm = t.frame();
    expect(confirm).toContain('Save a new persistence layer');
    // 16 changes; in the layer: 15 of them (the deleted motd is a whiteout, no entry) + the
    // folders on the way that are not changes: etc, etc/apt, etc/apt/sources.list.d, home,
    // root, var, var/lib, var/lib/dpkg, var/log
    const counted = [
      '  changes    16 saved',
      '  entries    24 incl. parent directories',
      '  deletes    1 path, replaces 0 directories',
      '  size       8.5 MiB before compression',
    ];
    expect(t.lines().slice(2, 6)).toEqual(counted);
    expect(confirm).toMatch(/left out +8 changes, 84 MiB/);
    expect(confirm).toMatch(/skipped +1 entry that cannot be saved/);
    for (const l of t.lines()) expect([...l].length).toBeLessThanOrEqual(80);
    // n goes back
    await t.press('n');
    expect(t.frame()).not.toContain('Save a new persistence layer');
    await t.press(KEY.enter, 'y');
    await sleep(30);
    expect(t.onConfirm).toHaveBeenCalledTimes(1);
    const [include, plan] = t.onConfirm.mock.calls[0];
    const all = t.props.scan.entries;
    const byPath = (p: string) => all.find((e) => e.path === p)!;
    expect(include(byPath('etc/ssh/ssh_host_ed25519_key'))).toBe(false);
    expect(include(byPath('etc/ssh/sshd_config'))).toBe(false);
    expect(include(byPath('etc/ssh'))).toBe(false);
    expect(include(byPath('etc/hostname'))).toBe(true);
    expect(include(byPath('etc/motd'))).toBe(true);
    expect(include(byPath('etc'))).toBe(true);
    expect(include(byPath('tmp/junk.tar'))).toBe(false);
    expect(include(byPath('tmp'))).toBe(false);
    expect(include(byPath('var/cache/apt'))).toBe(false);
    expect(include(byPath(LONG_FILE))).toBe(true);
    // the plan confirmed is the plan written (persist/write.ts' planLayer of the same choice)
    expect(plan).toEqual(planLayer(t.props.scan, include));
    expect(plan.write.length).toBe(24);
    await eventually(() => expect(t.frame()).toContain('Press any key to exit.'));
    const result = t.frame();
    expect(result).toContain('Saved');
    expect(result).toContain('0003-20250101-120000.mkl');
    // the same counts, in the same words, as on the confirm screen; the compressed size apart
    expect(t.lines().slice(3, 7)).toEqual(counted);
    expect(t.lines()[7]).toBe('  compressed 2.8 MiB (the layer file)');
    expect(t.outcome).toEqual([]);
    await t.press('x');
    expect(t.outcome).toEqual(['saved']);
  });

  test("the target's warnings show on the confirm screen, wrapped; at 50x14 the question stays", async () => {
    const warning = '/srv/x holds no base.cpio.zst: the layer is written there, but nothing will boot it from there';
    const targetWarnings = jest.fn(() => [warning]);
    const t = setup({ targetWarnings });
    expect(targetWarnings).not.toHaveBeenCalled();
    await t.press(KEY.enter);
    await eventually(() => expect(t.frame()).toContain('Save now?'));
    expect(targetWarnings).toHaveBeenCalledTimes(1);
    const lines = t.lines();
    expect(lines[1]).toBe('Save a new persistence layer');
    expect(lines[2]).toBe('  warning    /srv/x holds no base.cpio.zst: the layer is written there, but');
    expect(lines[3]).toBe('             nothing will boot it from there');
    expect(lines[4]).toBe('  changes    19 saved');
    expect(t.frame()).toContain('Save now? y yes · n back');

    const n = setup({ targetWarnings, width: 50, height: 14 });
    await n.press(KEY.enter);
    await eventually(() => expect(n.frame()).toContain('Save now?'));
    const small = n.lines();
    expect(small).toHaveLength(13);
    for (const l of small) expect(stringWidth(l)).toBeLessThanOrEqual(50);
    // the whole warning, in the lines of 50 columns; then the counts (blank lines gave way)
    expect(
      small
        .slice(2, 5)
        .map((l) => l.trim())
        .join(' '),
    ).toBe(`warning: ${warning}`);
    expect(small.slice(5, 11)).toEqual([
      '  changes    19 saved',
      '  entries    28 incl. parent directories',
      '  deletes    1 path, replaces 0 directories',
      '  size       8.5 MiB before compression',
      '  left out   5 changes, 84 MiB',
      'Save now? y yes · n back',
    ]);
    await n.press('y');
    await sleep(30);
    // the result at 50x14: every count and the key to exit fit
    expect(n.lines().slice(3, 8)).toEqual([
      '  changes    19 saved',
      '  entries    28 incl. parent directories',
      '  deletes    1 path, replaces 0 directories',
      '  size       8.5 MiB before compression',
      '  compressed 2.8 MiB (the layer file)',
    ]);
    expect(n.frame()).toContain('Press any key to exit.');
  });

  test('writing shows progress; a failure goes back to the list', async () => {
    let fail: (e: Error) => void = () => {};
    const onConfirm = jest.fn(() => new Promise<WriteResult>((_, reject) => (fail = reject)));
    const t = setup({ onConfirm });
    await t.press(KEY.enter, 'y');
    expect(t.frame()).toContain('writing…');
    await t.press('q'); // ignored while writing
    expect(t.outcome).toEqual([]);
    fail(new Error('disk full'));
    await sleep(30);
    expect(t.frame()).toContain('writing failed: disk full');
    expect(t.cursorRow()).toContain(' etc/');
  });

  test('search: filter as you type, Enter keeps it, Esc clears it', async () => {
    const t = setup();
    await t.press('/');
    await t.type('journal');
    let lines = t.lines();
    expect(lines.at(-2)).toMatch(/^\/journal▏ 2 matches/);
    expect(t.rowWith('etc/')).toBe('');
    expect(t.rowWith('var/')).toContain('▾');
    expect(t.rowWith('system.journal')).toContain('A system.journal');
    expect(t.cursorRow()).toContain(' journal/');
    await t.press(KEY.enter);
    lines = t.lines();
    expect(lines.at(-2)).toMatch(/^\[filter "journal": 2 matches, esc clears\] \/var\/log\/journal\//);
    // still filtered after moving; space works on the filtered rows
    await t.press(KEY.down);
    expect(t.cursorRow()).toContain('system.journal');
    await t.press(KEY.esc);
    expect(t.lines().at(-2)).not.toContain('filter');
    expect(t.rowWith('etc/')).not.toBe('');
    // the found entry stays under the cursor
    expect(t.cursorRow()).toContain('system.journal');
    // Esc while typing clears too; backspace edits
    await t.press('/');
    await t.type('zzz');
    expect(t.frame()).toContain('nothing matches "zzz"');
    await t.press('\u007F', '\u007F', '\u007F');
    expect(t.rowWith('etc/')).not.toBe('');
    await t.type('ssh');
    await t.press(KEY.esc);
    expect(t.rowWith('home/')).not.toBe('');
  });

  test('? explains the decision: rule with its source, your choice, container', async () => {
    const t = setup();
    await t.press('?');
    expect(t.lines().slice(-3, -1)).toEqual(['/etc/: folder', 'not a change itself: 8 of 8 changes below are saved']);
    await moveTo(t, 'tmp/');
    await t.press(KEY.down, '?');
    let text = t.frame();
    expect(text).toContain('/tmp/junk.tar: added file');
    expect(text).toContain('not saved: rule /tmp');
    expect(text).toContain('from default');
    await t.press(' ', '?');
    text = t.frame();
    expect(text).toContain('saved: your choice');
    expect(text).toContain('the rules say skip: /tmp (default)');
    await t.press(KEY.home);
    await moveTo(t, 'ssh/');
    await t.press(KEY.right, KEY.right);
    expect(t.cursorRow()).toContain(' ssh_host_ed25519_key ');
    await t.press('?');
    expect(t.frame()).toContain('from /etc/mkma/persist.rules:7');
    expect(t.frame()).toContain('saved: rule !/etc/ssh');
    // the explanation lines are gone after the next key, and never wider than 80
    for (const l of t.lines()) expect([...l].length).toBeLessThanOrEqual(80);
    await t.press(KEY.down);
    expect(t.frame()).not.toContain('from /etc/mkma/persist.rules:7');
  });

  test('w shows the rule lines (rules.ts writes them) and calls saveRules on y', async () => {
    const t = setup();
    await t.press('w');
    expect(t.frame()).toContain('no choices of yours to save as rules');
    await t.press(' '); // etc/: exclude
    await moveTo(t, 'tmp/');
    await t.press(' '); // tmp/: include
    await t.press('w');
    const text = t.frame();
    expect(text).toContain('Append 2 lines to /etc/mkma/persist.rules?');
    // a rule on a directory covers everything below it (rules.ts): no "/**" line needed
    expect(text).toContain('  /etc\n  !/tmp\n');
    await t.press('y');
    await sleep(20);
    expect(t.saveRules).toHaveBeenCalledWith(['/etc', '!/tmp']);
    expect(t.frame()).toContain('appended 2 lines to /etc/mkma/persist.rules');
    await t.press('w'); // nothing new to append
    expect(t.frame()).toContain('these choices are already in /etc/mkma/persist.rules');
    expect(t.saveRules).toHaveBeenCalledTimes(1);
  });

  test('w uses rulesFromOverrides when given; n goes back without saving', async () => {
    const rulesFromOverrides = jest.fn((o: Map<string, boolean>) => [...o].map(([p, inc]) => `${inc ? '!' : ''}/${p}  # custom`));
    const t = setup({ rulesFromOverrides });
    await moveTo(t, 'tmp/');
    await t.press(' ', 'w');
    expect(t.frame()).toContain('!/tmp  # custom');
    await t.press('n');
    expect(t.saveRules).not.toHaveBeenCalled();
    expect(t.frame()).toContain('space toggle');
  });

  test('nothing chosen: Enter says there is nothing to save, asks nothing and writes nothing', async () => {
    const t = setup({ decideRule: (): Decision => ({ included: false, rule: null }) });
    await t.press(KEY.enter);
    expect(t.frame()).not.toContain('Save a new persistence layer');
    expect(t.frame()).toContain('nothing to save: no change is chosen, so no layer is written');
    await t.press('y');
    await sleep(30);
    expect(t.onConfirm).not.toHaveBeenCalled();
    await t.press('q');
    expect(t.outcome).toEqual(['cancelled']);
    t.app.unmount();
  });

  test('q and Ctrl-C quit at once with "cancelled" when there are no choices to lose', async () => {
    const t = setup();
    await t.press('q');
    expect(t.outcome).toEqual(['cancelled']);
    const t2 = setup();
    await t2.press('\u0003');
    expect(t2.outcome).toEqual(['cancelled']);
    expect(t.onConfirm).not.toHaveBeenCalled();
  });

  test('q or Ctrl-C with choices not saved asks first: n goes back, y (or a second Ctrl-C) quits', async () => {
    for (const width of [80, 50]) {
      const t = setup({ width, height: width === 80 ? 24 : 14 });
      await moveTo(t, 'hostname');
      await t.press(' ');
      await t.press('q');
      await eventually(() => expect(t.frame()).toContain('Quit without saving?'));
      expect(t.outcome).toEqual([]);
      expect(t.frame()).toContain('1 choice of yours is not saved');
      expect(t.lines().some((l) => l.startsWith('y quit · n back'))).toBe(true);
      for (const l of t.lines()) expect(stringWidth(l)).toBeLessThanOrEqual(width);
      await t.press('n');
      await eventually(() => expect(t.cursorRow()).toContain(' hostname'));
      await t.press('\u0003');
      await eventually(() => expect(t.frame()).toContain('Quit without saving?'));
      await t.press(KEY.esc);
      await eventually(() => expect(t.frame()).not.toContain('Quit without saving?'));
      await t.press('q', 'y');
      await eventually(() => expect(t.outcome).toEqual(['cancelled']));
    }
    const t = setup();
    await t.press('A', '\u0003', '\u0003');
    await eventually(() => expect(t.outcome).toEqual(['cancelled']));
    expect(t.onConfirm).not.toHaveBeenCalled();
  });

  test('choices saved as rules (w, y), or undone (U), quit at once', async () => {
    const t = setup();
    await moveTo(t, 'hostname');
    await t.press(' ', 'w', 'y');
    await eventually(() => expect(t.saveRules).toHaveBeenCalledTimes(1));
    await t.press('q');
    await eventually(() => expect(t.outcome).toEqual(['cancelled']));
    // a choice after saving the rules: only it counts as not saved
    const t3 = setup();
    await moveTo(t3, 'hostname');
    await t3.press(' ', 'w', 'y', KEY.down, ' ', 'q');
    await eventually(() => expect(t3.frame()).toContain('1 choice of yours is not saved'));
    await t3.press('y');
    await eventually(() => expect(t3.outcome).toEqual(['cancelled']));
    const t2 = setup();
    await t2.press('N', 'U', 'q');
    expect(t2.outcome).toEqual(['cancelled']);
  });

  test('r rescans: a new entry appears, the choices and the cursor stay', async () => {
    let entries = baseEntries();
    const rescan = jest.fn(() => scanOf(entries));
    const t = setup({ rescan });
    await moveTo(t, 'home/');
    await t.press(KEY.right); // alice/
    expect(t.cursorRow()).toContain(' alice/');
    expect(t.cursorRow()).toContain('[~]'); // .cache is left out by a rule
    await t.press(' ', ' '); // partly → all → none
    expect(t.cursorRow()).toContain('[ ]');
    expect(header(t.lines())).toContain('save 12 (');
    entries = [...entries, entry('home/alice/notes.txt', 'added', 'file', 999), entry('etc/new.conf', 'added', 'file', 5)];
    await t.press('r');
    await sleep(30);
    expect(rescan).toHaveBeenCalledTimes(1);
    expect(t.frame()).toContain('rescanned: +2 −0');
    expect(t.cursorRow()).toContain(' alice/');
    expect(t.cursorRow()).toContain('[ ]'); // notes.txt is under the excluded alice/
    expect(header(t.lines())).toMatch(/^\/overlay\/fresh: 26 changes · save 13 \(/);
    expect(t.rowWith('new.conf')).toContain('[x] A new.conf');
  });

  test('live refresh: a change in watchPath rescans while open', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mkma-tui-'));
    try {
      let entries = baseEntries();
      const rescan = jest.fn(async () => scanOf(entries));
      const t = setup({ rescan, watchPath: dir, debounceMs: 50 });
      await moveTo(t, 'tmp/');
      await t.press(' '); // include tmp (rule says no)
      await sleep(300); // watcher ready
      entries = [...entries, entry('tmp/later.txt', 'added', 'file', 77)];
      writeFileSync(join(dir, 'later.txt'), 'x');
      for (let k = 0; k < 100 && rescan.mock.calls.length === 0; k++) await sleep(50);
      await sleep(50);
      expect(rescan).toHaveBeenCalled();
      expect(t.frame()).toContain('changed on disk, rescanned: +1 −0');
      expect(t.rowWith('later.txt')).toContain('[x] A later.txt'); // the choice on tmp/ covers it
      expect(t.cursorRow()).toContain(' tmp/');
    } finally {
      cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a long path never makes a line wider than 80 columns', async () => {
    const t = setup();
    await moveTo(t, 'home/');
    await t.press('+'); // unfold everything
    await moveTo(t, 'with-a-file');
    const lines = t.lines();
    for (const l of lines) expect([...l].length).toBeLessThanOrEqual(80);
    expect(t.cursorRow()).toMatch(/A with-a-file-name.*….*terminal\.txt +12 KiB$/);
    expect(lines.at(-2)).toMatch(/^\/home\/alice\/projects.*….*eighty-columns-of-terminal\.txt *$/);
    await t.press('?');
    for (const l of t.lines()) expect([...l].length).toBeLessThanOrEqual(80);
  });

  test('names with emoji, wide CJK characters and combining accents keep the size column at 80 columns', async () => {
    // paths are raw bytes (latin1 strings), as the scan reads them
    const raw = (utf8: string) => Buffer.from(utf8, 'utf8').toString('latin1');
    // (in the list's order: by bytes)
    const names = [
      'cafe\u0301-menu.txt',
      '日本語のメモ.txt',
      '🚀 launch-notes.txt',
      '🚀🚀 日本 café\u0301 — a name long enough to be cut in the middle.txt',
    ];
    const t = setup({
      scan: scanOf([
        ...baseEntries(),
        entry('srv', 'added', 'dir'),
        ...names.map((n, k) => entry(raw(`srv/${n}`), 'added', 'file', 12345 + k)),
      ]),
    });
    for (const n of names) {
      await moveTo(t, n.slice(0, 4));
      const row = t.cursorRow();
      expect(row).toMatch(/ 12 KiB$/); // the whole size column, at the end of the row
      expect(stringWidth(row)).toBe(80);
    }
    for (const l of t.lines()) expect(stringWidth(l)).toBeLessThanOrEqual(80);
  });

  test('100k entries: keys stay quick', async () => {
    const big: ChangeEntry[] = [];
    for (let a = 0; a < 10; a++) {
      big.push(entry(`d${a}`, 'container', 'dir'));
      for (let b = 0; b < 100; b++) {
        big.push(entry(`d${a}/s${String(b).padStart(3, '0')}`, 'added', 'dir'));
        for (let c = 0; c < 100; c++) big.push(entry(`d${a}/s${String(b).padStart(3, '0')}/f${c}`, 'added', 'file', 100));
      }
    }
    const t = setup({ scan: scanOf(big) });
    await sleep(30);
    const t0 = performance.now();
    await t.press(' ', KEY.down, KEY.right, KEY.pgdn, ' ', KEY.end, KEY.home, '+', KEY.end);
    const per = (performance.now() - t0) / 9;
    expect(t.cursorRow()).toContain(' f99');
    expect(per).toBeLessThan(200);
    expect(t.lines().length).toBe(23);
  });
});
