// `mkma layers compact [FROM..TO] [--into-base]`: consecutive layers merged into one equivalent
// layer, or every active layer folded into a new base (persist/compact.ts).
import { FILES, ZSTD_LEVEL } from '../lib/contract.js';
import { EnvironmentError, EXIT, UsageError } from '../lib/errors.js';
import { createReporter, formatBytes } from '../lib/progress.js';
import { parse, printHelp, renderHelp, requireRoot, type CommandSpec } from './args.js';
import { STORAGE_OPTIONS, storageTarget } from './storage-target.js';

export const SPEC = {
  name: 'layers compact',
  synopsis: '[FROM..TO] [--into-base] [--path DIR | --device DEV --path PATH] [--json]',
  root: true,
  positionals: { max: 1 },
  description: `Merges consecutive layers into one equivalent layer: applied on what lies below, it gives
the identical tree; a deletion of something that is not there below and every entry a later
layer replaced are dropped. FROM and TO are layer names or positions (mkma layers shows both),
either side optional (3.., ..5); default: every active layer. The new layer is named
${FILES.layerPrefix}<TO>+from+<FROM>${FILES.layerSuffix}: its name supersedes the old layers,
so the change is atomic (the boot and every mkma command ignore superseded layers, which are
removed right after; a crash in between leaves them for the next compaction to remove).

--into-base folds every active layer into a new ${FILES.base} (the old one is replaced only
once the new one is complete), then removes the layers.

The work happens in a private tmpfs: what lies below the range is unpacked there, with
mkma-unpack only as far as the range reaches (the paths its layers hold, delete or replace,
and the directories above them), else the whole tree (--extractor ts, and --into-base, which
needs all of it in RAM). Holds mkma persist's lock.`,
  options: [
    { long: 'into-base', help: `fold every active layer into a new ${FILES.base}` },
    { long: 'message', short: 'm', value: 'TEXT', help: 'the new layer\'s message (default "compacted N layers: FROM .. TO")' },
    {
      long: 'level',
      value: 'N',
      help: `zstd level ${ZSTD_LEVEL.min}..${ZSTD_LEVEL.max} (default: the highest level the layers were written at, else the level ${FILES.base} was built with)`,
    },
    ...STORAGE_OPTIONS,
    {
      long: 'extractor',
      value: 'X',
      complete: ['auto', 'native', 'ts'],
      help: 'apply with mkma-unpack (native), TypeScript (ts), or auto',
    },
    { long: 'quiet', short: 'q', help: 'no progress output' },
    { long: 'json', help: 'the result as JSON on stdout' },
  ],
  exitStatus: `0 compacted (or nothing to do with --into-base), 1 failed (nothing changed), 2 bad arguments
(fewer than two layers in the range), 3 not root, or the storage cannot be found or mounted.`,
  examples: ['sudo mkma layers compact', 'sudo mkma layers compact 2..5 --path ./mkma-out', 'sudo mkma layers compact --into-base'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

function parseLevel(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^[0-9]+$/.test(v) || n < ZSTD_LEVEL.min || n > ZSTD_LEVEL.max)
    throw new UsageError(
      `layers compact: --level must be an integer from ${ZSTD_LEVEL.min} to ${ZSTD_LEVEL.max}, not ${JSON.stringify(v)}`,
    );
  return n;
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const level = parseLevel(values.level);
  const range = positionals[0];
  if (range !== undefined && values['into-base']) throw new UsageError('layers compact: --into-base folds every active layer: no range');
  const extractor = values.extractor ?? 'auto';
  if (!['auto', 'native', 'ts'].includes(extractor))
    throw new UsageError(`layers compact: --extractor is auto, native or ts, not ${extractor}`);
  requireRoot('mkma layers compact', 'it mounts a tmpfs and an overlay');
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  let unpacker: string | null = null;
  if (extractor !== 'ts') {
    const { buildUnpacker } = await import('../builder/unpacker.js');
    const u = buildUnpacker({ cacheDir: process.env.MKMA_CACHE_DIR ?? '/var/cache/mkma/unpacker' });
    if (!u.path && extractor === 'native') throw new EnvironmentError(`layers compact: mkma-unpack cannot be built here: ${u.reason}`);
    unpacker = u.path;
  }
  const { compactLayers, foldIntoBase } = await import('../persist/compact.js');
  const target = storageTarget(values);
  try {
    for (const w of target.warnings) reporter.warn(w);
    const common = { imagesDir: target.imagesDir, level, unpacker, reporter };
    if (values['into-base']) {
      const r = await foldIntoBase(common);
      for (const c of r.cleaned) reporter.info(`    removed ${c} (left by an interrupted compaction)`);
      if (values.json) process.stdout.write(JSON.stringify({ images: target.description, intoBase: true, ...r }, null, 2) + '\n');
      else if (!r.folded.length) process.stdout.write(`mkma: no active layers in ${target.description}: the base is unchanged\n`);
      else
        process.stdout.write(
          `mkma: folded ${r.folded.length} layer(s) into ${FILES.base} (${formatBytes(r.baseBytesBefore)} → ${formatBytes(r.baseBytesAfter)})\n` +
            `  in ${target.description}\n`,
        );
      return EXIT.ok;
    }
    const r = await compactLayers({ ...common, range, message: values.message });
    for (const c of r.cleaned) reporter.info(`    removed ${c} (left by an interrupted compaction)`);
    if (values.json) process.stdout.write(JSON.stringify({ images: target.description, ...r }, null, 2) + '\n');
    else
      process.stdout.write(
        `mkma: compacted ${r.replaced.length} layers (${formatBytes(r.bytesBefore)}) into one (${formatBytes(r.bytesAfter)}, ${r.entries} entries, zstd level ${r.level})\n` +
          `  ${r.layer}\n  in ${target.description}\n`,
      );
    return EXIT.ok;
  } finally {
    target.release();
  }
}
