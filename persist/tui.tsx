// `mkma persist`'s terminal UI: the tree of changes since boot (the overlay's upperdir), what will
// be saved, the owner's choices, and the confirm → write → result screens. The state lives in
// persist/view.ts, the screens are drawn by persist/screens.tsx, the list's keys are a table in
// persist/keys.ts; this file holds the mode, dispatches keys, and rescans (on `r`, and live when
// the upperdir changes). A new screen is a Mode, its drawing in screens.tsx, and its keys here.
//
// The output is one line shorter than the terminal so that Ink redraws in place.

import { useEffect, useRef, useState } from 'react';
import { Box, render, useApp, useInput, useStdin, useStdout } from 'ink';
import { watch } from 'chokidar';
import type { ChangeEntry, Decision, Include, Overrides, ScanResult } from './model.js';
import { rulesFromOverrides } from './rules.js';
import type { Summary } from './inclusion.js';
import { layerCounts, type LayerCounts } from './counts.js';
import { planLayer, type LayerPlan } from './write.js';
import { body, header, help, helpTop, legendHint, Line, plural, status, type Mode, type WriteResult } from './screens.js';
import { LIST_KEYS, MOVE_KEYS } from './keys.js';
import { PersistView } from './view.js';

export interface PersistTuiOptions {
  scan: ScanResult;
  /** the rules' decision for one entry (rules.ts' matchRules, bound to the rules in effect) */
  decideRule: (e: ChangeEntry) => Decision;
  /** scans the upperdir again: `r`, and live refresh with watchPath */
  rescan?: () => Promise<ScanResult> | ScanResult;
  /** upperdir, watched with chokidar for live refresh */
  watchPath?: string;
  /** where `w` appends the user's choices as rules */
  rulesFile: string;
  saveRules?: (lines: string[]) => Promise<void> | void;
  /** the user's choices as rule lines (default: rules.ts' rulesFromOverrides) */
  rulesFromOverrides?: (overrides: Overrides) => string[];
  /**
   * Where the layer would go, checked when asking to save: its warnings (e.g. a --path without
   * base.cpio.zst), shown on the confirm screen.
   */
  targetWarnings?: () => string[];
  /** choices to start from (--include / --exclude on exact paths) */
  overrides?: Overrides;
  /**
   * Writes the layer. `plan`: planLayer of the scan shown and `include` (what was confirmed);
   * the result's counts are layerCounts of the plan written.
   */
  onConfirm: (include: Include, plan: LayerPlan) => Promise<WriteResult>;
}

export type PersistOutcome = 'saved' | 'cancelled';

export interface PersistAppProps extends PersistTuiOptions {
  /** terminal size; the stdout's by default (and following its resizes) */
  width?: number;
  height?: number;
  /** called once, just before the app exits */
  onExit?: (outcome: PersistOutcome) => void;
  /** live refresh: quiet time after the last change before rescanning (ms) */
  debounceMs?: number;
}

