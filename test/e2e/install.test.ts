// The stick on real firmware (QEMU, TCG): `mkma install` writes the shared test image into a
// disk image file; SeaBIOS boots it through GRUB i386-pc to multi-user, where the guest
// changes a file and saves it with `mkma persist`; then OVMF boots the same disk through GRUB
// x86_64-efi (/EFI/BOOT/BOOTX64.EFI, variables in a writable copy) and the change is there.
// Two boots, about a minute each under TCG.
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { parsePartitionTable } from '../../install/layout.js';
import { bootInstalledDisk } from '../../qemu/installed.js';
import { MULTI_USER_MARKER } from '../../qemu/run.js';
import { describeSmoke } from '../../qemu/smoke.js';
import { IMAGE_OUT, MKMA, WORK } from '../helpers/paths.js';

const DIR = path.join(WORK, 'e2e-install');
const STICK = path.join(DIR, 'stick.img');

const PERSIST = String.raw`
echo "cmdline: $(cat /proc/cmdline)"
echo "written on a BIOS boot" >/etc/mkma-install-e2e
mkma persist --yes --message "install e2e" 2>&1
echo "persist exit: $?"
`;

const CHECK = String.raw`
echo "firmware: $(test -d /sys/firmware/efi && echo UEFI || echo BIOS)"
echo "change: $(cat /etc/mkma-install-e2e 2>&1)"
`;

/** The files of a directory on the stick's data partition (debugfs at its offset). */
function dataFiles(dir: string): string[] {
  const rows = parsePartitionTable(spawnSync('sgdisk', ['--print', STICK], { encoding: 'utf8' }).stdout);
  const offset = rows.find((r) => r.number === 3)!.startSector * 512;
  const ls = spawnSync('debugfs', ['-R', `ls ${dir}`, `${STICK}?offset=${offset}`], { encoding: 'utf8' });
  return ls.stdout.split(/\s+/).filter((n) => /^[a-z]/.test(n) && !n.startsWith('('));
}

describe('mkma install: one stick, BIOS then UEFI', () => {
  test('installed, booted with SeaBIOS, a change persisted, booted with OVMF: the change is there', async () => {
    fs.rmSync(DIR, { recursive: true, force: true });
    for (const [name, script] of [
      ['persist', PERSIST],
      ['check', CHECK],
    ]) {
      fs.mkdirSync(path.join(DIR, name), { recursive: true });
      fs.writeFileSync(path.join(DIR, name, 'run.sh'), script);
    }

    const t0 = performance.now();
    const install = spawnSync(
      process.execPath,
      [
        MKMA,
        'install',
        STICK,
        '--size',
        '1G',
        '--esp-size',
        '128M',
        '--yes',
        '--out',
        IMAGE_OUT,
        '--append',
        'console=ttyS0 mkma_test',
        '--json',
      ],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 },
    );
    expect(install.stderr).toBe('');
    expect(install.status).toBe(0);
    const installed = JSON.parse(install.stdout) as { durationSec: number; layout: string; dataUuid: string; hostname: string };
    const installSec = (performance.now() - t0) / 1000;

    const common = { reporter: createReporter({ quiet: true }), env: { MKMA_QEMU_ACCEL: 'tcg' }, timeoutSec: 540 };
    let running: number | undefined;
    const bootStart = performance.now();
    const bios = await bootInstalledDisk({
      ...common,
      onLine: (line) => {
        if (running === undefined && line.includes(MULTI_USER_MARKER)) running = (performance.now() - bootStart) / 1000;
      },
      disk: STICK,
      uefi: false,
      testDataDir: path.join(DIR, 'persist'),
      logPath: path.join(DIR, 'bios.log'),
    });
    process.stderr.write(`\nSeaBIOS boot:\n${describeSmoke(bios)}\n`);
    expect(bios.ok).toBe(true);
    // through GRUB's menu, and the kernel found the data partition by its UUID
    expect(bios.log).toMatch(new RegExp(`mkma: loading ${installed.hostname}, generation 1`));
    expect(bios.log).toMatch(new RegExp(`MKMA-TEST-OUT: cmdline: .*mkma_storage_device=UUID=${installed.dataUuid} `));
    expect(bios.log).toMatch(/phase unpack-base base\.g1\.cpio\.zst: /);
    expect(bios.log).toMatch(/MKMA-TEST-OUT: persist exit: 0/);
    const layers = dataFiles(`/images/${installed.hostname}`).filter((n) => n.startsWith('persistence.'));
    expect(layers).toHaveLength(1);

    const uefi = await bootInstalledDisk({
      ...common,
      disk: STICK,
      uefi: true,
      testDataDir: path.join(DIR, 'check'),
      logPath: path.join(DIR, 'uefi.log'),
    });
    process.stderr.write(`\nOVMF boot:\n${describeSmoke(uefi)}\n`);
    expect(uefi.ok).toBe(true);
    expect(fs.existsSync(`${STICK}.efivars.fd`)).toBe(true);
    expect(uefi.log).toMatch(/MKMA-TEST-OUT: firmware: UEFI/);
    expect(uefi.log).toMatch(new RegExp(`phase layer-applied ${layers[0].replace(/\./g, '\\.')}`));
    expect(uefi.log).toMatch(/MKMA-TEST-OUT: change: written on a BIOS boot/);

    // what the note needs: the stick's layout, and the time from `mkma install` to a running system
    process.stderr.write(
      `\n${installed.layout}\nmkma install ${installSec.toFixed(1)} s (its own count ${installed.durationSec.toFixed(1)} s), ` +
        `then SeaBIOS, GRUB, kernel and init to multi-user ${running?.toFixed(1)} s (guest uptime ${bios.timings.multiUser?.toFixed(1)} s): ` +
        `a running system ${(installSec + (running ?? NaN)).toFixed(1)} s after mkma install began (TCG); ` +
        `the SeaBIOS boot with the persist took ${bios.durationSec.toFixed(1)} s, the OVMF boot ${uefi.durationSec.toFixed(1)} s\n`,
    );
  }, 1_500_000);
});
