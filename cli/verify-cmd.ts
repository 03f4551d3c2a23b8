// `mkma verify`: checks base.cpio.zst and every layer of the images directory (manifest, shard
// table, data hash; format/verify.ts) without extracting anything.
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { EXIT } from '../lib/errors.js';
import { formatBytes } from '../lib/progress.js';
import type { ImageCheck, ImagesCheck } from '../format/verify.js';
import { parse, printHelp, renderHelp, type CommandSpec } from './args.js';
import { readImages, STORAGE_OPTIONS, verifyProgress } from './storage-target.js';

export const SPEC = {
  name: 'verify',
  synopsis: '[--path DIR | --device DEV --path PATH] [--json]',
  description: `Checks ${FILES.base} and every layer (${FILES.layerPrefix}*${FILES.layerSuffix}, in boot order) of an
images directory without unpacking them: the manifest at the end of each file (its frame,
footer and fields, and its data size against the file's), the shard table (it covers the data
exactly, and each shard begins a zstd frame), and the data hash (the sha256 of the data
against the manifest's data_sha256). Each file is read once, as a stream.

On the booted system, without --path, the images are the ones the system booted from (found
as mkma persist finds them; the device is mounted read-only if nobody has it mounted).
Files named like layers that the boot ignores are listed, not checked.`,
  options: [...STORAGE_OPTIONS, { long: 'json', help: 'the report as JSON on stdout (each file, ok or its problems)' }],
  exitStatus: `0 every image is good, 1 an image is damaged or missing (each one is named with
what is wrong), 2 bad arguments, 3 the storage cannot be found or mounted.`,
  examples: ['mkma verify --path ./mkma-out', 'sudo mkma verify', 'sudo mkma verify --device LABEL=MKMA --path /mkma --json'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const { verifyImages } = await import('../format/verify.js');
  const { result: report, where } = await readImages(values, async (dir, reporter, description) => {
    const stage = reporter.stage('verify', description);
    const r = await verifyImages(dir, verifyProgress(stage));
    const all = [r.base, ...r.layers];
    stage.done(`${all.length} image(s), ${all.filter((c) => c.problems.length).length} damaged`);
    return r;
  });
  const bad = [report.base, ...report.layers].filter((c) => c.problems.length);
  if (values.json) {
    const file = (c: ImageCheck) => ({
      name: path.basename(c.file),
      kind: c === report.base ? 'base' : 'layer',
      ok: !c.problems.length,
      bytes: c.fileBytes,
      problems: c.problems,
    });
    const out = { images: where, ok: !bad.length, files: [report.base, ...report.layers].map(file), ignored: report.ignored };
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else {
    process.stdout.write(formatVerify(report));
  }
  return bad.length ? EXIT.failed : EXIT.ok;
}

/** One line per file, "ok" or what is wrong with it, and a last line that sums up. */
export function formatVerify(report: ImagesCheck): string {
  const all = [report.base, ...report.layers];
  const width = Math.max(...all.map((c) => path.basename(c.file).length));
  const lines: string[] = [];
  for (const c of all) {
    const name = path.basename(c.file).padEnd(width);
    if (!c.problems.length) lines.push(`ok       ${name}  ${formatBytes(c.fileBytes)}`);
    c.problems.forEach((p, i) => lines.push(`${i ? '       ' : 'DAMAGED'}  ${name}  ${p.part}: ${p.message}`));
  }
  for (const i of report.ignored) lines.push(`ignored  ${i.name} (${i.reason}: the boot does not apply it)`);
  const bad = all.filter((c) => c.problems.length);
  lines.push(
    bad.length
      ? `${bad.length} of ${all.length} image(s) damaged: ${bad.map((c) => path.basename(c.file)).join(', ')}`
      : `all ${all.length} image(s) good`,
  );
  return lines.join('\n') + '\n';
}
