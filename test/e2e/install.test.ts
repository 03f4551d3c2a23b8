// The stick on real firmware (QEMU, TCG): `mkma install` writes the shared test image into a
// disk image file; SeaBIOS boots it through GRUB i386-pc to multi-user, where the guest
// changes a file and saves it with `mkma persist`; then OVMF boots the same disk through GRUB
// x86_64-efi (/EFI/BOOT/BOOTX64.EFI, variables in a writable copy) and the change is there.
// Between the two, `mkma update` puts a rebuilt base on the stick (the test image's base with
// one file added: test/helpers/rebuilt-base.ts), so OVMF boots generation 2: the layer written
// on generation 1 is kept and applies on the new base, and update warned that it was written
// on another base. A third boot (SeaBIOS) takes the menu's "previous generation" entry: the
// old base, with the layer. The entry is chosen by making it the menu's default (menu.cfg on the
// ESP, with mtools) rather than by keys: GRUB draws its menu over serial with cursor-addressing
// escape codes, not lines a line-based responder can wait for, and `set default` is the same
// choice GRUB makes from a key press. Three boots, about a minute each under TCG.
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { parsePartitionTable } from '../../install/layout.js';
import { bootInstalledDisk } from '../../qemu/installed.js';
import { MULTI_USER_MARKER } from '../../qemu/run.js';
import { describeSmoke } from '../../qemu/smoke.js';
import { layerInAnyState } from '../helpers/layer-names.js';
import { IMAGE_OUT, MKMA } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';
import { baseWithFile, outWithBase } from '../helpers/rebuilt-base.js';
import { readManifest } from '../../format/reader.js';
import { FILES } from '../../lib/contract.js';

const DIR = ownWorkDir('e2e-install');
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
echo "base: $(cat /etc/mkma-rebuilt 2>/dev/null || echo old)"
`;

/** The stick's ESP as mtools names it (the image file at the partition's offset). */
function espTarget(): string {
  const rows = parsePartitionTable(spawnSync('sgdisk', ['--print', STICK], { encoding: 'utf8' }).stdout);
  return `${STICK}@@${rows.find((r) => r.number === 2)!.startSector * 512}`;
}

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

    // a rebuilt base (one file more) onto the stick: generation 2; the layer written on 1 is named
    const t1 = performance.now();
    const rebuilt = path.join(DIR, 'rebuilt');
    fs.mkdirSync(rebuilt, { recursive: true });
    baseWithFile(path.join(IMAGE_OUT, FILES.base), path.join(DIR, 'base-g2.cpio.zst'), 'etc/mkma-rebuilt', 'generation 2\n');
    outWithBase(IMAGE_OUT, path.join(DIR, 'base-g2.cpio.zst'), rebuilt);
    const update = spawnSync(process.execPath, [MKMA, 'update', STICK, '--out', rebuilt, '--json'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 300_000,
    });
    expect(update.status).toBe(0);
    // the layer's manifest names generation 1's base: the init put it in boot.env, persist took it from there
    expect(update.stderr).toContain(`1 layer(s) were written on another base than the new one: ${layers[0]}.`);
    expect(JSON.parse(update.stdout)).toMatchObject({ generation: 2, previous: 1, layers, layersOnOtherBase: layers });
    const updateSec = (performance.now() - t1) / 1000;
    expect(readManifest(path.join(IMAGE_OUT, FILES.base)).dataSha256).not.toBe(readManifest(path.join(rebuilt, FILES.base)).dataSha256);

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
    expect(uefi.log).toMatch(new RegExp(`phase layer-applied ${layerInAnyState(layers[0])}`));
    expect(uefi.log).toMatch(/MKMA-TEST-OUT: change: written on a BIOS boot/);
    // generation 2: the rebuilt base, the layer applied on it
    expect(uefi.log).toMatch(/phase unpack-base base\.g2\.cpio\.zst: /);
    expect(uefi.log).toMatch(/MKMA-TEST-OUT: base: generation 2/);

    // the menu's previous entry (made the default for this boot): generation 1's base, with the layer
    const esp = espTarget();
    const menu = spawnSync('mtype', ['-i', esp, '::/boot/grub/menu.cfg'], { encoding: 'utf8' }).stdout;
    expect(menu).toContain(`--id 'mkma-${installed.hostname}-previous'`);
    const menuFile = path.join(DIR, 'menu.cfg');
    fs.writeFileSync(menuFile, menu.replace(/^set default=0$/m, `set default='mkma-${installed.hostname}-previous'`));
    expect(spawnSync('mcopy', ['-o', '-i', esp, menuFile, '::/boot/grub/menu.cfg']).status).toBe(0);
    const previous = await bootInstalledDisk({
      ...common,
      disk: STICK,
      uefi: false,
      testDataDir: path.join(DIR, 'check'),
      logPath: path.join(DIR, 'previous.log'),
    });
    process.stderr.write(`\nSeaBIOS boot of the previous generation:\n${describeSmoke(previous)}\n`);
    expect(previous.ok).toBe(true);
    expect(previous.log).toMatch(new RegExp(`mkma: loading ${installed.hostname}, generation 1`));
    expect(previous.log).toMatch(/phase unpack-base base\.g1\.cpio\.zst: /);
    expect(previous.log).toMatch(/MKMA-TEST-OUT: base: old/);
    expect(previous.log).toMatch(/MKMA-TEST-OUT: change: written on a BIOS boot/);

    // what the note needs: the stick's layout, and the time from `mkma install` to a running system
    process.stderr.write(
      `\n${installed.layout}\nmkma install ${installSec.toFixed(1)} s (its own count ${installed.durationSec.toFixed(1)} s), ` +
        `then SeaBIOS, GRUB, kernel and init to multi-user ${running?.toFixed(1)} s (guest uptime ${bios.timings.multiUser?.toFixed(1)} s): ` +
        `a running system ${(installSec + (running ?? NaN)).toFixed(1)} s after mkma install began (TCG); ` +
        `the SeaBIOS boot with the persist took ${bios.durationSec.toFixed(1)} s, the OVMF boot ${uefi.durationSec.toFixed(1)} s; ` +
        `rebuilt base and mkma update ${updateSec.toFixed(1)} s, the boot of the previous generation ${previous.durationSec.toFixed(1)} s\n`,
    );
  }, 1_500_000);
});
