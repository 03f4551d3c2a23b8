// GRUB for both firmware types from one stick, with one menu.
//
// grub-install is not used: it probes the filesystem of a *mounted* boot directory on the host
// (this project's CI kernel cannot mount vfat at all) and asks the host's firmware questions.
// What it does for us is two steps, done here with GRUB's own tools:
//   - grub-mkimage makes the core image of each platform with a small embedded config that
//     finds the ESP by its volume id and reads /boot/grub/grub.cfg from it;
//   - BIOS: grub-bios-setup writes boot.img into the MBR's code area (the GPT's protective MBR
//     keeps its partition entry) and core.img into the BIOS boot partition. It needs its
//     directory on a filesystem of the target disk (it guesses the "root device" from it) and
//     udevadm to find partition offsets: the directory is made on the data partition;
//   - UEFI: the x86_64-efi image goes to the removable-media path /EFI/BOOT/BOOTX64.EFI, which
//     firmware boots without any NVRAM entry (a stick moves between machines).
// Both platforms' modules are copied to /boot/grub/<platform> as grub-install would, so that
// `insmod` works from GRUB's command line.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MkmaError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';
import type { Esp } from './esp.js';
import { ESP_PATHS } from './layout.js';

export class GrubError extends MkmaError {}

export const GRUB_LIB = '/usr/lib/grub';
export const BIOS_PLATFORM = 'i386-pc';
export const EFI_PLATFORM = 'x86_64-efi';
export const GRUB_BIOS_SETUP = `${GRUB_LIB}/${BIOS_PLATFORM}/grub-bios-setup`;

/**
 * Built into both core images: the menu needs nothing from the module directories. part_gpt,
 * fat: find and read the ESP; search_fs_uuid: find it by volume id; normal, configfile, test,
 * echo: run the menu; linux: boot; serial, terminal: the serial console; zstd: nothing yet
 * (the kernel reads the zstd initramfs itself), kept out.
 */
const COMMON_MODULES = [
  'part_gpt',
  'fat',
  'ext2',
  'search',
  'search_fs_uuid',
  'normal',
  'configfile',
  'test',
  'echo',
  'linux',
  'serial',
  'terminal',
  'loadenv',
  'halt',
  'reboot',
];
const PLATFORM_MODULES: Record<string, string[]> = {
  [BIOS_PLATFORM]: ['biosdisk'],
  // a video mode for the kernel's EFI framebuffer console
  [EFI_PLATFORM]: ['efi_gop', 'efi_uga'],
};

/**
 * The embedded config: find the ESP by its volume id; GRUB's normal mode then reads
 * /boot/grub/grub.cfg from it (install/menu.ts). Plain commands only: the embedded config is
 * run before normal mode, by the rescue parser.
 */
export function earlyConfig(espVolumeId: string): string {
  return `search --no-floppy --fs-uuid --set=root ${espVolumeId}\nset prefix=($root)${ESP_PATHS.grubDir}\n`;
}

function makeImage(platform: string, format: string, out: string, cfg: string): void {
  const dir = path.join(GRUB_LIB, platform);
  if (!fs.existsSync(path.join(dir, 'kernel.img'))) {
    throw new GrubError(
      `GRUB for ${platform} is not installed (${dir}): apt-get install ${platform === BIOS_PLATFORM ? 'grub-pc-bin' : 'grub-efi-amd64-bin'}`,
    );
  }
  // prettier-ignore
  runSync('grub-mkimage', [
    '--directory', dir, '--format', format, '--output', out, '--config', cfg,
    '--prefix', ESP_PATHS.grubDir, ...COMMON_MODULES, ...PLATFORM_MODULES[platform],
  ]);
}

/** The modules and lists of a platform, as grub-install copies them. */
function moduleFiles(platform: string): string[] {
  const dir = path.join(GRUB_LIB, platform);
  return fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.mod') || n.endsWith('.lst'))
    .map((n) => path.join(dir, n));
}

export interface GrubInstallOptions {
  esp: Esp;
  /** the whole disk (/dev/sdb, /dev/loop3) */
  diskNode: string;
  /** a directory on a mounted filesystem of the same disk (grub-bios-setup's -d) */
  scratchOnDisk: string;
  /** where the images are made */
  workDir: string;
}

/** Installs GRUB for BIOS and UEFI; the menu (grub.cfg) is written separately. */
export function installGrub(o: GrubInstallOptions): void {
  const cfg = path.join(o.workDir, 'early.cfg');
  fs.writeFileSync(cfg, earlyConfig(o.esp.volumeId()));

  const efi = path.join(o.workDir, 'BOOTX64.EFI');
  makeImage(EFI_PLATFORM, 'x86_64-efi', efi, cfg);
  o.esp.put([efi], path.posix.dirname(ESP_PATHS.efiBoot));
  o.esp.put(moduleFiles(EFI_PLATFORM), `${ESP_PATHS.grubDir}/${EFI_PLATFORM}`);

  const setupDir = path.join(o.scratchOnDisk, '.mkma-grub-setup');
  fs.mkdirSync(setupDir, { recursive: true });
  try {
    makeImage(BIOS_PLATFORM, 'i386-pc', path.join(setupDir, 'core.img'), cfg);
    fs.copyFileSync(path.join(GRUB_LIB, BIOS_PLATFORM, 'boot.img'), path.join(setupDir, 'boot.img'));
    // --no-rs-codes would save nothing here (the BIOS boot partition is 1 MiB); keep GRUB's default.
    // --device-map /dev/null: no device.map of the host's disks; the target is named directly.
    runSync(GRUB_BIOS_SETUP, ['--directory', setupDir, '--device-map', '/dev/null', o.diskNode]);
  } finally {
    fs.rmSync(setupDir, { recursive: true, force: true });
  }
  o.esp.put(moduleFiles(BIOS_PLATFORM), `${ESP_PATHS.grubDir}/${BIOS_PLATFORM}`);
}
