// Where mkma-scan (init/unpack/mkma-scan.c, the native walk of the persist scan) comes from:
//   1. MKMA_SCAN_HELPER: a path to it, or "off" (the TypeScript walk, persist/walk.ts);
//   2. the copy a build put into the image (SCAN_HELPER_INSTALLED): a RAM machine has no gcc;
//   3. compiled here from the source at first use and cached (SCAN_HELPER_CACHE).
// When none works the scan falls back to find + getfattr, slower, same result; the reason is
// kept for `mkma persist --debug` and the tests.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runSync } from '../lib/run.js';

/** Where `mkma build` installs the helper in the image (next to the app in /usr/lib/mkma). */
export const SCAN_HELPER_INSTALLED = '/usr/lib/mkma/mkma-scan';
/**
 * Compiled helpers are cached here: /run is a tmpfs outside every overlay, so on a RAM machine
 * the binary never lands in the upperdir it is about to scan (on a host: compiled once per boot,
 * about 0.3 s).
 */
export const SCAN_HELPER_CACHE = '/run/mkma/cache';
const CFLAGS = ['-O2', '-std=gnu11', '-Wall'];

export interface ScanHelper {
  /** the executable, or null (then `reason` says why) */
  path: string | null;
  reason?: string;
}

/** init/unpack/mkma-scan.c, from both the sources (tests) and dist/persist (installed). */
export function scanHelperSource(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const rel = path.join('init', 'unpack', 'mkma-scan.c');
  for (const candidate of [path.join(here, '..', rel), path.join(here, '..', '..', rel)]) {
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error(`${rel} not found near ${here}`);
}

function works(bin: string): boolean {
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
 */
export function buildScanHelper(opts: { cacheDir: string; static?: boolean }): ScanHelper {
  let source: string;
  let gcc: string;
  try {
    source = scanHelperSource();
    const v = runSync('gcc', ['--version'], { allowFailure: true });
    if (!v.ok) return { path: null, reason: `gcc does not run: ${v.stderr.trim()}` };
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
  if (fs.existsSync(out) && works(out)) return { path: out };
  fs.mkdirSync(opts.cacheDir, { recursive: true, mode: 0o700 });
  const tmp = `${out}.tmp-${process.pid}`;
  const cc = runSync('gcc', [...flags, '-o', tmp, source], { allowFailure: true });
  if (!cc.ok || !works(tmp)) {
    fs.rmSync(tmp, { force: true });
    const why = cc.ok ? 'the binary does not run' : cc.stderr.trim().split('\n').slice(-3).join(' / ');
    return { path: null, reason: `cannot build mkma-scan: ${why}` };
  }
  fs.renameSync(tmp, out);
  return { path: out };
}

let memo: { env: string | undefined; helper: ScanHelper } | null = null;

/** The helper to use in this process (looked for once; MKMA_SCAN_HELPER is read each time). */
export function scanHelper(): ScanHelper {
  const env = process.env.MKMA_SCAN_HELPER;
  if (memo && memo.env === env) return memo.helper;
  let helper: ScanHelper;
  if (env === 'off') helper = { path: null, reason: 'MKMA_SCAN_HELPER=off' };
  else if (env) helper = works(env) ? { path: env } : { path: null, reason: `MKMA_SCAN_HELPER=${env} does not run` };
  else if (fs.existsSync(SCAN_HELPER_INSTALLED) && works(SCAN_HELPER_INSTALLED)) helper = { path: SCAN_HELPER_INSTALLED };
  else helper = buildScanHelper({ cacheDir: process.env.MKMA_CACHE_DIR ?? SCAN_HELPER_CACHE });
  memo = { env, helper };
  return helper;
}
