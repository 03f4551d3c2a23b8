// `mkma layers`: the layers of the images directory in boot order, with what each manifest
// says and (--verify) whether each one's data is intact (format/layer-info.ts).
import { FILES, RUNTIME } from '../lib/contract.js';
import { EXIT, UsageError } from '../lib/errors.js';
import { formatBytes } from '../lib/progress.js';
import type { LayerInfo, LayersListing } from '../format/layer-info.js';
import { didYouMean } from '../lib/suggest.js';
import { padEnd, textWidth, truncateEnd } from '../persist/text.js';
import { parse, printHelp, renderHelp, type CommandContext, type CommandSpec, type Subcommand } from './args.js';
import { readIf, readImages, STORAGE_OPTIONS, verifyProgress } from './storage-target.js';

/**
 * `mkma layers SUBCOMMAND …`: one line per subcommand, each a module of its own (a
 * SubcommandModule: SPEC, HELP, run) loaded only when it runs. Without a subcommand (or with an
 * option first), `mkma layers` lists.
 */
export const SUBCOMMANDS: Record<string, Subcommand> = {
  show: {
    summary: "a layer's changes against what lies below it; with PATH a diff",
    load: async () => (await import('./layers-show-cmd.js')).show,
  },
  disable: { summary: 'take a layer out of boot order, reversibly', load: async () => (await import('./layers-state-cmd.js')).disable },
  enable: { summary: 'put a disabled layer back into boot order', load: async () => (await import('./layers-state-cmd.js')).enable },
  rollback: {
    summary: 'disable every layer after NAME (default: the newest one)',
    load: async () => (await import('./layers-state-cmd.js')).rollback,
  },
  remove: { summary: 'delete a layer (asks first, unless --yes)', load: async () => (await import('./layers-remove-cmd.js')).remove },
  prune: {
    summary: 'remove disabled and failed layers beyond --keep N [--newer-than DAYS], never pinned ones',
    load: async () => (await import('./layers-remove-cmd.js')).prune,
  },
  pin: { summary: 'never prune a layer', load: async () => (await import('./layers-state-cmd.js')).pin },
  unpin: { summary: 'let prune remove a layer again', load: async () => (await import('./layers-state-cmd.js')).unpin },
  bless: {
    summary: 'mark a layer on trial or failed good (--tries N: on trial again)',
    load: async () => (await import('./layers-state-cmd.js')).blessCmd,
  },
  compact: {
    summary: 'merge consecutive layers into one equivalent layer (--into-base: into a new base)',
    load: async () => await import('./layers-compact-cmd.js'),
  },
};

