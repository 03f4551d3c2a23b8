// Where the persist scan's mkma-scan (init/unpack/mkma-scan.c, built by lib/scan-helper.ts)
// comes from:
//   1. MKMA_SCAN_HELPER: a path to it, or "off" (the TypeScript walk, persist/walk.ts);
//   2. the copy `mkma build` put into the image (SCAN_HELPER_INSTALLED): a RAM machine has no gcc;
//   3. compiled here from the source at first use and cached (SCAN_HELPER_CACHE).
// When none works the scan falls back to find + getfattr: slower, the same result.
import * as fs from 'node:fs';
import { buildScanHelper, SCAN_HELPER_INSTALLED, scanHelperWorks, type ScanHelper } from '../lib/scan-helper.js';

/**
 * Compiled helpers are cached here: /run is a tmpfs outside every overlay, so on a RAM machine
 * the binary never lands in the upperdir it is about to scan (on a host: compiled once per boot,
 * about 0.3 s).
 */
export const SCAN_HELPER_CACHE = '/run/mkma/cache';

let memo: { env: string | undefined; helper: ScanHelper } | null = null;

/** The helper to use in this process (looked for once; MKMA_SCAN_HELPER is read each time). */
export function scanHelper(): ScanHelper {
  const env = process.env.MKMA_SCAN_HELPER;
  if (memo && memo.env === env) return memo.helper;
  let helper: ScanHelper;
  if (env === 'off') helper = { path: null, reason: 'MKMA_SCAN_HELPER=off' };
  else if (env) helper = scanHelperWorks(env) ? { path: env } : { path: null, reason: `MKMA_SCAN_HELPER=${env} does not run` };
  else if (fs.existsSync(SCAN_HELPER_INSTALLED) && scanHelperWorks(SCAN_HELPER_INSTALLED)) helper = { path: SCAN_HELPER_INSTALLED };
  else helper = buildScanHelper({ cacheDir: process.env.MKMA_CACHE_DIR ?? SCAN_HELPER_CACHE });
  memo = { env, helper };
  return helper;
}
