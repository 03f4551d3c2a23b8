// Installs mkma-scan (the persist scan's native walk, lib/scan-helper.ts) into the image next
// to mkma: a RAM machine has no gcc, so `mkma persist` there uses this copy. Static, so the
// image's libc does not matter; built for the architecture of the image's node (its ELF
// machine): natively, or with Debian's cross compiler for a foreign image, the same toolchain
// as mkma-unpack's (builder/unpacker.ts; mkma-scan needs only libc, no libzstd). Without that
// compiler the image's mkma falls back to its find walk.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hostArch } from '../lib/arch.js';
import { buildScanHelper, SCAN_HELPER_INSTALLED } from '../lib/scan-helper.js';
import { readElfInfo } from './elf.js';
import { archOfElfMachine, FOREIGN_ARCHES } from './foreign.js';

/** Installs it; returns why not when it cannot (the build goes on: the helper is a speed-up). */
export function installScanHelper(chroot: string, cacheDir: string): { installed: boolean; reason?: string } {
  const dest = path.join(chroot, SCAN_HELPER_INSTALLED);
  fs.rmSync(dest, { force: true });
  const node = path.join(chroot, 'usr/bin/node');
  const want = fs.existsSync(node) ? readElfInfo(fs.realpathSync(node))?.machine : undefined;
  if (want === undefined) return { installed: false, reason: `the image has no node binary to build it for (${node})` };
  const arch = archOfElfMachine(want);
  if (!arch) return { installed: false, reason: `the image's node is for ELF machine ${want}, which mkma does not build for` };
  const foreign = arch !== hostArch();
  const cc = foreign ? `${FOREIGN_ARCHES[arch].triplet}-gcc` : undefined;
  const built = buildScanHelper({ cacheDir, static: true, cc });
  if (!built.path) {
    const pkgs = foreign ? ` (apt-get install gcc-${FOREIGN_ARCHES[arch].triplet})` : '';
    return { installed: false, reason: `${built.reason}${pkgs}` };
  }
  const have = readElfInfo(built.path)?.machine;
  if (want !== have) return { installed: false, reason: `${cc ?? 'gcc'} built mkma-scan for ELF machine ${have}, not ${want}` };
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  fs.copyFileSync(built.path, dest);
  fs.chmodSync(dest, 0o755);
  return { installed: true };
}
