// `mkma build`: config → bootstrap → configure → pack base → initramfs → outputs.
// Outputs are written into OUT/.staging and renamed into place only when every stage
// succeeded, so a failed build leaves the previous good outputs untouched.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config } from '../config/types.js';
import { configHash, describeConfig } from '../config/load.js';
import { formatBytes, type Reporter } from '../cli/progress.js';
import { packTree } from '../format/pack.js';
import { BASE_NAME, BUILD_INFO_NAME, INITRAMFS_NAME, KERNEL_NAME } from '../format/names.js';
import { fsyncDir } from '../format/writer.js';
import { baseExclude } from './base.js';
import { bootstrap, reusableChroot } from './bootstrap.js';
import { BuildCache, chainKeys, type StageReport } from './cache.js';
import { unmountUnder } from './chroot.js';
import { presetHashes, runPresets } from './presets.js';
import type { Preset } from '../config/preset.js';
import { findStorage, grubEntry, kernelCommandLine, systemdBootEntry, type StorageLocation } from './bootentries.js';
import { configure, packageRoot } from './configure.js';
import { buildInitramfs } from './initramfs.js';
import { findImageKernel, INITRAMFS_MODULE_GROUPS, INITRAMFS_MODULES, installHostKernel, trimModules, type KernelInfo } from './kernel.js';

export interface BuildOptions {
  config: Config;
  out: string;
  rebuild: boolean;
  hostKernel: boolean;
  reporter: Reporter;
  /** applied in order after configure (config/preset.ts loadPresets) */
  presets?: Preset[];
  /** offer retry / skip / shell / abort when a preset fails (stdin and stdout are a terminal) */
  interactive?: boolean;
}

export interface OutputInfo {
  path: string;
  bytes: number;
  sha256: string;
}

export interface BuildResult {
  mkmaVersion: string;
  hostname: string;
  kernelVersion: string;
  configHash: string;
  bootstrap: 'fresh' | 'reused';
  /** what ran and what came from the cache: bootstrap, then each preset in order */
  stages: StageReport[];
  /** snapshots kept in OUT/.cache for preset rebuilds, and their size */
  cache: { snapshots: number; bytes: number };
  outputs: { base: OutputInfo & { unpackedBytes: number; entries: number }; initramfs: OutputInfo; kernel: OutputInfo };
  initramfsModules: string[];
  storage: StorageLocation | null;
  cmdline: string;
  grub: string | null;
  systemdBoot: string | null;
  timings: Record<string, number>;
}

export class BuildError extends Error {}

