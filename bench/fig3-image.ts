// Figure 3's other base format and figure 3b (RAM at multi-user).
//   - The erofs variant is the test image re-packed, not re-bootstrapped: base.erofs made from
//     its base.cpio.zst by the build's own writer (builder/base-image.ts), and its initramfs
//     with one constant of the generated /init changed (MKMA_BASE_FORMAT='erofs'): the init,
//     modules and mkma-unpack are the ones the build made, so the two modes differ only there.
//   - A probe disk (label MKMA-TEST, run by the image's mkma-test hook once multi-user is
//     reached) prints /proc/meminfo and, once per contender, systemd-analyze blame and
//     critical-chain on the console, so RAM used (MemTotal − MemAvailable) is read there.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { initramfsWithBaseFormat, writeBaseImage } from '../builder/base-image.js';
import { BASE_NAME } from '../format/names.js';
import { FILES } from '../lib/contract.js';
import { makeDataDisk } from '../qemu/disk.js';

export const PROBE_LABEL = 'MKMA-TEST';

/** The probe's script: memory always; the systemd analysis when DETAIL exists on the disk. */
export const PROBE_SCRIPT = `#!/bin/sh
grep -E '^(MemTotal|MemAvailable|Shmem|Cached):' /proc/meminfo | sed 's/^/meminfo /'
if [ -f /run/mkma-test/DETAIL ]; then
	systemd-analyze time 2>&1 | sed 's/^/analyze /'
	systemd-analyze blame 2>&1 | head -n 15 | sed 's/^/blame /'
	systemd-analyze critical-chain 2>&1 | head -n 25 | sed 's/^/chain /'
	dmesg | grep -E 'crng init|random:' | sed 's/^/dmesg /'
fi
`;

/** Two probe disks: plain (memory) and detailed (memory + systemd-analyze). */
export async function makeProbeDisks(work: string): Promise<{ plain: string; detail: string }> {
  const make = async (name: string, detail: boolean) => {
    const dir = path.join(work, `probe-${name}`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'run.sh'), PROBE_SCRIPT, { mode: 0o755 });
    if (detail) fs.writeFileSync(path.join(dir, 'DETAIL'), '');
    const disk = path.join(work, `probe-${name}.img`);
    await makeDataDisk(dir, disk, PROBE_LABEL);
    return disk;
  };
  return { plain: await make('plain', false), detail: await make('detail', true) };
}

/** RAM used at multi-user in KiB (MemTotal − MemAvailable), from the probe's console lines. */
export function ramUsedKiB(log: string): number | null {
  const kb = (k: string) => {
    const m = new RegExp(`meminfo ${k}:\\s+(\\d+) kB`).exec(log);
    return m ? Number(m[1]) : null;
  };
  const total = kb('MemTotal');
  const avail = kb('MemAvailable');
  return total !== null && avail !== null ? total - avail : null;
}

/** The probe's systemd lines (blame, critical chain, analyze time, crng) from a console log. */
export function systemdDetail(log: string): string[] {
  return log
    .split('\n')
    .map((l) => /MKMA-TEST-OUT: ((?:analyze|blame|chain|dmesg) .*)$/.exec(l)?.[1])
    .filter((l): l is string => !!l);
}

/** base.erofs next to base.cpio.zst in `images`, made by the build's writer. */
export async function makeErofsBase(images: string, work: string, unpacker: string | null): Promise<string> {
  const r = await writeBaseImage({ format: 'erofs', basePath: path.join(images, BASE_NAME), outDir: images, workDir: work, unpacker });
  return path.basename(r.file);
}

/** The real initramfs with its init switched to base_format = erofs (one constant). */
export function makeErofsInitramfs(real: string, out: string, work: string): void {
  initramfsWithBaseFormat(real, out, work, 'erofs');
}

export const EROFS_FILE = FILES.baseErofs;
