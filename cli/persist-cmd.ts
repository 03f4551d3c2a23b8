// `mkma persist`: save chosen changes of the running system (the overlay's upperdir) as a new
// layer next to base.cpio.zst, applied at the next boot.
import * as fs from 'node:fs';
import {
  DEFAULT_LOWER,
  DEFAULT_RULES_PATH,
  DEFAULT_UPPER,
  type ChangeEntry,
  type Decision,
  type Rule,
  type ScanResult,
} from '../persist/model.js';
import { appendRules, dpkgWarnings, loadRules, parsePattern, ruleDecider, rulesFromOverrides } from '../persist/rules.js';
import { countSentence, layerCounts, type LayerCounts } from '../persist/counts.js';
import { KIND_LEGEND, KIND_MARK } from '../persist/kinds.js';
import { scanUpper } from '../persist/scan.js';
import {
  applySaved,
  checkSavedRecord,
  readSavedRecord,
  recordSave,
  sameLayers,
  signaturesBefore,
  type SavedRecord,
} from '../persist/saved.js';
import type { Target } from '../persist/storage.js';
import type { LayerPlan, WriteLayerResult } from '../persist/write.js';
import { interceptSignals } from '../lib/cleanup.js';
import { EnvironmentError, EXIT, MkmaError, UsageError } from '../lib/errors.js';
import { parse, printHelp, renderHelp, type CommandSpec } from './args.js';
import { FILES, ZSTD_LEVEL } from '../lib/contract.js';
import { readManifest } from '../format/reader.js';
import * as path from 'node:path';
import { createReporter, formatBytes, type Reporter } from '../lib/progress.js';
import { baseUnder, DEVICE_OPTION, storageTarget } from './storage-target.js';

