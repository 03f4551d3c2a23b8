// The initramfs stage: binaries, libraries and kernel modules from the tree, the generated /init
// and mkma-unpack (builder/initramfs.ts), made again only when one of them changed.
import * as path from 'node:path';
import { INITRAMFS_NAME } from '../../format/names.js';
import { formatBytes } from '../../lib/progress.js';
import { buildInitramfs, prepareInitramfs } from '../initramfs.js';
import { INITRAMFS_MODULE_GROUPS, type KernelInfo } from '../kernel.js';
import { decide, digest, fileOptions, type StageInputs } from '../stage.js';
import { announce, report, type BuildContext, type Output } from './context.js';

export interface InitramfsDetails extends Record<string, unknown> {
  modules: string[];
  fastUnpacker: boolean;
}

export async function initramfsStage(b: BuildContext, kernel: KernelInfo): Promise<Output<InitramfsDetails>> {
  const { config: c, reporter } = b;
  const name = 'initramfs';
  const opts = {
    chroot: b.chroot,
    kernel,
    out: path.join(b.staging, INITRAMFS_NAME),
    workDir: b.staging,
    wantedModules: INITRAMFS_MODULE_GROUPS,
    requiredModules: c.initramfsModules,
    ramSize: c.ramSize,
    baseFormat: c.baseFormat,
    version: b.version,
    arch: c.architecture,
    cacheDir: path.join(b.out, '.cache', 'unpacker'),
    onWarning: (w: string) => reporter.warn(w),
  };
  const prep = prepareInitramfs(opts);
  // Not the tree stamp: the initramfs takes binaries, libraries and kernel modules from the
  // tree, which only the bootstrap, the presets (both: a new lineage) and the kernel-modules
  // step change; the settings and mkma-install steps write /etc files and /usr/lib/mkma, which
  // it never reads. So a new hostname re-packs the base but keeps the initramfs.
  const modulesStep = b.tree.steps['kernel modules'];
  const inputs: StageInputs = {
    tree: b.tree.lineage,
    'kernel modules': modulesStep ? digest(JSON.stringify(modulesStep)) : 'untouched',
    kernel: kernel.version,
    init: digest(prep.init),
    modules: digest(...prep.plan.moduleFiles),
    unpacker: prep.unpackerHash,
    'mkma files': b.self,
  };
  const rec = b.records.stage(name);
  const decision = decide(inputs, rec, fileOptions(path.join(b.out, INITRAMFS_NAME), b.rebuild));
  const stage = announce(b, name, decision, `kernel ${kernel.version}`);
  const output = { key: 'initramfs', stage: name, file: INITRAMFS_NAME, decision, inputs } as const;
  if (!decision.run) {
    if (!prep.unpacker.path) reporter.warn(`mkma-unpack not built (${prep.unpacker.reason}): the image boots with busybox cpio, slower`);
    report(b, name, decision, stage);
    return { ...output, details: rec!.details as InitramfsDetails };
  }
  const initrd = await buildInitramfs(opts, prep);
  report(
    b,
    name,
    decision,
    stage,
    `${formatBytes(initrd.bytes)}, ${initrd.modules.length} modules, ${initrd.fastUnpacker ? 'mkma-unpack' : 'busybox cpio'}`,
  );
  return { ...output, details: { modules: initrd.modules, fastUnpacker: initrd.fastUnpacker } };
}
