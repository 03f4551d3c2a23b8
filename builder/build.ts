// `mkma build`: config → bootstrap → configure → pack base → initramfs → outputs.
// Outputs are written into OUT/.staging and renamed into place only when every stage
// succeeded, so a failed build leaves the previous good outputs untouched.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config } from '../config/types.js';
import { configHash, describeConfig } from '../config/load.js';
import { formatBytes, type Reporter } from '../lib/progress.js';
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
import { configureInputs, configureSystem, installMkma, mkmaFingerprint, packageRoot } from './configure.js';
import { buildInitramfs, prepareInitramfs } from './initramfs.js';
import {
  findImageKernel, hostKernelInfo, hostKernelStamp, INITRAMFS_MODULE_GROUPS, INITRAMFS_MODULES, installHostKernel, trimModules, type KernelInfo,
} from './kernel.js';
import { decideOutput, decideStep, digest, newStamp, StageStore, statOutput, type Decision, type StageInputs } from './stages.js';
import { MkmaError } from '../lib/errors.js';

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

export class BuildError extends MkmaError {}

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

/**
 * mkdir -p one component at a time (Node's recursive mkdir spins forever under /proc); the
 * last one, OUT, for root only: it holds the image's secrets (see restrictOutput).
 */
function mkdirParents(dir: string): void {
  const missing: string[] = [];
  let d = path.resolve(dir);
  while (!fs.existsSync(d)) {
    missing.unshift(d);
    d = path.dirname(d);
  }
  for (const m of missing) fs.mkdirSync(m, { mode: m === missing[missing.length - 1] ? 0o700 : 0o777 });
}

/** Modes of what holds the image's secrets: /etc/shadow, keys, the image users' files. */
export const SECRET_FILE_MODE = 0o600;
export const SECRET_DIR_MODE = 0o700;

/**
 * base.cpio.zst and mkma.json are written 0600 (below); the cache (snapshots of the tree) and
 * QEMU's disks (they hold the base) are made 0700 here. OUT/chroot is the image's own tree, with
 * the image's owners and modes: a user the image creates may have the uid of another user of
 * this host. OUT is 0700 when mkma creates it; an existing OUT open to others is its owner's
 * choice, and gets a warning.
 */
