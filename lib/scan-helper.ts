// mkma-scan (init/unpack/mkma-scan.c), the native walk of `mkma persist`'s scan: compiled from
// its source and cached. Here, on the ground floor, because two layers build it: the persist
// scan at first use on a machine with gcc (persist/scan-helper.ts), and `mkma build`, which
// installs a static copy into the image (builder/scan-helper.ts: a RAM machine has no gcc).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runSync } from './run.js';

/** Where `mkma build` installs the helper in the image (next to the app in /usr/lib/mkma). */
export const SCAN_HELPER_INSTALLED = '/usr/lib/mkma/mkma-scan';
const CFLAGS = ['-O2', '-std=gnu11', '-Wall'];

export interface ScanHelper {
  /** the executable, or null (then `reason` says why) */
  path: string | null;
  reason?: string;
}

/** init/unpack/mkma-scan.c, from both the sources (tests) and dist/lib (installed). */
export function scanHelperSource(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const rel = path.join('init', 'unpack', 'mkma-scan.c');
  for (const candidate of [path.join(here, '..', rel), path.join(here, '..', '..', rel)]) {
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error(`${rel} not found near ${here}`);
}

/** The binary starts and knows its usage. */
export function scanHelperWorks(bin: string): boolean {
  try {
    const r = runSync(bin, ['-h'], { allowFailure: true });
    return r.ok && r.stdout.includes('usage: mkma-scan');
  } catch {
    return false;
  }
}

/**
 * Compiles mkma-scan into cacheDir (named by the source, compiler and flags, so a cached binary
 * is never stale) unless it is there. `static`: for an image whose libc is not the host's.
 * `cc`: another compiler than the host's gcc (a cross compiler for a foreign image: the binary
 * is then checked by running it through qemu-user).
 */
export function buildScanHelper(opts: { cacheDir: string; static?: boolean; cc?: string }): ScanHelper {
  const cc = opts.cc ?? 'gcc';
  let source: string;
  let gcc: string;
  try {
    source = scanHelperSource();
    const v = runSync(cc, ['--version'], { allowFailure: true });
    if (!v.ok) return { path: null, reason: `${cc} does not run: ${v.stderr.trim()}` };
    gcc = v.stdout.split('\n')[0];
  } catch (e) {
    return { path: null, reason: (e as Error).message };
  }
  const flags = opts.static ? [...CFLAGS, '-static'] : CFLAGS;
  const key = createHash('sha256')
    .update(fs.readFileSync(source))
    .update(`\0${gcc}\0${process.arch}\0${flags.join(' ')}`)
    .digest('hex')
    .slice(0, 16);
  const out = path.join(opts.cacheDir, `mkma-scan-${key}`);
  if (fs.existsSync(out) && scanHelperWorks(out)) return { path: out };
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    fs.mkdirSync(opts.cacheDir, { recursive: true, mode: 0o700 });
    const r = runSync(cc, [...flags, '-o', tmp, source], { allowFailure: true });
    if (!r.ok || !scanHelperWorks(tmp)) {
      const why = r.ok ? 'the binary does not run' : r.stderr.trim().split('\n').slice(-3).join(' / ');
      return { path: null, reason: `cannot build mkma-scan: ${why}` };
    }
    fs.renameSync(tmp, out);
    return { path: out };
  } catch (e) {
    // (not root: the cache under /run is root's) the scan goes on with the find walk
    return { path: null, reason: `cannot build mkma-scan in ${opts.cacheDir}: ${(e as Error).message}` };
  } finally {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // not ours to remove (the directory could not be written either)
    }
  }
}
