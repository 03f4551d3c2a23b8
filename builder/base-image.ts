// base_format = "erofs" | "squashfs": the base as a compressed read-only filesystem image,
// which the init copies into RAM and mounts instead of unpacking (init/templates/base-image.sh).
//
// The image is made from base.cpio.zst, not from OUT/chroot: the cpio is unpacked (by
// mkma-unpack, as `mkma unpack` does) into a scratch directory and that tree is imaged. So
// both hold one tree — the same exclusions, owners, modes, times and xattrs — and `mkma
// unpack`, `mkma verify` and `mkma layers` keep working on the cpio beside it.
//
// Compressors, measured on the test image's tree (260 MB, 10,512 entries; docs/perf-research.md):
//   erofs lz4 (Debian 12's erofs-utils 1.5 writes only lz4 and lz4hc): 153 MB in 5.6 s;
//   lz4hc,9 with 64 KiB clusters 124 MB but 54 s, lz4hc,4 -C64K 125 MB in 61 s, lz4 -C64K 142 MB
//   in 33 s; squashfs zstd level 3, 1 MiB blocks: 91 MB
//   in 12.5 s (single runs on the shared 2-core host, load ~15).
// Fidelity: squashfs stores xattrs only under the user., trusted. and security. prefixes, so
// POSIX ACLs (system.posix_acl_*) cannot be kept: such a tree is refused, never imaged short.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BASE_NAME } from '../format/names.js';
import { readManifest } from '../format/reader.js';
import { unpackImages } from '../format/apply.js';
import { FILES } from '../lib/contract.js';
import { UsageError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';

export type ImageFormat = 'erofs' | 'squashfs';

export const BASE_IMAGE_NAME: Record<ImageFormat, string> = { erofs: FILES.baseErofs, squashfs: FILES.baseSquashfs };

/** The mkfs command line for a format (tree → file). */
export function mkfsArgs(format: ImageFormat, tree: string, file: string): [string, string[]] {
  if (format === 'erofs') return ['mkfs.erofs', ['--quiet', '--preserve-mtime', '-zlz4', file, tree]];
  return ['mksquashfs', [tree, file, '-noappend', '-no-progress', '-quiet', '-comp', 'zstd', '-Xcompression-level', '3', '-b', '1M']];
}

/** What a format cannot hold of this base (its xattr names), or null. */
export function fidelityProblem(format: ImageFormat, xattrNames: string[]): string | null {
  if (format !== 'squashfs') return null;
  const lost = [...new Set(xattrNames.filter((n) => !/^(user|trusted|security)\./.test(n)))].sort();
  return lost.length
    ? `squashfs cannot store the extended attribute${lost.length > 1 ? 's' : ''} ${lost.join(', ')} of the base (it keeps only user., trusted. and security. ones): use base_format = "erofs" (or "cpio")`
    : null;
}

export interface BaseImageResult {
  file: string;
  bytes: number;
}

/**
 * Writes OUT/.staging/base.<format> from the base archive at `basePath`. `unpacker`: the host's
 * mkma-unpack, or null for the TypeScript extractor. Refuses (UsageError) a tree the format
 * cannot hold exactly.
 */
export async function writeBaseImage(o: {
  format: ImageFormat;
  basePath: string;
  outDir: string;
  workDir: string;
  unpacker: string | null;
}): Promise<BaseImageResult> {
  const m = readManifest(o.basePath);
  const problem = fidelityProblem(
    o.format,
    m.xattrs.flatMap((r) => r.attrs.map(([n]) => n)),
  );
  if (problem) throw new UsageError(problem);
  const images = path.join(o.workDir, 'base-image.in');
  const tree = path.join(o.workDir, 'base-image.tree');
  fs.rmSync(images, { recursive: true, force: true });
  fs.rmSync(tree, { recursive: true, force: true });
  fs.mkdirSync(images, { recursive: true, mode: 0o700 });
  try {
    fs.symlinkSync(path.resolve(o.basePath), path.join(images, BASE_NAME));
    await unpackImages(images, tree, undefined, o.unpacker);
    const file = path.join(o.outDir, BASE_IMAGE_NAME[o.format]);
    fs.rmSync(file, { force: true });
    const [cmd, args] = mkfsArgs(o.format, tree, file);
    const r = runSync(cmd, args);
    // mksquashfs reports what it could not store on stderr and still succeeds
    if (/unrecognised xattr|could not|cannot/i.test(r.stderr)) {
      fs.rmSync(file, { force: true });
      throw new UsageError(`${cmd} could not store the base exactly: ${r.stderr.trim().split('\n')[0]}`);
    }
    // it holds /etc/shadow, as the cpio does
    fs.chmodSync(file, 0o600);
    return { file, bytes: fs.statSync(file).size };
  } finally {
    fs.rmSync(images, { recursive: true, force: true });
    fs.rmSync(tree, { recursive: true, force: true });
  }
}

/**
 * An initramfs of this build for another base format: the same files, with the one build-time
 * constant of the generated /init changed (MKMA_BASE_FORMAT). Used to boot a cpio build's
 * tree as erofs/squashfs without building again (bench figure 3, the e2e test).
 */
export function initramfsWithBaseFormat(real: string, out: string, work: string, format: 'cpio' | ImageFormat): void {
  const staging = path.join(work, `initramfs-${format}`);
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true });
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  runSync('bash', ['-c', `set -o pipefail; cd ${q(staging)} && zstd -q -dc ${q(real)} | cpio -idm --quiet`]);
  const initPath = path.join(staging, 'init');
  const init = fs.readFileSync(initPath, 'utf8');
  const line = /^(\s*)MKMA_BASE_FORMAT='[a-z]+'$/m;
  if (!line.test(init)) throw new Error(`${real}: its init has no MKMA_BASE_FORMAT line (made by an older mkma)`);
  if (format !== 'cpio') {
    const mods = fs.readdirSync(path.join(staging, 'lib/modules/mkma'));
    for (const m of [`${format}.ko`, 'loop.ko'])
      if (!mods.includes(m)) throw new Error(`${real} has no ${m}: the image's kernel modules lack it`);
  }
  fs.writeFileSync(initPath, init.replace(line, `$1MKMA_BASE_FORMAT='${format}'`), { mode: 0o755 });
  runSync('bash', ['-c', `set -o pipefail; cd ${q(staging)} && find . | cpio -o -H newc --quiet | zstd -q -T0 -12 > ${q(out)}`]);
  fs.rmSync(staging, { recursive: true, force: true });
}
