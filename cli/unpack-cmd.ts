// `mkma unpack`: on the host, exactly what the initramfs does at boot (format/apply.ts), with
// the initramfs' own extractor when it can be built here.
import { EnvironmentError, EXIT, UsageError } from '../lib/errors.js';
import { parse, printHelp, requireRoot } from './args.js';

export const HELP = `Usage: sudo mkma unpack --images DIR --into DIR [--json] [--extractor auto|native|ts]

Does on this machine exactly what the initramfs does at boot: unpacks DIR/base.cpio.zst into
an empty directory and applies every persistence.*.cpio.zst in order (deletions, replaced
directories, xattrs). A damaged layer is skipped whole and reported (exit status 1).

--extractor: native is mkma-unpack, the initramfs' extractor, compiled here once and cached
in $MKMA_CACHE_DIR or /var/cache/mkma/unpacker (needs gcc libc6-dev libzstd-dev); ts is
mkma's TypeScript reader (same rules, slower); auto (default) is native when it can be built.

Options:
  -i, --images DIR     directory holding base.cpio.zst and the layers
      --into DIR       empty (or new) directory to unpack into
      --json           print the report (base, each layer applied or skipped) as JSON on stdout
      --extractor X    auto, native or ts (above)

Exit status: 0 every layer applied, 1 a layer was skipped or unpacking failed, 2 bad
arguments, 3 not root.

Example: sudo mkma unpack --images /srv/mkma --into /tmp/root
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parse('unpack', argv, {
    images: { type: 'string', short: 'i' },
    into: { type: 'string' },
    json: { type: 'boolean' },
    extractor: { type: 'string' },
  });
  if (values.help) return printHelp(HELP);
  const extractor = values.extractor ?? 'auto';
  if (!['auto', 'native', 'ts'].includes(extractor)) throw new UsageError(`unpack: --extractor is auto, native or ts, not ${extractor}`);
  if (!values.images || !values.into) throw new UsageError('unpack: --images DIR and --into DIR are required');
  requireRoot('mkma unpack');
  const fs = await import('node:fs');
  if (fs.existsSync(values.into) && fs.readdirSync(values.into).length) {
    throw new UsageError(`unpack: ${values.into} is not empty (mkma unpack builds a tree from scratch)`);
  }
  const { unpackImages } = await import('../format/apply.js');
  let unpacker: string | null = null;
  if (extractor !== 'ts') {
    // the initramfs' own extractor, compiled once and cached (builder/unpacker.ts)
    const { buildUnpacker } = await import('../builder/unpacker.js');
    const u = buildUnpacker({ cacheDir: process.env.MKMA_CACHE_DIR ?? '/var/cache/mkma/unpacker' });
    if (!u.path && extractor === 'native') throw new EnvironmentError(`unpack: mkma-unpack cannot be built here: ${u.reason}`);
    if (!u.path && !values.json) process.stderr.write(`note: using the TypeScript extractor (mkma-unpack: ${u.reason})\n`);
    unpacker = u.path;
  }
  const report = await unpackImages(
    values.images,
    values.into,
    (r) => {
      if (!values.json) {
        process.stderr.write(
          r.applied ? `applied ${r.file} (${r.entries} entries, ${r.deleted} removed)\n` : `LAYER SKIPPED ${r.file}: ${r.reason}\n`,
        );
        for (const w of r.warnings) process.stderr.write(`warning: ${r.file}: ${w}\n`);
      }
    },
    unpacker,
  );
  if (!values.json) for (const w of [...report.base.warnings, ...report.warnings]) process.stderr.write(`warning: ${w}\n`);
  if (values.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else
    process.stderr.write(
      `unpacked base (${report.base.entries} entries) and ${report.layers.filter((l) => l.applied).length} layer(s) into ${values.into}\n`,
    );
  return report.layers.some((l) => !l.applied) ? EXIT.failed : EXIT.ok;
}
