// The pack base stage: OUT/chroot into base.cpio.zst (format/pack.ts), when the tree, the zstd
// level or mkma changed, or the base is not the file recorded.
import * as path from 'node:path';
import { packTree } from '../../format/pack.js';
import { BASE_NAME } from '../../format/names.js';
import { formatBytes } from '../../lib/progress.js';
import { baseExclude } from '../base.js';
import { decide, fileOptions, type StageInputs } from '../stage.js';
import { announce, checkOutputDir, GiB, report, SECRET_FILE_MODE, type BuildContext, type Output } from './context.js';

export interface BaseDetails extends Record<string, unknown> {
  unpackedBytes: number;
  entries: number;
}

export async function packBaseStage(b: BuildContext): Promise<Output<BaseDetails>> {
  const { config: c, reporter } = b;
  const name = 'pack base';
  const inputs: StageInputs = { tree: b.tree.stamp, level: String(c.compressionLevel), 'mkma files': b.self };
  const rec = b.records.stage(name);
  const decision = decide(inputs, rec, fileOptions(path.join(b.out, BASE_NAME), b.rebuild));
  const stage = announce(b, name, decision, `zstd level ${c.compressionLevel}`);
  const output = { key: 'base', stage: name, file: BASE_NAME, decision, inputs } as const;
  if (!decision.run) {
    report(b, name, decision, stage);
    return { ...output, details: rec!.details as BaseDetails };
  }
  checkOutputDir(b.out, 0.5 * GiB);
  const base = await packTree(b.chroot, path.join(b.staging, BASE_NAME), {
    kind: 'base',
    level: c.compressionLevel,
    // it holds /etc/shadow
    mode: SECRET_FILE_MODE,
    exclude: baseExclude,
    onProgress: (p) => stage.progress(`${p.entries} entries, ${formatBytes(p.bytesIn)} → ${formatBytes(p.bytesOut)}`),
    onWarning: (w) => reporter.warn(w),
  });
  if (base.xattrWarnings) reporter.warn(`getfattr: ${base.xattrWarnings.split('\n')[0]}`);
  report(
    b,
    name,
    decision,
    stage,
    `${base.stats.entries} entries, ${formatBytes(base.cpioBytes)} → ${formatBytes(base.fileBytes)}, ${base.manifest.xattrs.length} paths with xattrs`,
  );
  return { ...output, details: { unpackedBytes: base.manifest.unpackedBytes, entries: base.manifest.entries } };
}
