// Stage 4: the initramfs. Build-time half of mkinitcpio's hook pairs: everything the boot
// needs is resolved here (binaries with their libraries, modules in load order), and the init
// only executes the result.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { packTree } from '../format/pack.js';
import { generateInit } from '../init/generate.js';
import { libraryClosure } from './elf.js';
import { decompressModule, moduleClosure, moduleName, storageDrivers, type StorageDriver } from './kernel-modules.js';
import type { KernelInfo } from './kernel.js';
import { buildUnpacker, UNPACKER_INITRAMFS_PATH, type UnpackerResult } from './unpacker.js';
import { MkmaError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';

/** Binaries taken from the image (same architecture and versions as the system they boot). */
export const INITRAMFS_BINARIES = [
  '/usr/bin/busybox', // static: sh, cpio, mount, switch_root, …
  '/usr/bin/zstd', // decompresses base and layers
  '/usr/bin/setfattr', // restores xattrs (capabilities, ACLs) from the manifests
  '/usr/sbin/blkid', // UUID=, LABEL=, PARTUUID= device specs
];

export class InitramfsError extends MkmaError {}

export interface ModuleGroups {
  storage: string[];
  filesystems: Record<string, string[]>;
  overlay: string[];
  /**
   * Storage drivers by hardware: a module's device aliases (modules.alias globs) and what to
   * load for it (its dependencies first), so the init loads only the drivers of the devices
   * it finds in sysfs; the whole `storage` list stays the fallback.
   */
  storageByDevice?: StorageDriver[];
}

export interface InitramfsPlan {
  /** load order per group, module names */
  groups: ModuleGroups;
  /** every module file to put into the initramfs (relative to the modules dir) */
  moduleFiles: string[];
  missing: string[];
}

/** Resolves each group's dependency closure; user-requested modules join the storage group. */
export function planModules(k: KernelInfo, wanted: ModuleGroups, required: string[]): InitramfsPlan {
  const files = new Set<string>();
  const missing = new Set<string>();
  const resolve = (names: string[], mustExist: boolean) => {
    const c = moduleClosure(k.modulesDir, names, { optional: false });
    const bad = mustExist ? c.missing : [];
    if (bad.length) {
      throw new InitramfsError(
        `initramfs_modules not found in kernel ${k.version}: ${bad.join(', ')} ` +
          `(check the names with: find ${k.modulesDir} -name 'NAME.ko*')`,
      );
    }
    for (const m of c.missing) missing.add(m);
    for (const f of c.order) files.add(f);
    return c.order.map(moduleName);
  };
  resolve(required, true);
  const groups: ModuleGroups = {
    storage: resolve([...wanted.storage, ...required], false),
    filesystems: Object.fromEntries(Object.entries(wanted.filesystems).map(([fs, mods]) => [fs, resolve(mods, false)])),
    overlay: resolve(wanted.overlay, false),
  };
  for (const [fs, mods] of Object.entries(groups.filesystems)) if (!mods.length) delete groups.filesystems[fs];
  groups.storageByDevice = storageDrivers(k.modulesDir, groups.storage);
  return { groups, moduleFiles: [...files].sort(), missing: [...missing] };
}

function copyIntoStaging(chroot: string, staging: string, rel: string): void {
  const src = path.join(chroot, rel);
  const dest = path.join(staging, rel);
  if (fs.existsSync(dest) || isSymlink(dest)) return;
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  const st = fs.lstatSync(src);
  if (st.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(src), dest);
  else if (st.isDirectory()) fs.mkdirSync(dest, { recursive: true });
  else {
    fs.copyFileSync(src, dest);
    fs.chmodSync(dest, st.mode & 0o7777);
  }
}

function isSymlink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

export interface InitramfsResult {
  path: string;
  bytes: number;
  files: number;
  modules: string[];
  missingModules: string[];
  fastUnpacker: boolean;
}

export interface InitramfsOptions {
  chroot: string;
  kernel: KernelInfo;
  out: string;
  workDir: string;
  wantedModules: ModuleGroups;
  requiredModules: string[];
  ramSize: string;
  version: string;
  arch: string;
  cacheDir: string;
  onWarning: (w: string) => void;
  /** base_format: the init mounts base.erofs / base.squashfs instead of unpacking (init/templates/base-image.sh) */
  baseFormat?: 'cpio' | 'erofs' | 'squashfs';
}

/** What the initramfs is made of besides files copied from the tree: resolved before building. */
export interface InitramfsPrep {
  plan: InitramfsPlan;
  /** the generated /init */
  init: string;
  unpacker: UnpackerResult;
  /** sha256 of the mkma-unpack binary ('none' without one) */
  unpackerHash: string;
}

/**
 * Resolves the modules, generates /init and gets mkma-unpack (from its cache): everything the
 * initramfs holds that does not come straight from the tree, so the build can tell whether an
 * existing initramfs is still the one these inputs make.
 */
export function prepareInitramfs(
  opts: Pick<InitramfsOptions, 'kernel' | 'wantedModules' | 'requiredModules' | 'ramSize' | 'version' | 'arch' | 'cacheDir' | 'baseFormat'>,
): InitramfsPrep {
  const plan = planModules(opts.kernel, opts.wantedModules, opts.requiredModules);
  const unpacker = buildUnpacker({ cacheDir: opts.cacheDir, arch: opts.arch });
  // the init carries the layer code of the extractor it has: decided here, not at boot
  const init = generateInit({
    modules: plan.groups,
    defaultRamSize: opts.ramSize,
    deviceTimeoutSec: 30,
    version: opts.version,
    extractor: unpacker.path ? 'native' : 'busybox',
    fallbackReason: unpacker.reason,
    baseFormat: opts.baseFormat,
  });
  const unpackerHash = unpacker.path ? createHash('sha256').update(fs.readFileSync(unpacker.path)).digest('hex') : 'none';
  return { plan, init, unpacker, unpackerHash };
}

export async function buildInitramfs(opts: InitramfsOptions, prepared?: InitramfsPrep): Promise<InitramfsResult> {
  const prep = prepared ?? prepareInitramfs(opts);
  const staging = path.join(opts.workDir, 'initramfs');
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true });
  // Merged-/usr layout as in the image: /bin, /sbin, /lib, /lib64 are symlinks there.
  for (const top of ['bin', 'sbin', 'lib', 'lib64']) {
    if (isSymlink(path.join(opts.chroot, top))) copyIntoStaging(opts.chroot, staging, top);
  }
  for (const bin of INITRAMFS_BINARIES) {
    if (!fs.existsSync(path.join(opts.chroot, bin))) {
      throw new InitramfsError(
        `${bin} is missing from the image: the packages zstd, attr, busybox-static and util-linux must be installed`,
      );
    }
  }
  for (const f of libraryClosure(opts.chroot, INITRAMFS_BINARIES).files) copyIntoStaging(opts.chroot, staging, f);
  fs.symlinkSync('busybox', path.join(staging, 'usr/bin/sh'));
  // The fast extractor (3-4x fewer syscalls than busybox cpio, shards in parallel); the init
  // falls back to zstd | busybox cpio without it.
  const unpacker = prep.unpacker;
  if (unpacker.path) {
    fs.copyFileSync(unpacker.path, path.join(staging, UNPACKER_INITRAMFS_PATH));
    fs.chmodSync(path.join(staging, UNPACKER_INITRAMFS_PATH), 0o755);
  } else {
    opts.onWarning(`mkma-unpack not built (${unpacker.reason}): the image boots with busybox cpio, slower`);
  }

  const plan = prep.plan;
  const modDir = path.join(staging, 'usr/lib/modules/mkma');
  fs.mkdirSync(modDir, { recursive: true });
  for (const rel of plan.moduleFiles) {
    await decompressModule(path.join(opts.kernel.modulesDir, rel), path.join(modDir, `${moduleName(rel)}.ko`));
  }

  for (const d of ['dev', 'proc', 'sys', 'run', 'mnt', 'overlay', 'etc']) fs.mkdirSync(path.join(staging, d), { recursive: true });
  // The kernel opens /dev/console for init's stdio before anything is mounted.
  runSync('mknod', ['-m', '600', path.join(staging, 'dev/console'), 'c', '5', '1']);
  fs.writeFileSync(path.join(staging, 'init'), prep.init, { mode: 0o755 });
  // Plain newc + one zstd frame: the kernel unpacks it, not mkma. Small, so a high level is cheap.
  const r = await packTree(staging, opts.out, { kind: 'base', level: 12, threads: 0, manifest: false });
  fs.rmSync(staging, { recursive: true, force: true });
  return {
    path: opts.out,
    bytes: r.fileBytes,
    files: r.stats.entries,
    modules: plan.moduleFiles.map(moduleName),
    missingModules: plan.missing,
    fastUnpacker: !!unpacker.path,
  };
}