export function PersistApp(props: PersistAppProps) {
  const { exit } = useApp();
  const { stdout } = useStdout();
  const viewRef = useRef<PersistView | null>(null);
  if (!viewRef.current) viewRef.current = new PersistView(props.scan, props.decideRule, props.overrides ?? new Map());
  const view = viewRef.current;
  const [, setTick] = useState(0);
  const redraw = () => setTick((t) => t + 1);
  const [mode, setModeState] = useState<Mode>({ name: 'main' });
  const modeRef = useRef<Mode>(mode);
  const setMode = (m: Mode) => {
    modeRef.current = m;
    setModeState(m);
  };
  /** a message or an explanation, in place of the status line until the next key */
  const [message, setMessage] = useState<string[] | null>(null);
  const [termSize, setTermSize] = useState({ w: stdout.columns || 80, h: stdout.rows || 24 });
  const width = props.width ?? termSize.w;
  const height = props.height ?? termSize.h;
  const exited = useRef(false);
  const propsRef = useRef(props);
  propsRef.current = props;

  // The bytes of the key being handled: Ink's Key has no F1. This listener is subscribed once,
  // before useInput's (which subscribes again on every render), so it sees each key first.
  const { internal_eventEmitter: keyEvents } = useStdin();
  const rawKey = useRef('');
  useEffect(() => {
    const onInput = (data: string) => {
      rawKey.current = data;
    };
    keyEvents.on('input', onInput);
    return () => {
      keyEvents.off('input', onInput);
    };
  }, [keyEvents]);
  /** the legend hint shows until the first key */
  const [pressed, setPressed] = useState(false);
  /** the choices as they were at the start, or when last saved as rules: quitting asks if they differ */
  const keptChoices = useRef<Overrides>(new Map(view.overrides));
  /** choices made or undone since: each path whose choice differs from the kept one */
  const unsavedChoices = () => {
    const kept = keptChoices.current;
    let n = 0;
    for (const [k, v] of view.overrides) if (kept.get(k) !== v) n++;
    for (const k of kept.keys()) if (!view.overrides.has(k)) n++;
    return n;
  };

  useEffect(() => {
    if (props.width !== undefined && props.height !== undefined) return;
    const onResize = () => setTermSize({ w: stdout.columns || 80, h: stdout.rows || 24 });
    stdout.on('resize', onResize);
    return () => {
      stdout.off('resize', onResize);
    };
  }, [stdout, props.width, props.height]);

  // --- rescans (r, live refresh); not while confirming or writing: done when back on the list
  const scanning = useRef<{ busy: boolean; again: boolean; deferred: boolean; auto: boolean }>({
    busy: false,
    again: false,
    deferred: false,
    auto: false,
  });
  const rescanNow = async (auto: boolean): Promise<void> => {
    const rescan = propsRef.current.rescan;
    const s = scanning.current;
    if (!rescan || exited.current) return;
    if (modeRef.current.name !== 'main' && modeRef.current.name !== 'search') {
      s.deferred = true;
      return;
    }
    if (s.busy) {
      s.again = true;
      return;
    }
    s.busy = true;
    if (!auto) setMessage(['rescanning…']);
    try {
      const next = await rescan();
      if (exited.current) return;
      const d = view.applyScan(next);
      const what = d.added || d.removed ? `+${d.added} −${d.removed}` : 'no change';
      setMessage([
        `${auto ? 'changed on disk, rescanned' : 'rescanned'}: ${what} (${plural(next.stats.entries, 'entry', 'entries')}, ${next.stats.scanMs} ms)`,
      ]);
    } catch (err) {
      if (!exited.current) setMessage([`rescan failed: ${(err as Error).message}`]);
    } finally {
      s.busy = false;
      redraw();
    }
    if (s.again) {
      s.again = false;
      await rescanNow(true);
    }
  };
  const rescanRef = useRef(rescanNow);
  rescanRef.current = rescanNow;

  useEffect(() => {
    if (mode.name === 'main' && scanning.current.deferred) {
      scanning.current.deferred = false;
      void rescanRef.current(true);
    }
  }, [mode.name]);

  // --- live refresh
  useEffect(() => {
    const { watchPath, rescan } = props;
    if (!watchPath || !rescan) return;
    const debounce = props.debounceMs ?? 300;
    let timer: NodeJS.Timeout | undefined;
    let closed = false;
    const watcher = watch(watchPath, { ignoreInitial: true, followSymlinks: false, ignorePermissionErrors: true, persistent: true });
    watcher.on('all', () => {
      if (closed) return;
      clearTimeout(timer);
      timer = setTimeout(() => void rescanRef.current(true), debounce);
    });
    watcher.on('error', (err) => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      void watcher.close();
      setMessage([`live refresh off: ${(err as Error).message} (r rescans)`]);
    });
    return () => {
      closed = true;
      clearTimeout(timer);
      void watcher.close();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [props.watchPath]);

  const quit = (outcome: PersistOutcome) => {
    if (exited.current) return;
    exited.current = true;
    props.onExit?.(outcome);
    exit();
  };

  // --- layout: header, body, status (1+ lines), help; one line short of the terminal
  const statusLines = message ?? [];
  const statusHeight = Math.max(1, Math.min(statusLines.length, 4));
  const bodyHeight = Math.max(1, height - 1 - 2 - statusHeight);

  /** what Enter confirms: the include function, its plan, and the plan's counts */
  const confirmed = useRef<{ include: Include; plan: LayerPlan } | null>(null);
  /** The confirmation; or, when nothing is chosen, why there is nothing to save (true: a message was set). */
  const startConfirm = (): boolean => {
    const summary = view.summary();
    // a persist with nothing to save writes nothing (an empty layer would be a file and a
    // boot step for no change): say so instead of asking
    if (summary.changes === 0) {
      setMessage(['nothing to save: no change is chosen, so no layer is written']);
      return true;
    }
    const include = view.includeFn();
    const plan = planLayer(view.scan, include);
    confirmed.current = { include, plan };
    setMessage(null);
    setMode({ name: 'confirm', summary, counts: layerCounts(plan), warnings: props.targetWarnings?.() ?? [] });
    return false;
  };

  const write = async (m: { summary: Summary; counts: LayerCounts; warnings: string[] }) => {
    setMode({ ...m, name: 'writing' });
    try {
      const { include, plan } = confirmed.current!;
      const result = await props.onConfirm(include, plan);
      if (!exited.current) setMode({ name: 'result', result });
    } catch (err) {
      if (exited.current) return;
      setMessage([`writing failed: ${(err as Error).message}`]);
      setMode({ name: 'main' });
    }
  };

  const savedRules = useRef<Overrides | null>(null);
  const saveRules = async (lines: string[]) => {
    setMode({ name: 'rules', lines, busy: true });
    try {
      const choices = new Map(view.overrides);
      await props.saveRules!(lines);
      savedRules.current = choices;
      keptChoices.current = choices;
      if (exited.current) return;
      setMessage([`appended ${plural(lines.length, 'line')} to ${props.rulesFile}`]);
    } catch (err) {
      if (exited.current) return;
      setMessage([`saving rules failed: ${(err as Error).message}`]);
    }
    setMode({ name: 'main' });
  };

  /** q, Ctrl-C: quits at once without choices to lose, else asks (Ctrl-C there quits). */
  const askQuit = () => {
    const choices = unsavedChoices();
    if (!choices) quit('cancelled');
    else {
      setMessage(null);
      setMode({ name: 'quit', choices });
    }
  };

  useInput((input, key) => {
    if (exited.current) return;
    const m = modeRef.current;
    const ctrlC = key.ctrl && input === 'c';
    if (!pressed) setPressed(true);
    if (m.name === 'writing') return;
    if (m.name === 'result') {
      quit('saved');
      return;
    }
    if (m.name === 'quit') {
      if (ctrlC || input === 'y' || input === 'Y') quit('cancelled');
      else if (input === 'n' || input === 'N' || key.escape || input === 'q') setMode({ name: 'main' });
      return;
    }
    if (ctrlC) {
      askQuit();
      return;
    }
    if (m.name === 'help') {
      const page = Math.max(1, bodyHeight - 1);
      const d = key.upArrow || input === 'k' ? -1 : key.downArrow || input === 'j' ? 1 : key.pageUp ? -page : key.pageDown ? page : 0;
      if (d) setMode({ name: 'help', top: helpTop(m.top + d, bodyHeight, width) });
      else setMode({ name: 'main' });
      return;
    }
    if (m.name === 'confirm') {
      if (input === 'y' || input === 'Y') void write(m);
      else if (input === 'n' || input === 'N' || key.escape || input === 'q') setMode({ name: 'main' });
      return;
    }
    if (m.name === 'rules') {
      if (m.busy) return;
      if ((input === 'y' || input === 'Y') && props.saveRules && m.lines.length) void saveRules(m.lines);
      else if (input === 'n' || input === 'N' || key.escape || input === 'q' || input === 'y' || input === 'Y') setMode({ name: 'main' });
      return;
    }

    const page = Math.max(1, bodyHeight - 1);
    const inSearch = m.name === 'search';
    const raw = rawKey.current;
    const binding =
      MOVE_KEYS.find((b) => b.match(input, key, raw)) ?? (inSearch ? undefined : LIST_KEYS.find((b) => b.match(input, key, raw)));
    if (binding) {
      // a key clears the message, unless its action says something or leaves it to later
      let said = false;
      binding.run(
        {
          view,
          page,
          say: (lines) => {
            said = true;
            setMessage(lines);
          },
          quit: askQuit,
          help: () => setMode({ name: 'help', top: 0 }),
          search: () => setMode({ name: 'search', query: view.filter?.query ?? '' }),
          rescan: () => {
            said = true;
            if (props.rescan) void rescanNow(false);
            else setMessage(['rescanning is not available']);
          },
          showRules: () => {
            said = true;
            setMessage(rulesToSave());
          },
          confirm: () => {
            said = startConfirm();
          },
        },
        input,
      );
      if (exited.current) return;
      if (!said) setMessage(null);
      redraw();
      return;
    }
    if (!inSearch) return;
    if (key.return) {
      setMode({ name: 'main' });
      setMessage(null);
      return;
    }
    if (key.escape) {
      view.clearFilter();
      setMessage(null);
      setMode({ name: 'main' });
      return;
    }
    let q = m.query;
    if (key.backspace || key.delete) q = [...q].slice(0, -1).join('');
    // control characters (a pasted newline, escape sequences) are not part of a filter
    // eslint-disable-next-line no-control-regex
    else if (input && !key.ctrl && !key.meta && !key.tab) q += input.replace(/[\x00-\x1f\x7f]/g, '');
    else return;
    view.setFilter(q);
    setMode({ name: 'search', query: q });
  });

  /** `w`: the rules screen with the choices as rule lines, or why there is nothing to append (a message). */
  const rulesToSave = (): string[] | null => {
    if (!view.overrides.size) return ['no choices of yours to save as rules (space marks an entry)'];
    if (savedRules.current && sameChoices(savedRules.current, view.overrides)) return [`these choices are already in ${props.rulesFile}`];
    setMode({ name: 'rules', lines: (props.rulesFromOverrides ?? rulesFromOverrides)(view.overrides), busy: false });
    return null;
  };

  // --- drawing
  const hint = !pressed && !message && mode.name === 'main' && view.size > 0;
  const statusText = hint ? [legendHint(width)] : status(view, mode, message, statusHeight, width);
  return (
    <Box flexDirection="column" width={width}>
      <Line text={header(view, width)} width={width} bold />
      {body({ view, mode, width, height: bodyHeight, rulesFile: props.rulesFile, canSaveRules: !!props.saveRules })}
      {statusText.map((s, k) => (
        <Line key={`s${k}`} text={s} width={width} color={message ? 'cyan' : undefined} dimColor={hint} />
      ))}
      <Line text={help(mode, width, bodyHeight)} width={width} dimColor />
    </Box>
  );
}

function sameChoices(a: Overrides, b: Overrides): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

/** Runs the UI on the terminal until the owner saves (→ 'saved') or quits (→ 'cancelled'). */
export async function runPersistTui(o: PersistTuiOptions): Promise<PersistOutcome> {
  if (!process.stdin.isTTY || !process.stdout.isTTY) throw new Error('the interactive view needs a terminal on stdin and stdout');
  let outcome: PersistOutcome = 'cancelled';
  const app = render(<PersistApp {...o} onExit={(r) => (outcome = r)} />, { exitOnCtrlC: false, patchConsole: true });
  await app.waitUntilExit();
  return outcome;
}
