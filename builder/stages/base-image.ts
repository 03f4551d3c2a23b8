// The base image stage (base_format = "erofs" | "squashfs"): base.erofs / base.squashfs from
// base.cpio.zst (builder/base-image.ts), beside it; made again when the base, the format or
// mkma changed, or the image is not the file recorded. With base_format = "cpio": nothing.
import * as path from 'node:path';
import { BASE_NAME } from '../../format/names.js';
import { formatBytes } from '../../lib/progress.js';
import { BASE_IMAGE_NAME, writeBaseImage, type ImageFormat } from '../base-image.js';
import { buildUnpacker } from '../unpacker.js';
import { decide, digest, fileOptions, type StageInputs } from '../stage.js';
import { announce, report, type BuildContext, type Output } from './context.js';
import type { BaseDetails } from './pack-base.js';

export async function baseImageStage(b: BuildContext, base: Output<BaseDetails>): Promise<Output | null> {
  const format = b.config.baseFormat;
  if (format === 'cpio') return null;
  const name = 'base image';
  const file = BASE_IMAGE_NAME[format as ImageFormat];
  const inputs: StageInputs = { base: digest(JSON.stringify(base.inputs)), format, 'mkma files': b.self };
  const rec = b.records.stage(name);
  const decision = decide(inputs, rec, fileOptions(path.join(b.out, file), b.rebuild));
  const stage = announce(b, name, decision, format);
  const output = { key: 'baseImage', stage: name, file, decision, inputs, details: {} } as const;
  if (!decision.run) {
    report(b, name, decision, stage);
    return output;
  }
  const basePath = path.join(base.decision.run ? b.staging : b.out, BASE_NAME);
  const unpacker = buildUnpacker({ cacheDir: path.join(b.out, '.cache', 'unpacker') }).path;
  const r = await writeBaseImage({ format: format as ImageFormat, basePath, outDir: b.staging, workDir: b.staging, unpacker });
  report(b, name, decision, stage, `${file}: ${formatBytes(r.bytes)}`);
  return output;
}