export const SPEC = {
  name: 'persist',
  synopsis: '[options]',
  root: true,
  description: `Saves changes made since boot (the overlay's upperdir, ${DEFAULT_UPPER}) as a new layer
persistence.<UTC time>.cpio.zst next to base.cpio.zst on the storage device; the next boot
applies it. Without --yes or --dry-run it opens a terminal UI to choose what to keep.

What is saved: every change that the rules do not exclude. Rules are gitignore-style lines:
mkma's defaults (temporary files, caches, logs of one boot, the random seed), then
${DEFAULT_RULES_PATH}, then --include/--exclude in the order given; the last rule that
matches a path or one of its directories decides ("!" includes again); see mkma-persist.rules(5).`,
  options: [
    { long: 'yes', short: 'y', help: 'save everything the rules allow, without asking' },
    { long: 'dry-run', short: 'n', help: 'list what would be saved (kind, size, path) and totals; write nothing' },
    { long: 'include', value: 'PATTERN', multiple: true, help: "keep what PATTERN matches (repeatable), e.g. --include '/var/log/**'" },
    { long: 'exclude', value: 'PATTERN', multiple: true, help: 'leave out what PATTERN matches (repeatable), e.g. --exclude /root/big/' },
    { long: 'message', short: 'm', value: 'TEXT', help: "a note stored in the layer (shown by mkma's tools)" },
    { long: 'rules', value: 'FILE', complete: 'file', help: `rules file (default ${DEFAULT_RULES_PATH}; missing = defaults only)` },
    { long: 'upper', value: 'DIR', complete: 'dir', help: `upperdir to save (default ${DEFAULT_UPPER})` },
    { long: 'lower', value: 'DIR', complete: 'dir', help: `the tree below it, to tell new from modified (default ${DEFAULT_LOWER})` },
    DEVICE_OPTION,
    {
      long: 'path',
      value: 'PATH',
      complete: 'dir',
      help: 'with --device: the images directory on it; alone: a directory to\nwrite the layer into as it is',
    },
    {
      long: 'level',
      value: 'N',
      help: `zstd level ${ZSTD_LEVEL.min}..${ZSTD_LEVEL.max} (default: $MKMA_COMPRESSION_LEVEL, else the level
base.cpio.zst was built with, else ${ZSTD_LEVEL.default})`,
    },
    { long: 'quiet', short: 'q', help: 'no progress output (with --yes; warnings still show)' },
    { long: 'json', help: 'machine-readable output on stdout (with --yes or --dry-run)' },
  ],
  sections: [
    [
      'Kinds',
      KIND_LEGEND.map((k) => `  ${k.mark}  ${k.means}`).join('\n') +
        '\n\nIn the terminal UI, F1 (or H) lists the keys, and what [x], [ ] and [~] mean.',
    ],
  ],
  exitStatus: `0 saved (or nothing to save, or dry run), 1 failed (nothing was written), 2 bad
arguments or no terminal without --yes, 3 not root or missing tools.`,
  examples: ['sudo mkma persist --dry-run', "sudo mkma persist --yes --exclude '/home/*/Downloads/' --message 'after installing nginx'"],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

/** A raw (latin1) path for people: UTF-8 when it is, control bytes as \\ooo. */
export function showPath(raw: string): string {
  const utf8 = Buffer.from(raw, 'latin1').toString('utf8');
  const text = Buffer.from(utf8, 'utf8').toString('latin1') === raw ? utf8 : raw;
  // eslint-disable-next-line no-control-regex -- control bytes are what is escaped here
  return '/' + text.replace(/[\x00-\x1f\x7f\\]/g, (c) => (c === '\\' ? '\\\\' : '\\' + c.charCodeAt(0).toString(8).padStart(3, '0')));
}

/** JSON form of a raw path: UTF-8 text when it round-trips, plus base64 of the bytes when not. */
function jsonPath(raw: string): { path: string; pathBase64?: string } {
  const bytes = Buffer.from(raw, 'latin1');
  const utf8 = bytes.toString('utf8');
  if (Buffer.from(utf8, 'utf8').equals(bytes)) return { path: '/' + utf8 };
  return { path: '/' + utf8, pathBase64: bytes.toString('base64') };
}

function ruleJson(r: Rule | null) {
  return r ? { pattern: r.pattern, include: r.include, source: r.source } : null;
}

/** --level, else MKMA_COMPRESSION_LEVEL: a number in the one range of zstd levels, or null for "not given". */
function parseLevel(v: string | undefined): { level: number; from: string } | null {
  const [text, from] = v !== undefined ? [v, '--level'] : [process.env.MKMA_COMPRESSION_LEVEL || undefined, 'MKMA_COMPRESSION_LEVEL'];
  if (text === undefined) return null;
  const n = Number(text);
  if (!/^\s*[0-9]+\s*$/.test(text) || n < ZSTD_LEVEL.min || n > ZSTD_LEVEL.max)
    throw new UsageError(`persist: ${from} must be an integer from ${ZSTD_LEVEL.min} to ${ZSTD_LEVEL.max}, not ${JSON.stringify(text)}`);
  return { level: n, from };
}

/** The layer's zstd level: the one given, else the one the base was built with, else the default. */
function layerLevel(given: { level: number; from: string } | null, imagesDir: string): { level: number; from: string } {
  if (given) return given;
  try {
    const recorded = readManifest(path.join(imagesDir, FILES.base)).zstdLevel;
    if (recorded !== undefined) return { level: recorded, from: `the level ${FILES.base} was built with` };
  } catch {
    /* no readable base there: the target's own warning says so */
  }
  return { level: ZSTD_LEVEL.default, from: 'the default' };
}

interface Totals {
  changes: number;
  included: number;
  includedBytes: number;
  excluded: number;
  excludedBytes: number;
}

function totalsOf(scan: ScanResult, decisions: Decision[]): Totals {
  const t: Totals = { changes: 0, included: 0, includedBytes: 0, excluded: 0, excludedBytes: 0 };
  scan.entries.forEach((e, i) => {
    if (e.kind === 'container') return;
    t.changes++;
    if (decisions[i].included) {
      t.included++;
      t.includedBytes += e.size;
    } else {
      t.excluded++;
      t.excludedBytes += e.size;
    }
  });
  return t;
}

export async function run(argv: string[]): Promise<number> {
  const { values, tokens } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const dryRun = !!values['dry-run'];
  const yes = !!values.yes;
  const json = !!values.json;
  if (dryRun && yes) throw new UsageError('persist: --dry-run and --yes exclude each other');
  if (json && !dryRun && !yes) throw new UsageError('persist: --json needs --yes or --dry-run');
  const level = parseLevel(values.level);

  const upper = values.upper ?? DEFAULT_UPPER;
  const lower = values.lower ?? (values.upper === undefined && fs.existsSync(DEFAULT_LOWER) ? DEFAULT_LOWER : null);
  if (!fs.existsSync(upper) || !fs.statSync(upper).isDirectory()) {
    throw new EnvironmentError(`no overlay upperdir at ${upper}: is this a running mkma system? (--upper DIR for another tree)`);
  }
  const isRoot = !process.getuid || process.getuid() === 0;
  if (!isRoot) {
    let readable = false;
    try {
      fs.accessSync(upper, fs.constants.R_OK | fs.constants.X_OK);
      readable = true;
    } catch {
      /* not readable */
    }
    if (!dryRun || !readable) {
      throw new EnvironmentError(
        "mkma persist must run as root (it reads every file of the upperdir, overlayfs' trusted.* xattrs, and mounts the storage device): run it with sudo" +
          (readable ? '' : ` (--dry-run works without root only if ${upper} is readable)`),
      );
    }
  }
  if (!yes && !dryRun && !(process.stdin.isTTY && process.stdout.isTTY)) {
    throw new UsageError('no terminal: use --yes to save everything the rules allow, or --dry-run to list it');
  }

  // Rules: defaults, the rules file, then --include/--exclude in command line order.
  const rulesFile = values.rules ?? DEFAULT_RULES_PATH;
  const rules: Rule[] = loadRules(rulesFile);
  for (const t of tokens ?? []) {
    if (t.kind !== 'option' || (t.name !== 'include' && t.name !== 'exclude')) continue;
    const r = parsePattern(t.value ?? '', `--${t.name}`);
    if (!r) throw new UsageError(`persist: --${t.name} needs a pattern, not ${JSON.stringify(t.value ?? '')}`);
    rules.push({ ...r, include: t.name === 'include' });
  }

  const reporter = createReporter({ quiet: json || !!values.quiet });
  if (!isRoot) reporter.warn("not root: overlayfs' own xattrs are invisible, so replaced directories show as added or unchanged");
  const stage = reporter.stage('scan', upper);
  // The writer's modules load while find and getfattr work (the scan mostly waits for them).
  const writeModule = dryRun ? null : import('../persist/write.js');
  writeModule?.catch(() => {}); // a failure is reported where it is awaited
  // What earlier saves of this boot wrote (persist/saved.ts), checked first against the images
  // it is saved to (the storage is then resolved before the scan; not for a dry run).
  let record = readSavedRecord(upper);
  let early: Target | null = null;
  if (record && !dryRun) {
    early = storageTarget(values);
    try {
      record = checkSavedRecord(upper, early.imagesDir);
    } catch (e) {
      early.release();
      throw e;
    }
  }
  try {
    const scan = applySaved(await scanUpper(upper, lower), record);
    stage.done(`${scan.stats.entries} entries, ${formatBytes(scan.stats.bytes)}`);
    return await afterScan({
      scan,
      record,
      early,
      upper,
      lower,
      rules,
      rulesFile,
      values,
      level,
      reporter,
      writeModule,
      dryRun,
      yes,
      json,
    });
  } finally {
    early?.release();
  }
}

/** "the last save (NAME)" when this boot saved before, else "boot" */
const sinceWhat = (record: SavedRecord | null) => (record ? `the last save (${record.layers[record.layers.length - 1]})` : 'boot');

async function afterScan(o: {
  scan: ScanResult;
  record: SavedRecord | null;
  early: Target | null;
  upper: string;
  lower: string | null;
  rules: Rule[];
  rulesFile: string;
  values: { device?: string; path?: string; message?: string };
  level: { level: number; from: string } | null;
  reporter: Reporter;
  writeModule: Promise<typeof import('../persist/write.js')> | null;
  dryRun: boolean;
  yes: boolean;
  json: boolean;
}): Promise<number> {
  const { scan, record, upper, lower, rules, rulesFile, values, level, reporter, writeModule, dryRun, yes, json } = o;
  const decideRule = ruleDecider(rules);

  if (!yes && !dryRun) {
    // nothing changed at all: no UI to choose from nothing (changes left out by the rules are
    // shown in the UI: the owner may include them there)
    if (!scan.entries.some((e) => e.kind !== 'container')) {
      process.stdout.write(`mkma: nothing to save (no changes since ${sinceWhat(record)})\n`);
      return EXIT.ok;
    }
    o.early?.release(); // not mounted while the UI is shown
    return runTui({ scan, record, decideRule, upper, lower, rulesFile, rules, values, level });
  }

  const decisions = scan.entries.map(decideRule);
  const warnings = dpkgWarnings(scan.entries, decisions);
  const totals = totalsOf(scan, decisions);
  if (dryRun) {
    printDryRun(scan, decisions, totals, warnings, json);
    return EXIT.ok;
  }

  for (const s of scan.skipped) reporter.warn(`not saved: ${showPath(s.path)}: ${s.reason}`);
  for (const w of warnings) reporter.warn(w);
  // the rules' verdicts, computed once above (planLayer asks per entry)
  const includedSet = new Set<ChangeEntry>();
  scan.entries.forEach((e, i) => {
    if (decisions[i].included) includedSet.add(e);
  });
  const include = (e: ChangeEntry) => includedSet.has(e);
  const { nothingToSave, planLayer, writeLayer } = await writeModule!;
  const plan = planLayer(scan, include);
  const nothing = nothingToSave(plan, totals.changes, 'the rules', sinceWhat(record));
  if (nothing) {
    if (json)
      process.stdout.write(
        JSON.stringify({ saved: false, reason: 'nothing to save', detail: nothing, totals, skipped: scan.skipped, warnings }, null, 2) +
          '\n',
      );
    else process.stdout.write(`mkma: nothing to save (${nothing})\n`);
    return EXIT.ok;
  }
  const target = o.early ?? storageTarget(values);
  let result: WriteLayerResult;
  let lv: { level: number; from: string };
  try {
    for (const w of target.warnings) reporter.warn(w);
    lv = layerLevel(level, target.imagesDir);
    const before = signaturesBefore(upper, plan);
    // statsFromScan: the scan is a moment old, its lstat data is the files' (no second lstat of each)
    result = await writeWithSignals(reporter, writeLayer, {
      scan,
      include,
      plan,
      statsFromScan: true,
      upper,
      imagesDir: target.imagesDir,
      level: lv.level,
      levelFrom: lv.from,
      message: values.message,
      baseDataSha256: baseUnder(values, target),
    });
    recordSave(upper, record, path.basename(result.file), plan, before);
  } finally {
    target.release();
  }
  const name = result.file.slice(result.file.lastIndexOf('/') + 1);
  if (json) {
    process.stdout.write(
      JSON.stringify(
        { saved: true, name, ...result, level: lv.level, target: target.description, totals, skipped: scan.skipped, warnings },
        null,
        2,
      ) + '\n',
    );
    return EXIT.ok;
  }
  printSaved(result, layerCounts(plan), name, target, totals, (await import('../persist/write.js')).newLayerNote(name));
  return EXIT.ok;
}

async function writeWithSignals(
  reporter: Reporter,
  writeLayer: typeof import('../persist/write.js').writeLayer,
  o: {
    scan: ScanResult;
    include: (e: ChangeEntry) => boolean;
    plan: LayerPlan;
    statsFromScan: boolean;
    upper: string;
    imagesDir: string;
    level: number;
    /** where the level came from, for the progress line */
    levelFrom: string;
    message?: string;
    baseDataSha256?: string;
  },
): Promise<WriteLayerResult> {
  // Ctrl-C or SIGTERM while writing: the writer stops and removes its partial file, and the
  // command then reports the interruption (exit 1) instead of dying mid-write. SIGHUP too:
  // a closed terminal must not leave a partial layer either.
  const ac = new AbortController();
  const stopIntercepting = interceptSignals(() => {
    ac.abort();
    return true;
  });
  const stage = reporter.stage('write', `${o.imagesDir}, zstd level ${o.level} (${o.levelFrom})`);
  const { levelFrom: _, ...opts } = o;
  try {
    const r = await writeLayer({
      ...opts,
      signal: ac.signal,
      onProgress: (p) => stage.count({ entries: p.entries, bytes: p.bytesIn }, { entries: o.plan.write.length }),
      onWarning: (m) => reporter.warn(m),
    });
    for (const c of r.cleaned) reporter.info(`    removed ${c} (left by an interrupted persist)`);
    // the cpio stream (contents, headers, padding), not the "before compression" count of the result
    stage.done(`${formatBytes(r.bytesIn)} archive with headers → ${formatBytes(r.bytesOut)} compressed`);
    return r;
  } catch (e) {
    if (ac.signal.aborted) throw new MkmaError('interrupted: nothing was saved (the partial file was removed)');
    throw e;
  } finally {
    stopIntercepting();
  }
}

function printSaved(r: WriteLayerResult, counts: LayerCounts, name: string, target: Target, totals: Totals, note: string[]): void {
  const lines = [`mkma: saved ${countSentence(counts, r.bytesOut)}`, `  ${name}`, `  in ${target.description}`];
  if (totals.excluded)
    lines.push(
      `  left out by the rules: ${totals.excluded} change(s), ${formatBytes(totals.excludedBytes)} (mkma persist --dry-run lists them)`,
    );
  lines.push(...note.map((l) => `  ${l}`));
  process.stdout.write(lines.join('\n') + '\n');
}

function printDryRun(scan: ScanResult, decisions: Decision[], totals: Totals, warnings: string[], json: boolean): void {
  if (json) {
    const out = {
      dryRun: true,
      upper: scan.upper,
      lower: scan.lower,
      entries: scan.entries.map((e, i) => ({
        ...jsonPath(e.path),
        kind: e.kind,
        type: e.type,
        size: e.size,
        included: decisions[i].included,
        rule: ruleJson(decisions[i].rule),
      })),
      totals,
      skipped: scan.skipped.map((s) => ({ ...jsonPath(s.path), reason: s.reason })),
      warnings,
    };
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
    return;
  }
  const lines: string[] = [];
  const byRule = new Map<string, { rule: Rule; n: number; bytes: number }>();
  scan.entries.forEach((e, i) => {
    if (e.kind === 'container') return;
    const d = decisions[i];
    if (d.included) {
      const size = e.type === 'file' || e.type === 'symlink' ? formatBytes(e.size) : '-';
      lines.push(`${KIND_MARK[e.kind]} ${size.padStart(10)}  ${showPath(e.path)}${e.type === 'dir' ? '/' : ''}`);
    } else if (d.rule) {
      const k = `${d.rule.source} ${d.rule.pattern}`;
      const g = byRule.get(k) ?? { rule: d.rule, n: 0, bytes: 0 };
      g.n++;
      g.bytes += e.size;
      byRule.set(k, g);
    }
  });
  lines.push('');
  lines.push(`would save ${totals.included} of ${totals.changes} change(s), ${formatBytes(totals.includedBytes)} before compression`);
  for (const g of byRule.values()) {
    lines.push(`left out by ${g.rule.pattern} (${g.rule.source}): ${g.n} change(s), ${formatBytes(g.bytes)}`);
  }
  for (const s of scan.skipped) lines.push(`cannot save ${showPath(s.path)}: ${s.reason}`);
  for (const w of warnings) lines.push(`warning: ${w}`);
  process.stdout.write(lines.join('\n') + '\n');
}

async function runTui(o: {
  scan: ScanResult;
  record: SavedRecord | null;
  decideRule: (e: ChangeEntry) => Decision;
  upper: string;
  lower: string | null;
  rulesFile: string;
  rules: Rule[];
  values: { device?: string; path?: string; message?: string };
  level: { level: number; from: string } | null;
}): Promise<number> {
  // TODO(lead): persist/tui.tsx's options are not final; this call follows PersistTuiOptions as
  // of this writing (scan, decideRule, rescan, watchPath, rulesFile, saveRules,
  // rulesFromOverrides, targetWarnings, onConfirm). Adjust here if that interface changes.
  const { runPersistTui } = await import('../persist/tui.js');
  const { writeLayer } = await import('../persist/write.js');
  // the UI's choice (`include`) is about the entries of its latest scan
  let latest = o.scan;
  const outcome = await runPersistTui({
    scan: o.scan,
    decideRule: o.decideRule,
    rescan: async () => (latest = applySaved(await scanUpper(o.upper, o.lower), o.record)),
    watchPath: o.upper,
    rulesFile: o.rulesFile,
    saveRules: (lines) => appendRules(o.rulesFile, lines, `added by mkma persist on ${new Date().toISOString()}`),
    rulesFromOverrides,
    targetWarnings: () => {
      // resolved (and released) again when writing; a problem that stops the write shows here first
      try {
        const t = storageTarget(o.values);
        try {
          checkSavedRecord(o.upper, t.imagesDir);
        } finally {
          t.release();
        }
        return t.warnings;
      } catch (e) {
        return [`cannot save there: ${(e as Error).message}`];
      }
    },
    onConfirm: async (include, plan) => {
      const target = storageTarget(o.values);
      try {
        // the UI showed the changes since the saves o.record names: they must still be there
        const now = checkSavedRecord(o.upper, target.imagesDir);
        if (!sameLayers(now?.layers ?? [], o.record?.layers ?? []))
          throw new MkmaError('the layers saved earlier in this boot changed while the list was shown: quit and run mkma persist again');
        const before = signaturesBefore(o.upper, plan);
        const r = await writeLayer({
          upper: o.upper,
          scan: latest,
          include,
          plan,
          imagesDir: target.imagesDir,
          level: layerLevel(o.level, target.imagesDir).level,
          message: o.values.message,
          baseDataSha256: baseUnder(o.values, target),
        });
        recordSave(o.upper, o.record, path.basename(r.file), plan, before);
        return { file: r.file, counts: layerCounts(plan), bytesOut: r.bytesOut };
      } finally {
        target.release();
      }
    },
  });
  if (outcome === 'cancelled') process.stdout.write('mkma: nothing saved\n');
  return EXIT.ok;
}