export function mkmaVersion(): string {
  return (JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

function sha256File(p: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(p, 'r');
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (!n) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

const GiB = 2 ** 30;

/** mkdir -p one component at a time: Node's recursive mkdir spins forever under /proc. */
function mkdirParents(dir: string): void {
  const missing: string[] = [];
  let d = path.resolve(dir);
  while (!fs.existsSync(d)) {
    missing.unshift(d);
    d = path.dirname(d);
  }
  for (const m of missing) fs.mkdirSync(m);
}

/** Refuses early, before anything is touched, when OUT cannot take the build. */
export function checkOutputDir(out: string, needBytes: number): void {
  try {
    mkdirParents(out);
    const probe = path.join(out, `.mkma-write-test-${process.pid}`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
  } catch (e) {
    throw new BuildError(`output directory ${out} is not writable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): choose another with --out`);
  }
  const st = fs.statfsSync(out);
  const free = st.bavail * st.bsize;
  if (free < needBytes) {
    throw new BuildError(
      `output directory ${out} has ${formatBytes(free)} free; this build needs about ${formatBytes(needBytes)}: free some space or choose another with --out`,
    );
  }
}

export async function build(o: BuildOptions): Promise<BuildResult> {
  const { config: c, reporter } = o;
  const out = path.resolve(o.out);
  const hash = configHash(c, [o.hostKernel ? 'host-kernel' : 'image-kernel']);
  const presets = o.presets ?? [];
  const cache = new BuildCache(out);
  const keys = chainKeys(hash, presetHashes(presets));
  const plan = cache.plan(keys, { rebuild: o.rebuild, legacyReusable: !o.rebuild && reusableChroot(out, hash) });
  const reuse = plan.start >= 0;
  checkOutputDir(out, reuse ? 0.5 * GiB : 2 * GiB);
  const chroot = path.join(out, 'chroot');
  const stages: StageReport[] = [];
  const staging = path.join(out, '.staging');
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true });

  try {
    // 1. bootstrap
    const restored = plan.start <= 0 ? 'the bootstrapped tree' : `the tree after preset ${presets[plan.start - 1].name}`;
    const s1 = reporter.stage('bootstrap', !reuse ? `mmdebstrap ${c.suite} (${c.variant}, ${c.architecture}) from ${c.mirror}`
      : plan.from === 'snapshot' ? `reused: restoring ${restored} from OUT/.cache`
      : `reused: configuration${plan.start > 0 ? ` and presets up to ${presets[plan.start - 1].name}` : ''} unchanged, reusing OUT/chroot`);
    if (!reuse) {
      if (o.rebuild) cache.clear();
      // nothing of an interrupted run may stay mounted in a tree that is replaced
      unmountUnder(chroot);
      await bootstrap(c, out, hash, s1);
      cache.writeState(keys[0]);
    } else if (plan.from === 'snapshot') cache.restore(keys[plan.start]);
    s1.done(reuse ? 'reused' : 'fresh bootstrap');
    stages.push({ stage: 'bootstrap', status: reuse ? 'reused' : 'ran' });

    // 2. configure
    const s2 = reporter.stage('configure', `hostname ${c.hostname}`);
    const kernel: KernelInfo = o.hostKernel ? installHostKernel(chroot) : findImageKernel(chroot);
    let trimmed = '';
    if (c.kernelModules !== 'all') {
      const t = trimModules(kernel, [...c.kernelModules, ...INITRAMFS_MODULES, ...c.initramfsModules], chroot);
      trimmed = `, kernel modules trimmed to ${t.kept} (removed ${t.removed})`;
    }
    const conf = configure(c, chroot);
    s2.done(`kernel ${kernel.version}${trimmed}${conf.mkmaBytes ? `, mkma installed (${formatBytes(conf.mkmaBytes)})` : ''}`);

    // 2b. presets, each after the one before, from the cache where their inputs are unchanged
    if (presets.length) {
      stages.push(...await runPresets({ presets, keys, start: plan.start, cache, reporter, interactive: !!o.interactive }));
      // what configure owns (hostname, root password, fstab) ends as mkma.toml says, whether
      // the presets ran now or came from the cache
      configure({ ...c, installMkma: false }, chroot);
    }
    // only the states a change to one of these presets restarts from are kept
    cache.prune(keys.slice(0, presets.length));

    // 3. base
    checkOutputDir(out, 0.5 * GiB);
    const s3 = reporter.stage('pack base', `zstd level ${c.compressionLevel}`);
    const base = await packTree(chroot, path.join(staging, BASE_NAME), {
      kind: 'base',
      level: c.compressionLevel,
      exclude: baseExclude,
      onProgress: (p) => s3.progress(`${p.entries} entries, ${formatBytes(p.bytesIn)} → ${formatBytes(p.bytesOut)}`),
      onWarning: (w) => reporter.warn(w),
    });
    if (base.xattrWarnings) reporter.warn(`getfattr: ${base.xattrWarnings.split('\n')[0]}`);
    s3.done(`${base.stats.entries} entries, ${formatBytes(base.cpioBytes)} → ${formatBytes(base.fileBytes)}, ${base.manifest.xattrs.length} paths with xattrs`);

    // 4. initramfs
    const s4 = reporter.stage('initramfs');
    const initrd = await buildInitramfs({
      chroot, kernel, out: path.join(staging, INITRAMFS_NAME), workDir: staging,
      wantedModules: INITRAMFS_MODULE_GROUPS, requiredModules: c.initramfsModules, ramSize: c.ramSize, version: mkmaVersion(),
      arch: c.architecture, cacheDir: path.join(out, '.cache', 'unpacker'), onWarning: (w) => reporter.warn(w),
    });
    s4.done(`${formatBytes(initrd.bytes)}, ${initrd.modules.length} modules, ${initrd.fastUnpacker ? 'mkma-unpack' : 'busybox cpio'}`);

    // 5. outputs, atomically
    fs.copyFileSync(kernel.image, path.join(staging, KERNEL_NAME));
    const info = (name: string): OutputInfo => {
      const p = path.join(staging, name);
      return { path: path.join(out, name), bytes: fs.statSync(p).size, sha256: sha256File(p) };
    };
    const storage = findStorage(out);
    const cmdline = kernelCommandLine(storage ?? { device: '<device holding the images>', imagesPath: out });
    const result: BuildResult = {
      mkmaVersion: mkmaVersion(),
      hostname: c.hostname,
      kernelVersion: kernel.version,
      configHash: hash,
      bootstrap: reuse ? 'reused' : 'fresh',
      stages,
      cache: cache.usage(),
      outputs: {
        base: { ...info(BASE_NAME), unpackedBytes: base.manifest.unpackedBytes, entries: base.manifest.entries },
        initramfs: info(INITRAMFS_NAME),
        kernel: info(KERNEL_NAME),
      },
      initramfsModules: initrd.modules,
      storage,
      cmdline,
      grub: storage ? grubEntry(c.hostname, storage) : null,
      systemdBoot: storage ? systemdBootEntry(c.hostname, storage) : null,
      timings: reporter.timings,
    };
    fs.writeFileSync(
      path.join(staging, BUILD_INFO_NAME),
      JSON.stringify({ ...result, config: describeConfig(c), created: new Date().toISOString() }, null, 2) + '\n',
    );
    for (const name of [BASE_NAME, INITRAMFS_NAME, KERNEL_NAME, BUILD_INFO_NAME]) {
      fs.renameSync(path.join(staging, name), path.join(out, name));
    }
    fsyncDir(out);
    return result;
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}
