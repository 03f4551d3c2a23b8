// `mkma build`: the configuration, then its stages in order, each a module of builder/stages/
// that declares its inputs, decides with the one mechanism of builder/stage.ts whether its
// recorded result still holds (and says why), runs or reuses, and records what it made.
// Outputs are made in OUT/.staging and renamed into place only when every stage succeeded, so a
// failed build leaves the previous good outputs untouched.
import * as fs from 'node:fs';
import { bootstrapStage } from './stages/bootstrap.js';
import { baseImageStage } from './stages/base-image.js';
import { configureStage } from './stages/configure.js';
import { openBuild, type BuildOptions } from './stages/context.js';
import { initramfsStage } from './stages/initramfs.js';
import { kernelStage } from './stages/kernel.js';
import { outputsStage, type BuildResult } from './stages/outputs.js';
import { packBaseStage } from './stages/pack-base.js';
import { presetsStage } from './stages/presets.js';

export type { BuildOptions } from './stages/context.js';
export type { BuildResult, OutputInfo } from './stages/outputs.js';
export { mkmaVersion } from './configure.js';

export async function build(o: BuildOptions): Promise<BuildResult> {
  const b = openBuild(o);
  try {
    const reused = await bootstrapStage(b);
    const kernel = configureStage(b);
    await presetsStage(b);
    // the tree is final for this build: a new stamp if it changed
    b.tree.commit();
    const base = await packBaseStage(b);
    const baseImage = await baseImageStage(b, base);
    const initramfs = await initramfsStage(b, kernel);
    const vmlinuz = kernelStage(b, kernel);
    return outputsStage(b, kernel, reused, { base, initramfs, kernel: vmlinuz, baseImage });
  } finally {
    fs.rmSync(b.staging, { recursive: true, force: true });
  }
}
