// `mkma unpack`: on the host, exactly what the initramfs does at boot (format/apply.ts), with
// the initramfs' own extractor when it can be built here.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { EnvironmentError, EXIT, UsageError } from '../lib/errors.js';
import { createReporter } from '../lib/progress.js';
import { parse, printHelp, renderHelp, requireRoot, type CommandSpec } from './args.js';

export const SPEC = {
  name: 'unpack',
  synopsis: '--images DIR --into DIR [--extractor auto|native|ts] [--json]',
  root: true,
  description: `Does on this machine exactly what the initramfs does at boot: unpacks DIR/base.cpio.zst into
an empty directory and applies every persistence.*.cpio.zst in order (deletions, replaced
directories, xattrs). A damaged layer is skipped whole and reported (exit status 1).

--extractor: native is mkma-unpack, the initramfs' extractor, compiled here once and cached
in $MKMA_CACHE_DIR or /var/cache/mkma/unpacker (needs gcc libc6-dev libzstd-dev); ts is
mkma's TypeScript reader (same rules, slower); auto (default) is native when it can be built.`,
  options: [
    { long: 'images', short: 'i', value: 'DIR', complete: 'dir', help: 'directory holding base.cpio.zst and the layers' },
    { long: 'into', value: 'DIR', complete: 'dir', help: 'empty (or new) directory to unpack into' },
    { long: 'extractor', value: 'X', complete: ['auto', 'native', 'ts'], help: 'auto, native or ts (above)' },
    { long: 'quiet', short: 'q', help: 'no progress and no line per layer (skipped layers and warnings still show)' },
    { long: 'json', help: 'print the report (base, each layer applied or skipped) as JSON on stdout' },
  ],
  exitStatus: `0 every layer applied, 1 a layer was skipped or unpacking failed, 2 bad
arguments (no base image there, a target that is not empty), 3 not root.`,
  examples: ['sudo mkma unpack --images /srv/mkma --into /tmp/root'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

/** The images directory and target checked before anything is written, with what to do instead. */
function checkPaths(images: string, into: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(images);
  } catch {
    throw new UsageError(`unpack: --images ${images}: no such directory`);
  }
  if (!st.isDirectory()) throw new UsageError(`unpack: --images ${images} is not a directory (give the directory holding ${FILES.base})`);
  if (!fs.existsSync(path.join(images, FILES.base))) {
    throw new UsageError(
      `unpack: no ${FILES.base} in ${images}: give an output directory of mkma build (./mkma-out by default) or the images directory of a boot device`,
    );
  }
  if (fs.existsSync(into)) {
    if (!fs.statSync(into).isDirectory()) throw new UsageError(`unpack: --into ${into} is not a directory`);
    if (fs.readdirSync(into).length) throw new UsageError(`unpack: ${into} is not empty (mkma unpack builds a tree from scratch)`);
  }
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const extractor = values.extractor ?? 'auto';
  if (!['auto', 'native', 'ts'].includes(extractor)) throw new UsageError(`unpack: --extractor is auto, native or ts, not ${extractor}`);
  if (!values.images || !values.into) throw new UsageError('unpack: --images DIR and --into DIR are required');
  requireRoot('mkma unpack');
  checkPaths(values.images, values.into);
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  const { unpackImages } = await import('../format/apply.js');
  let unpacker: string | null = null;
  if (extractor !== 'ts') {
    // the initramfs' own extractor, compiled once and cached (builder/unpacker.ts)
    const { buildUnpacker } = await import('../builder/unpacker.js');
    const u = buildUnpacker({ cacheDir: process.env.MKMA_CACHE_DIR ?? '/var/cache/mkma/unpacker' });
    if (!u.path && extractor === 'native') throw new EnvironmentError(`unpack: mkma-unpack cannot be built here: ${u.reason}`);
    if (!u.path) reporter.info(`note: using the TypeScript extractor (mkma-unpack: ${u.reason})`);
    unpacker = u.path;
  }
  const stage = reporter.stage('unpack', `${values.images} into ${values.into} (${unpacker ? 'mkma-unpack' : 'TypeScript extractor'})`);
  const report = await unpackImages(
    values.images,
    values.into,
    (r) => {
      if (r.applied) reporter.info(`    applied ${path.basename(r.file)} (${r.entries} entries, ${r.deleted} removed)`);
      else reporter.warn(`LAYER SKIPPED ${path.basename(r.file)}: ${r.reason}`);
      for (const w of r.warnings) reporter.warn(`${path.basename(r.file)}: ${w}`);
    },
    unpacker,
    (done, total) => stage.count(done, total, 'read'),
  );
  for (const w of [...report.base.warnings, ...report.warnings]) reporter.warn(w);
  const applied = report.layers.filter((l) => l.applied).length;
  stage.done(`base (${report.base.entries} entries) and ${applied} of ${report.layers.length} layer(s)`);
  if (values.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  return report.layers.some((l) => !l.applied) ? EXIT.failed : EXIT.ok;
}
