// `mkma layers remove NAME` (asks first, unless --yes) and `mkma layers prune --keep N
// [--newer-than DAYS]` (disabled layers beyond the rule; pinned ones never): unlinks under
// persist's lock (format/layer-state.ts: fsync of the directory after).
import * as readline from 'node:readline/promises';
import { EXIT, UsageError } from '../lib/errors.js';
import { formatBytes } from '../lib/progress.js';
import type { LayerName } from '../format/names.js';
import { parse, printHelp, renderHelp, type CommandSpec, type SubcommandModule } from './args.js';
import { changeImages, STORAGE_OPTIONS } from './storage-target.js';

const WHERE = `On the booted system, without --path, the storage is the one the system booted from (as
mkma persist finds it, mounted read-write only meanwhile).`;

const REMOVE_SPEC = {
  name: 'layers remove',
  synopsis: 'NAME [--yes] [--path DIR | --device DEV --path PATH] [--json]',
  description: `Deletes a layer's file: what it saved is gone for good (mkma layers disable takes a layer
out of boot order reversibly). Asks first, on a terminal; without one, --yes is needed.
NAME is the layer's id or its file name, as mkma layers shows it.

${WHERE}`,
  positionals: { max: 1 },
  options: [
    { long: 'yes', short: 'y', help: 'do not ask' },
    ...STORAGE_OPTIONS,
    { long: 'json', help: 'what was removed as JSON on stdout (needs --yes)' },
  ],
  exitStatus: `0 removed (or not, as answered), 1 it could not be removed, 2 bad arguments, no such
layer, or no terminal to ask on and no --yes, 3 the storage cannot be found or mounted.`,
  examples: ['sudo mkma layers remove 20261122T021500Z', 'mkma layers remove 20261122T021500Z --yes --path ./mkma-out'],
} as const satisfies CommandSpec;

async function confirm(question: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}

export const remove: SubcommandModule = {
  SPEC: REMOVE_SPEC,
  HELP: renderHelp(REMOVE_SPEC),
  async run(argv) {
    const { values, positionals } = parse(REMOVE_SPEC, argv);
    if (values.help) return printHelp(remove.HELP);
    if (positionals.length !== 1) throw new UsageError('layers remove: which layer? (mkma layers remove NAME; mkma layers lists them)');
    if (!values.yes && (!process.stdin.isTTY || values.json)) {
      throw new UsageError('layers remove: no terminal to ask on: add --yes to remove the layer without asking');
    }
    const { findLayer, removeLayerFile } = await import('../format/layer-state.js');
    const fs = await import('node:fs');
    const path = await import('node:path');
    const { result, where } = await changeImages(values, 'mkma layers remove', async (dir) => {
      const l = findLayer(dir, positionals[0]);
      const bytes = fs.statSync(path.join(dir, l.file)).size;
      if (!values.yes && !(await confirm(`remove layer ${l.id} (${l.file}, ${formatBytes(bytes)}) for good? [y/N] `))) return null;
      removeLayerFile(dir, l);
      return { id: l.id, file: l.file, bytes };
    });
    if (values.json) process.stdout.write(JSON.stringify({ images: where, removed: result ? [result] : [] }, null, 2) + '\n');
    else process.stdout.write(result ? `removed ${result.id} (${result.file}) from ${where}\n` : 'nothing removed\n');
    return EXIT.ok;
  },
};

const PRUNE_SPEC = {
  name: 'layers prune',
  synopsis: '--keep N [--newer-than DAYS] [--dry-run] [--path DIR | --device DEV --path PATH] [--json]',
  description: `Removes disabled and failed layers beyond a rule: the N newest of them are kept, and with
--newer-than those created less than DAYS days ago too. A failed layer (no good boot in its
tries) is not applied any more, like a disabled one: it counts among them. Pinned layers
(mkma layers pin) are never removed, nor any layer in boot order (active, on trial).

${WHERE}`,
  options: [
    { long: 'keep', value: 'N', help: 'disabled or failed layers to keep, the newest (0: none)' },
    { long: 'newer-than', value: 'DAYS', help: 'also keep those created less than DAYS days ago' },
    { long: 'dry-run', help: 'say what would be removed, remove nothing' },
    ...STORAGE_OPTIONS,
    { long: 'json', help: 'what was removed as JSON on stdout' },
  ],
  exitStatus: `0 done, 1 a layer could not be removed, 2 bad arguments, 3 the storage cannot be found or mounted.`,
  examples: ['sudo mkma layers prune --keep 3', 'sudo mkma layers prune --keep 0 --newer-than 30 --dry-run'],
} as const satisfies CommandSpec;

const wholeNumber = (opt: string, v: string | undefined): number | undefined => {
  if (v === undefined) return undefined;
  if (!/^[0-9]{1,6}$/.test(v)) throw new UsageError(`layers prune: --${opt} ${v} is not a whole number`);
  return Number(v);
};

/** The disabled and failed unpinned layers that the rule does not keep, oldest first. */
export function pruneVictims(
  layers: Array<LayerName & { created: string | null }>,
  keep: number,
  newerThanDays: number | undefined,
  now: Date,
): LayerName[] {
  // a failed layer is out of boot order as a disabled one is (only bless brings it back)
  const disabled = layers.filter((l) => (l.status === 'disabled' || l.status === 'failed') && !l.pinned);
  const kept = new Set(disabled.slice(Math.max(0, disabled.length - keep)).map((l) => l.id));
  const cutoff = newerThanDays === undefined ? null : now.getTime() - newerThanDays * 86_400_000;
  return disabled.filter((l) => !kept.has(l.id) && !(cutoff !== null && l.created !== null && Date.parse(l.created) >= cutoff));
}

export const prune: SubcommandModule = {
  SPEC: PRUNE_SPEC,
  HELP: renderHelp(PRUNE_SPEC),
  async run(argv) {
    const { values } = parse(PRUNE_SPEC, argv);
    if (values.help) return printHelp(prune.HELP);
    const keep = wholeNumber('keep', values.keep);
    if (keep === undefined) throw new UsageError('layers prune: how many disabled or failed layers to keep? (--keep N)');
    const days = wholeNumber('newer-than', values['newer-than']);
    const { describeLayers } = await import('../format/layer-info.js');
    const { layersIn, removeLayerFile } = await import('../format/layer-state.js');
    const { result, where } = await changeImages(values, 'mkma layers prune', async (dir) => {
      const info = new Map((await describeLayers(dir)).layers.map((l) => [l.id, l]));
      const victims = pruneVictims(
        layersIn(dir).map((l) => ({ ...l, created: info.get(l.id)?.created ?? null })),
        keep,
        days,
        new Date(),
      );
      const removed = victims.map((l) => ({ id: l.id, file: l.file, bytes: info.get(l.id)?.fileBytes ?? 0 }));
      if (!values['dry-run']) for (const l of victims) removeLayerFile(dir, l);
      return removed;
    });
    const verb = values['dry-run'] ? 'would remove' : 'removed';
    if (values.json) process.stdout.write(JSON.stringify({ images: where, dryRun: !!values['dry-run'], removed: result }, null, 2) + '\n');
    else if (!result.length) process.stdout.write(`nothing to prune in ${where}\n`);
    else {
      for (const r of result) process.stdout.write(`${verb} ${r.id} (${r.file}, ${formatBytes(r.bytes)})\n`);
      process.stdout.write(`${verb} ${result.length} layer(s), ${formatBytes(result.reduce((n, r) => n + r.bytes, 0))}, from ${where}\n`);
    }
    return EXIT.ok;
  },
};
