// Installs mkma-scan (the persist scan's native walk, lib/scan-helper.ts) into the image next
// to mkma: a RAM machine has no gcc, so `mkma persist` there uses this copy. Static, so the
// image's libc does not matter; only when the image runs the host's architecture (the ELF
// machine of the image's node), else the image's mkma falls back to its find walk.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildScanHelper, SCAN_HELPER_INSTALLED } from '../lib/scan-helper.js';
import { readElfInfo } from './elf.js';

/** Installs it; returns why not when it cannot (the build goes on: the helper is a speed-up). */
export function installScanHelper(chroot: string, cacheDir: string): { installed: boolean; reason?: string } {
  const dest = path.join(chroot, SCAN_HELPER_INSTALLED);
  fs.rmSync(dest, { force: true });
  const built = buildScanHelper({ cacheDir, static: true });
  if (!built.path) return { installed: false, reason: built.reason };
  const node = path.join(chroot, 'usr/bin/node');
  const want = fs.existsSync(node) ? readElfInfo(fs.realpathSync(node))?.machine : undefined;
  const have = readElfInfo(built.path)?.machine;
  if (want === undefined || want !== have) {
    return { installed: false, reason: `the image's node is not a binary for this host's architecture (ELF machine ${want} vs ${have})` };
  }
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  fs.copyFileSync(built.path, dest);
  fs.chmodSync(dest, 0o755);
  return { installed: true };
}