function restrictOutput(out: string, reporter: Reporter): void {
  fs.mkdirSync(path.join(out, '.cache'), { recursive: true, mode: SECRET_DIR_MODE });
  for (const dir of [path.join(out, '.cache'), path.join(out, 'qemu')]) {
    if (fs.existsSync(dir)) fs.chmodSync(dir, SECRET_DIR_MODE);
  }
  // a base made by an older mkma, reused as it is (a chmod keeps size, mtime and inode)
  for (const name of [BASE_NAME, BUILD_INFO_NAME]) {
    if (fs.existsSync(path.join(out, name))) fs.chmodSync(path.join(out, name), SECRET_FILE_MODE);
  }
  if (fs.statSync(out).mode & 0o007) {
    reporter.warn(`${out} is open to other users: ${path.join(out, 'chroot')} holds the image's files with the image's owners (chmod 700 ${out})`);
  }
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

/** One output's entry in the result, from the file just made in staging. */
function freshInfo(staging: string, out: string, name: string): OutputInfo {
  const p = path.join(staging, name);
  return { path: path.join(out, name), bytes: fs.statSync(p).size, sha256: sha256File(p) };
}

export async function build(o: BuildOptions): Promise<BuildResult> {
  const { config: c, reporter } = o;
  const out = path.resolve(o.out);
  const hash = configHash(c, [o.hostKernel ? 'host-kernel' : 'image-kernel']);
  const presets = o.presets ?? [];
  const cache = new BuildCache(out);
  const settings = configureInputs(c);
  const keys = chainKeys(hash, presetHashes(presets), presets.length ? digest(settings.hostname, settings['root password']) : '');
  const plan = cache.plan(keys, { rebuild: o.rebuild, legacyReusable: !o.rebuild && reusableChroot(out, hash) });
  const reuse = plan.start >= 0;
  checkOutputDir(out, reuse ? 0.5 * GiB : 2 * GiB);
  restrictOutput(out, reporter);
  const chroot = path.join(out, 'chroot');
  const stages: StageReport[] = [];
  const staging = path.join(out, '.staging');
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true, mode: SECRET_DIR_MODE });
  const store = new StageStore(cache.dir);
  if (o.rebuild) store.reset();
  // read before anything below marks the tree as being changed
  const treeKnown = store.treeKnown;
  const version = mkmaVersion();
  const self = `${version} ${mkmaFingerprint().hash}`;
  /** stage name → [ran?, reason], into the result's `stages` */
  const report = (stage: string, d: Decision) => stages.push({ stage, status: d.run ? 'ran' : 'reused', reason: d.reason });

  try {
    // 1. bootstrap
    const restored = plan.start <= 0 ? 'the bootstrapped tree' : `the tree after preset ${presets[plan.start - 1].name}`;
    const s1 = reporter.stage('bootstrap', !reuse ? `mmdebstrap ${c.suite} (${c.variant}, ${c.architecture}) from ${c.mirror}`
      : plan.from === 'snapshot' ? `reused: restoring ${restored} from OUT/.cache`
      : `reused: configuration${plan.start > 0 ? ` and presets up to ${presets[plan.start - 1].name}` : ''} unchanged, reusing OUT/chroot`);
    if (!reuse) {
      if (o.rebuild) cache.clear();
      store.treeChanging();
      // nothing of an interrupted run may stay mounted in a tree that is replaced
      unmountUnder(chroot);
      await bootstrap(c, out, hash, s1);
      cache.writeState(keys[0]);
    } else if (plan.from === 'snapshot') {
      store.treeChanging();
      cache.restore(keys[plan.start]);
    }
    s1.done(reuse ? 'reused' : 'fresh bootstrap');
    stages.push({ stage: 'bootstrap', status: reuse ? 'reused' : 'ran' });

    // What happened to the tree before the steps that edit it in place: a new lineage (see
    // builder/stages.ts) makes them all run again.
    const presetsPending = plan.start < presets.length;
    const replaced = !reuse ? 'a fresh bootstrap'
      : plan.from === 'snapshot' ? 'the tree was restored from OUT/.cache'
      : presetsPending ? 'presets run on the tree' : undefined;
    const lineage = replaced || !treeKnown || !store.record.lineage ? newStamp() : store.record.lineage;
    let treeTouched = !reuse || plan.from === 'snapshot';
    const touchTree = () => {
      if (!treeTouched) store.treeChanging();
      treeTouched = true;
    };

    // 2. configure: kernel modules (--host-kernel, trimming), system settings, mkma's own files
    const kernel: KernelInfo = o.hostKernel ? hostKernelInfo(chroot) : findImageKernel(chroot);
    const keep = c.kernelModules === 'all' ? null : [...new Set([...c.kernelModules, ...INITRAMFS_MODULES, ...c.initramfsModules])].sort();
    const stepInputs: Record<string, StageInputs> = {};
    if (o.hostKernel || keep) {
      stepInputs['kernel modules'] = {
        tree: lineage, kernel: o.hostKernel ? `host ${hostKernelStamp()}` : `image ${kernel.version}`, keep: keep ? digest(...keep) : 'all', 'mkma files': self,
      };
    }
    stepInputs.settings = { tree: lineage, ...settings, 'mkma files': self };
    if (c.installMkma) stepInputs['mkma install'] = { tree: lineage, 'mkma files': self };
    const steps = Object.fromEntries(Object.entries(stepInputs).map(([name, inputs]) => [name,
      decideStep(inputs, store.record.steps[name], { rebuild: o.rebuild, treeKnown, replaced })])) as Record<string, Decision>;
    const anyStep = Object.values(steps).some((d) => d.run);
    const confDecision: Decision = anyStep
      ? { run: true, reason: Object.entries(steps).filter(([, d]) => d.run).map(([n, d]) => `${n}: ${d.reason}`).join('; ') }
      : { run: false, reason: `inputs unchanged (${Object.keys(steps).join(', ')})` };
    const s2 = reporter.stage('configure', anyStep ? `hostname ${c.hostname}` : `reused: ${confDecision.reason}`);
    const did: string[] = [`kernel ${kernel.version}`];
    if (anyStep) touchTree();
    if (steps['kernel modules']?.run) {
      if (o.hostKernel) installHostKernel(chroot);
      if (keep) {
        const t = trimModules(kernel, keep, chroot);
        did.push(`kernel modules trimmed to ${t.kept} (removed ${t.removed})`);
      } else did.push('host kernel modules copied');
    }
    if (steps.settings.run) {
      configureSystem(c, chroot);
      did.push(`hostname ${c.hostname}`);
    }
    if (steps['mkma install']?.run) did.push(`mkma installed (${formatBytes(installMkma(chroot).bytes)})`);
    for (const [n, d] of Object.entries(steps)) if (!d.run) did.push(`${n} reused`);
    s2.done(anyStep ? `${did.join(', ')} (${confDecision.reason})` : `reused (${did[0]})`);
    report('configure', confDecision);

    // 2b. presets, each after the one before, from the cache where their inputs are unchanged
    if (presets.length) {
      if (presetsPending) touchTree();
      stages.push(...await runPresets({ presets, keys, start: plan.start, cache, reporter, interactive: !!o.interactive }));
      // what configure owns (hostname, root password, fstab) ends as mkma.toml says, whether
      // the presets ran now or came from the cache
      if (treeTouched) configureSystem(c, chroot);
    }
    // only the states a change to one of these presets restarts from are kept
    cache.prune(keys.slice(0, presets.length));
    if (treeTouched) store.treeChanged({ lineage, steps: stepInputs });
    const tree = store.record.tree!;

    // 3. base
    const baseInputs: StageInputs = { tree, level: String(c.compressionLevel), 'mkma files': self };
    const baseDecision = decideOutput(baseInputs, store.record.outputs.base, path.join(out, BASE_NAME), { rebuild: o.rebuild });
    const s3 = reporter.stage('pack base', baseDecision.run ? `zstd level ${c.compressionLevel} (${baseDecision.reason})` : `reused: ${baseDecision.reason}`);
    let baseDetails: { unpackedBytes: number; entries: number };
    if (baseDecision.run) {
      checkOutputDir(out, 0.5 * GiB);
      const base = await packTree(chroot, path.join(staging, BASE_NAME), {
        kind: 'base',
        level: c.compressionLevel,
        // it holds /etc/shadow
        mode: SECRET_FILE_MODE,
        exclude: baseExclude,
        onProgress: (p) => s3.progress(`${p.entries} entries, ${formatBytes(p.bytesIn)} → ${formatBytes(p.bytesOut)}`),
        onWarning: (w) => reporter.warn(w),
      });
      if (base.xattrWarnings) reporter.warn(`getfattr: ${base.xattrWarnings.split('\n')[0]}`);
      baseDetails = { unpackedBytes: base.manifest.unpackedBytes, entries: base.manifest.entries };
      s3.done(`${base.stats.entries} entries, ${formatBytes(base.cpioBytes)} → ${formatBytes(base.fileBytes)}, ${base.manifest.xattrs.length} paths with xattrs`);
    } else {
      baseDetails = store.record.outputs.base.details as typeof baseDetails;
      s3.done('reused');
    }
    report('pack base', baseDecision);

    // 4. initramfs
    const initOpts = {
      chroot, kernel, out: path.join(staging, INITRAMFS_NAME), workDir: staging,
      wantedModules: INITRAMFS_MODULE_GROUPS, requiredModules: c.initramfsModules, ramSize: c.ramSize, version,
      arch: c.architecture, cacheDir: path.join(out, '.cache', 'unpacker'), onWarning: (w: string) => reporter.warn(w),
    };
    const prep = prepareInitramfs(initOpts);
    // Not the tree stamp: the initramfs takes binaries, libraries and kernel modules from the
    // tree, which only the bootstrap, the presets (both: a new lineage) and the kernel-modules
    // step change; the settings and mkma-install steps write /etc files and /usr/lib/mkma, which
    // it never reads. So a new hostname re-packs the base but keeps the initramfs.
    const initInputs: StageInputs = {
      tree: lineage,
      'kernel modules': stepInputs['kernel modules'] ? digest(JSON.stringify(stepInputs['kernel modules'])) : 'untouched',
      kernel: kernel.version,
      init: digest(prep.init),
      modules: digest(...prep.plan.moduleFiles),
      unpacker: prep.unpackerHash,
      'mkma files': self,
    };
    const initDecision = decideOutput(initInputs, store.record.outputs.initramfs, path.join(out, INITRAMFS_NAME), { rebuild: o.rebuild });
    const s4 = reporter.stage('initramfs', initDecision.run ? initDecision.reason : `reused: ${initDecision.reason}`);
    let initDetails: { modules: string[]; fastUnpacker: boolean };
    if (initDecision.run) {
      const initrd = await buildInitramfs(initOpts, prep);
      initDetails = { modules: initrd.modules, fastUnpacker: initrd.fastUnpacker };
      s4.done(`${formatBytes(initrd.bytes)}, ${initrd.modules.length} modules, ${initrd.fastUnpacker ? 'mkma-unpack' : 'busybox cpio'}`);
    } else {
      initDetails = store.record.outputs.initramfs.details as typeof initDetails;
      if (!prep.unpacker.path) reporter.warn(`mkma-unpack not built (${prep.unpacker.reason}): the image boots with busybox cpio, slower`);
      s4.done('reused');
    }
    report('initramfs', initDecision);

    // 5. outputs, atomically: what was made now is renamed into place from OUT/.staging; what
    // was reused is left as it is (the decision checked that it is the file recorded)
    const kst = statOutput(kernel.image);
    const kernelInputs: StageInputs = { kernel: `${kernel.version} ${kernel.image} ${kst ? `${kst.bytes}/${kst.mtimeNs}` : 'missing'}` };
    const kernelDecision = decideOutput(kernelInputs, store.record.outputs.kernel, path.join(out, KERNEL_NAME), { rebuild: o.rebuild });
    if (kernelDecision.run) fs.copyFileSync(kernel.image, path.join(staging, KERNEL_NAME));
    report('kernel', kernelDecision);
    const made: Array<[keyof BuildResult['outputs'], string, Decision, StageInputs, Record<string, unknown>?]> = [
      ['base', BASE_NAME, baseDecision, baseInputs, baseDetails],
      ['initramfs', INITRAMFS_NAME, initDecision, initInputs, initDetails],
      ['kernel', KERNEL_NAME, kernelDecision, kernelInputs],
    ];
    const infos = Object.fromEntries(made.map(([key, name, d]) => {
      if (d.run) return [key, freshInfo(staging, out, name)];
      const r = store.record.outputs[key];
      return [key, { path: path.join(out, name), bytes: r.bytes, sha256: r.sha256 }];
    })) as Record<keyof BuildResult['outputs'], OutputInfo>;
    const storage = findStorage(out);
    const cmdline = kernelCommandLine(storage ?? { device: '<device holding the images>', imagesPath: out });
    const result: BuildResult = {
      mkmaVersion: version,
      hostname: c.hostname,
      kernelVersion: kernel.version,
      configHash: hash,
      bootstrap: reuse ? 'reused' : 'fresh',
      stages,
      cache: cache.usage(),
      outputs: {
        base: { ...infos.base, ...baseDetails },
        initramfs: infos.initramfs,
        kernel: infos.kernel,
      },
      initramfsModules: initDetails.modules,
      storage,
      cmdline,
      grub: storage ? grubEntry(c.hostname, storage) : null,
      systemdBoot: storage ? systemdBootEntry(c.hostname, storage) : null,
      timings: reporter.timings,
    };
    fs.writeFileSync(
      path.join(staging, BUILD_INFO_NAME),
      JSON.stringify({ ...result, config: describeConfig(c), created: new Date().toISOString() }, null, 2) + '\n',
      { mode: SECRET_FILE_MODE },
    );
    for (const [, name, d] of made) if (d.run) fs.renameSync(path.join(staging, name), path.join(out, name));
    fs.renameSync(path.join(staging, BUILD_INFO_NAME), path.join(out, BUILD_INFO_NAME));
    fsyncDir(out);
    // recorded only now that the files are in place (a crash before leaves the old record,
    // which no longer matches the files: they are made again)
    for (const [key, name, d, inputs, details] of made) {
      if (!d.run) continue;
      const st = statOutput(path.join(out, name))!;
      store.setOutput(key, { inputs, ...st, sha256: infos[key].sha256, ...(details ? { details } : {}) });
    }
    store.save();
    return result;
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}
