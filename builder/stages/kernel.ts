// The kernel stage: the image's kernel (or the host's, with --host-kernel) copied out as
// vmlinuz when it is another file than the one recorded.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KERNEL_NAME } from '../../format/names.js';
import type { KernelInfo } from '../kernel.js';
import { decide, fileOptions, statOutput, type StageInputs } from '../stage.js';
import { report, type BuildContext, type Output } from './context.js';

export function kernelStage(b: BuildContext, kernel: KernelInfo): Output {
  const name = 'kernel';
  const st = statOutput(kernel.image);
  const inputs: StageInputs = { kernel: `${kernel.version} ${kernel.image} ${st ? `${st.bytes}/${st.mtimeNs}` : 'missing'}` };
  const decision = decide(inputs, b.records.stage(name), fileOptions(path.join(b.out, KERNEL_NAME), b.rebuild));
  if (decision.run) fs.copyFileSync(kernel.image, path.join(b.staging, KERNEL_NAME));
  // (no progress line: a copy of a few MiB)
  report(b, name, decision);
  return { key: 'kernel', stage: name, file: KERNEL_NAME, decision, inputs, details: {} };
}
