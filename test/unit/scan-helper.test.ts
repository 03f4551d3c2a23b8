// mkma-scan's build and choice: compiled and cached from its source, installed static into an
// image of the host's architecture (and only there), chosen or refused by MKMA_SCAN_HELPER.
import { afterAll, afterEach, describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { readElfInfo } from '../../builder/elf.js';
import { installScanHelper } from '../../builder/scan-helper.js';
import { buildScanHelper, SCAN_HELPER_INSTALLED, scanHelperWorks } from '../../lib/scan-helper.js';
import { scanHelper } from '../../persist/scan-helper.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-scan-helper-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
const saved = process.env.MKMA_SCAN_HELPER;
afterEach(() => {
  if (saved === undefined) delete process.env.MKMA_SCAN_HELPER;
  else process.env.MKMA_SCAN_HELPER = saved;
});

describe('buildScanHelper', () => {
  test('compiles once, then takes the cached binary', () => {
    const cache = path.join(TMP, 'cache');
    const a = buildScanHelper({ cacheDir: cache });
    expect(a.reason).toBeUndefined();
    expect(scanHelperWorks(a.path!)).toBe(true);
    const mtime = fs.statSync(a.path!).mtimeMs;
    const b = buildScanHelper({ cacheDir: cache });
    expect(b.path).toBe(a.path);
    expect(fs.statSync(b.path!).mtimeMs).toBe(mtime);
    expect(fs.readdirSync(cache).filter((f) => f.includes('.tmp-'))).toEqual([]);
  }, 60_000);

  test('a cache it cannot write: no helper, a reason, no exception (the scan takes the find walk)', () => {
    const r = buildScanHelper({ cacheDir: '/dev/null/cache' });
    expect(r.path).toBeNull();
    expect(r.reason).toMatch(/^cannot build mkma-scan in \/dev\/null\/cache: ENOTDIR/);
  });
});

describe('installScanHelper (mkma build)', () => {
  test('a static copy goes into an image whose node is built for this host', () => {
    const chroot = path.join(TMP, 'chroot-native');
    fs.mkdirSync(path.join(chroot, 'usr/bin'), { recursive: true });
    fs.copyFileSync(process.execPath, path.join(chroot, 'usr/bin/node'));
    expect(installScanHelper(chroot, path.join(TMP, 'build-cache'))).toEqual({ installed: true });
    const bin = path.join(chroot, SCAN_HELPER_INSTALLED);
    expect(fs.statSync(bin).mode & 0o777).toBe(0o755);
    expect(readElfInfo(bin)).toMatchObject({ interp: null, needed: [] });
    expect(scanHelperWorks(bin)).toBe(true);
  }, 60_000);

  /** A chroot whose usr/bin/node is an ELF header of `machine`, with a stale mkma-scan. */
  function foreignChroot(name: string, machine: number): string {
    const chroot = path.join(TMP, name);
    fs.mkdirSync(path.join(chroot, 'usr/bin'), { recursive: true });
    fs.mkdirSync(path.dirname(path.join(chroot, SCAN_HELPER_INSTALLED)), { recursive: true });
    fs.writeFileSync(path.join(chroot, SCAN_HELPER_INSTALLED), 'stale');
    const elf = Buffer.alloc(64);
    elf.write('\x7fELF', 0, 'latin1');
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1;
    elf.writeUInt16LE(2, 16);
    elf.writeUInt16LE(machine, 18);
    fs.writeFileSync(path.join(chroot, 'usr/bin/node'), elf);
    return chroot;
  }

  test('an arm64 image gets a static aarch64 copy, cross-compiled (gcc-aarch64-linux-gnu), that runs under qemu-user', () => {
    const chroot = foreignChroot('chroot-arm64', 183);
    expect(installScanHelper(chroot, path.join(TMP, 'build-cache'))).toEqual({ installed: true });
    const bin = path.join(chroot, SCAN_HELPER_INSTALLED);
    expect(readElfInfo(bin)).toMatchObject({ interp: null, needed: [], machine: 183 });
    // binfmt_misc runs it through qemu-aarch64 (the arm64 build requires that registration)
    expect(scanHelperWorks(bin)).toBe(true);
  }, 60_000);

  test('not into an image of an architecture mkma does not build for, and an old copy goes', () => {
    const chroot = foreignChroot('chroot-sparc', 43);
    const r = installScanHelper(chroot, path.join(TMP, 'build-cache'));
    expect(r.installed).toBe(false);
    expect(r.reason).toMatch(/ELF machine 43, which mkma does not build for/);
    expect(fs.existsSync(path.join(chroot, SCAN_HELPER_INSTALLED))).toBe(false);
  }, 60_000);
});

describe('scanHelper (the persist scan)', () => {
  test('MKMA_SCAN_HELPER=off: the find walk', () => {
    process.env.MKMA_SCAN_HELPER = 'off';
    expect(scanHelper()).toEqual({ path: null, reason: 'MKMA_SCAN_HELPER=off' });
  });

  test('MKMA_SCAN_HELPER=PATH: that binary, if it is mkma-scan', () => {
    const built = buildScanHelper({ cacheDir: path.join(TMP, 'cache') });
    process.env.MKMA_SCAN_HELPER = built.path!;
    expect(scanHelper()).toEqual({ path: built.path });
    process.env.MKMA_SCAN_HELPER = '/bin/true';
    expect(scanHelper()).toEqual({ path: null, reason: 'MKMA_SCAN_HELPER=/bin/true does not run' });
  }, 60_000);
});
