// The configure stage: three steps that edit the tree in place, each run only when its inputs
// (the tree's lineage among them) changed — the kernel modules (--host-kernel, trimming), the
// system settings (hostname, root password, fstab, the test hook) and mkma's own files.
import * as path from 'node:path';
import { formatBytes } from '../../lib/progress.js';
import { configureInputs, configureSystem, installMkma } from '../configure.js';
import {
  findImageKernel,
  hostKernelInfo,
  hostKernelStamp,
  INITRAMFS_MODULES,
  installHostKernel,
  trimModules,
  type KernelInfo,
} from '../kernel.js';
import { installScanHelper } from '../scan-helper.js';
import { decide, digest, type Decision, type StageInputs } from '../stage.js';
import { announce, report, type BuildContext } from './context.js';

/** Each step's inputs; the kernel-modules step only when it has something to do. */
function stepInputs(b: BuildContext, kernel: KernelInfo, keep: string[] | null): Record<string, StageInputs> {
  const { config: c, tree, self } = b;
  const steps: Record<string, StageInputs> = {};
  if (b.options.hostKernel || keep) {
    steps['kernel modules'] = {
      tree: tree.lineage,
      kernel: b.options.hostKernel ? `host ${hostKernelStamp()}` : `image ${kernel.version}`,
      keep: keep ? digest(...keep) : 'all',
      'mkma files': self,
    };
  }
  steps.settings = { tree: tree.lineage, ...configureInputs(c), 'mkma files': self };
  if (c.installMkma) steps['mkma install'] = { tree: tree.lineage, 'mkma files': self };
  return steps;
}

/** Runs the configure steps whose inputs changed; returns the image's kernel. */
export function configureStage(b: BuildContext): KernelInfo {
  const { config: c, chroot, tree } = b;
  const kernel = b.options.hostKernel ? hostKernelInfo(chroot) : findImageKernel(chroot);
  const keep = c.kernelModules === 'all' ? null : [...new Set([...c.kernelModules, ...INITRAMFS_MODULES, ...c.initramfsModules])].sort();
  tree.steps = stepInputs(b, kernel, keep);
  const steps = Object.entries(tree.steps).map(([name, inputs]) => {
    const before = b.records.tree.steps[name];
    return [name, decide(inputs, before && { inputs: before }, { rebuild: b.rebuild, invalid: tree.stale })] as const;
  });
  const ran = steps.filter(([, d]) => d.run);
  const d: Decision = ran.length
    ? { run: true, reason: ran.map(([n, s]) => `${n}: ${s.reason}`).join('; ') }
    : { run: false, reason: `inputs unchanged (${steps.map(([n]) => n).join(', ')})` };
  const stage = announce(b, 'configure', d, `hostname ${c.hostname}`);
  const runs = (name: string) => steps.some(([n, s]) => n === name && s.run);
  const did: string[] = [`kernel ${kernel.version}`];
  if (d.run) tree.touch();
  if (runs('kernel modules')) {
    if (b.options.hostKernel) installHostKernel(chroot);
    if (keep) {
      const t = trimModules(kernel, keep, chroot);
      did.push(`kernel modules trimmed to ${t.kept} (removed ${t.removed})`);
    } else did.push('host kernel modules copied');
  }
  if (runs('settings')) {
    configureSystem(c, chroot);
    did.push(`hostname ${c.hostname}`);
  }
  if (runs('mkma install')) {
    did.push(`mkma installed (${formatBytes(installMkma(chroot).bytes)})`);
    const scan = installScanHelper(chroot, path.join(b.out, '.cache', 'scan'));
    if (!scan.installed) b.reporter.warn(`mkma-scan not installed (${scan.reason}): mkma persist in the image scans with find, slower`);
  }
  for (const [n, s] of steps) if (!s.run) did.push(`${n} reused`);
  report(b, 'configure', d, stage, d.run ? did.join(', ') : `reused (${did[0]})`);
  return kernel;
}