export const SPEC = {
  name: 'layers',
  synopsis: '[SUBCOMMAND] [--verify] [--path DIR | --device DEV --path PATH] [--json]',
  description: `Lists the layers (${FILES.layerPrefix}*${FILES.layerSuffix}) of an images directory in boot order, the
order the init applies them: for each its name, when it was created (UTC), the message given
to mkma persist --message, its entries, its size compressed and unpacked (the RAM it takes),
and its state: active (applied at every boot), disabled, on trial (applied while it has tries
left, see bless --tries; a boot that reaches multi-user marks it good), failed (no good boot in
its tries: skipped), pinned (never pruned); on the booted system also "skipped at this boot"
and why; and the base it was written on (the first 12 digits of that base's data_sha256;
"(other)" when it is not the directory's base.cpio.zst, "unknown" for layers of an older mkma).

A layer whose manifest cannot be read is marked DAMAGED (the boot skips it). --verify also
checks each layer's data hash and shard table, as mkma verify does.

On the booted system, without --path, the images are the ones the system booted from (found
as mkma persist finds them; the device is mounted read-only if nobody has it mounted).`,
  options: [
    { long: 'verify', help: "check each layer's data hash and shard table (reads every layer whole)" },
    ...STORAGE_OPTIONS,
    { long: 'json', help: 'the list as JSON on stdout' },
  ],
  // completion offers the subcommands (each has its own --help); run() dispatches them
  positionals: { max: 0, complete: Object.keys(SUBCOMMANDS) },
  sections: [
    [
      "Subcommands (mkma layers SUBCOMMAND --help for each one's options)",
      Object.entries(SUBCOMMANDS)
        .map(([name, c]) => `  ${name.padEnd(9)} ${c.summary}`)
        .join('\n'),
    ],
  ],
  exitStatus: `0 listed (every layer readable, and intact with --verify), 1 a layer is damaged (it
is named), 2 bad arguments, 3 the storage cannot be found or mounted.`,
  examples: ['mkma layers --path ./mkma-out', 'sudo mkma layers --verify', 'sudo mkma layers --json'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

export async function run(argv: string[], context: CommandContext): Promise<number> {
  const sub = argv[0];
  if (sub !== undefined && !sub.startsWith('-')) {
    const c = SUBCOMMANDS[sub];
    if (!c) {
      const known = Object.keys(SUBCOMMANDS);
      throw new UsageError(
        `layers: unknown subcommand ${JSON.stringify(sub)}${didYouMean(sub, known)}; subcommands: ${known.join(', ')} (mkma layers --help)`,
      );
    }
    return (await c.load()).run(argv.slice(1), context);
  }
  const { values } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const { describeLayers, parseBootRecord } = await import('../format/layer-info.js');
  // on the booted system (no --path/--device): what the init did at this boot
  const recordText = values.path === undefined && values.device === undefined ? readIf(RUNTIME.layersRecord) : undefined;
  const record = recordText === undefined ? undefined : parseBootRecord(recordText);
  const { result: listing, where } = await readImages(values, async (dir, reporter, description) => {
    if (!values.verify) return describeLayers(dir, { record });
    const stage = reporter.stage('verify', description);
    const l = await describeLayers(dir, { verify: true, record, ...verifyProgress(stage) });
    stage.done(`${l.layers.length} layer(s), ${l.layers.filter((x) => x.problems.length).length} damaged`);
    return l;
  });
  if (values.json) process.stdout.write(JSON.stringify({ images: where, ...listing }, null, 2) + '\n');
  else process.stdout.write(formatLayers(listing, where, process.stdout.isTTY ? process.stdout.columns : undefined));
  return listing.layers.some((l) => l.problems.length) ? EXIT.failed : EXIT.ok;
}

/** "2026-11-22 02:15:00" */
const showTime = (iso: string | null) => (iso ? iso.slice(0, 19).replace('T', ' ') : '-');
// eslint-disable-next-line no-control-regex -- control characters are what it replaces
const showText = (s: string) => s.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');

/** "active", "on trial (2 tries left)", "failed (3 tries), pinned", "…, skipped at this boot: REASON" */
export function stateOf(l: LayerInfo): string {
  const words = [
    l.state === 'trial'
      ? `on trial (${l.triesLeft} ${l.triesLeft === 1 ? 'try' : 'tries'} left)`
      : l.state === 'failed'
        ? `failed (${l.triesDone} ${l.triesDone === 1 ? 'try' : 'tries'})`
        : l.state,
  ];
  if (l.pinned) words.push('pinned');
  if (l.problems.length) words.push('DAMAGED');
  else if (l.verified) words.push('verified');
  if (l.skippedAtBoot !== null) words.push(`skipped at this boot: ${showText(l.skippedAtBoot)}`);
  return words.join(', ');
}

/** The base a layer was written on, short; "(other)" when it is not the directory's base. */
export function baseOf(l: Pick<LayerInfo, 'baseDataSha256'>, current: string | null): string {
  if (!l.baseDataSha256) return 'unknown';
  return l.baseDataSha256.slice(0, 12) + (current && current !== l.baseDataSha256 ? ' (other)' : '');
}

/**
 * The table: one row per layer in boot order, the message last (cut to `width` columns on a
 * terminal), then the problems of damaged layers and the files the boot ignores.
 */
export function formatLayers(listing: LayersListing, where: string, width?: number): string {
  const { layers } = listing;
  if (!layers.length) return `no layers in ${where} (the base alone boots)\n`;
  const header = ['#', 'NAME', 'CREATED (UTC)', 'ENTRIES', 'SIZE', 'UNPACKED', 'STATE', 'BASE', 'MESSAGE'];
  const rows = layers.map((l) => [
    String(l.position),
    l.name,
    showTime(l.created),
    l.entries === null ? '-' : String(l.entries),
    formatBytes(l.fileBytes),
    l.unpackedBytes === null ? '-' : formatBytes(l.unpackedBytes),
    stateOf(l),
    baseOf(l, listing.baseDataSha256),
    showText(l.message),
  ]);
  const right = new Set([0, 3, 4, 5]);
  const widths = header.map((h, c) => Math.max(textWidth(h), ...rows.map((r) => textWidth(r[c]))));
  const line = (cells: string[]) => {
    const text = cells
      .map((cell, c) => {
        if (c === cells.length - 1) return cell;
        return right.has(c) ? ' '.repeat(widths[c] - textWidth(cell)) + cell : padEnd(cell, widths[c]);
      })
      .join('  ')
      .trimEnd();
    return width ? truncateEnd(text, width) : text;
  };
  const out = [line(header), ...rows.map(line)];
  const fileBytes = layers.reduce((n, l) => n + l.fileBytes, 0);
  const unpacked = layers.reduce((n, l) => n + (l.unpackedBytes ?? 0), 0);
  out.push(`${layers.length} layer(s): ${formatBytes(fileBytes)} on the storage, ${formatBytes(unpacked)} in RAM; in ${where}`);
  const other = layers.filter((l) => listing.baseDataSha256 && l.baseDataSha256 && l.baseDataSha256 !== listing.baseDataSha256);
  if (other.length) {
    out.push(
      `${other.length} layer(s) written on another base than ${FILES.base} (${listing.baseDataSha256!.slice(0, 12)}): ` +
        'they still apply, but what they change may differ on this base',
    );
  }
  for (const l of layers) for (const p of l.problems) out.push(`DAMAGED ${l.name}: ${p.part}: ${p.message}`);
  for (const i of listing.ignored) out.push(`ignored ${i.name} (${i.reason}: the boot does not apply it)`);
  return out.join('\n') + '\n';
}
