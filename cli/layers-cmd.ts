// `mkma layers`: the layers of the images directory in boot order, with what each manifest
// says and (--verify) whether each one's data is intact (format/layer-info.ts).
import { FILES } from '../lib/contract.js';
import { EXIT } from '../lib/errors.js';
import { formatBytes } from '../lib/progress.js';
import type { LayerInfo, LayersListing } from '../format/layer-info.js';
import { padEnd, textWidth, truncateEnd } from '../persist/text.js';
import { parse, printHelp, renderHelp, type CommandSpec } from './args.js';
import { readImages, STORAGE_OPTIONS, verifyProgress } from './storage-target.js';

export const SPEC = {
  name: 'layers',
  synopsis: '[--verify] [--path DIR | --device DEV --path PATH] [--json]',
  description: `Lists the layers (${FILES.layerPrefix}*${FILES.layerSuffix}) of an images directory in boot order, the
order the init applies them: for each its name, when it was created (UTC), the message given
to mkma persist --message, its entries, its size compressed and unpacked (the RAM it takes),
its state (active: applied at every boot), and the base it was written on (the first 12 digits
of that base's data_sha256; "(other)" when it is not the directory's base.cpio.zst, "unknown"
for layers of an older mkma).

A layer whose manifest cannot be read is marked DAMAGED (the boot skips it). --verify also
checks each layer's data hash and shard table, as mkma verify does.

On the booted system, without --path, the images are the ones the system booted from (found
as mkma persist finds them; the device is mounted read-only if nobody has it mounted).`,
  options: [
    { long: 'verify', help: "check each layer's data hash and shard table (reads every layer whole)" },
    ...STORAGE_OPTIONS,
    { long: 'json', help: 'the list as JSON on stdout' },
  ],
  exitStatus: `0 listed (every layer readable, and intact with --verify), 1 a layer is damaged (it
is named), 2 bad arguments, 3 the storage cannot be found or mounted.`,
  examples: ['mkma layers --path ./mkma-out', 'sudo mkma layers --verify', 'sudo mkma layers --json'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const { describeLayers } = await import('../format/layer-info.js');
  const { result: listing, where } = await readImages(values, async (dir, reporter, description) => {
    if (!values.verify) return describeLayers(dir);
    const stage = reporter.stage('verify', description);
    const l = await describeLayers(dir, { verify: true, ...verifyProgress(stage) });
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

function stateOf(l: LayerInfo): string {
  if (l.problems.length) return `${l.state}, DAMAGED`;
  return l.verified ? `${l.state}, verified` : l.state;
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
