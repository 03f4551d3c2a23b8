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
//   - an arm64 image gets GRUB arm64-efi at /EFI/BOOT/BOOTAA64.EFI instead, and nothing for BIOS
//     (arm64 machines have none): see efiGrubFor.
// Both platforms' modules are copied to /boot/grub/<platform> as grub-install would, so that
// `insmod` works from GRUB's command line.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MkmaError, UsageError } from '../lib/errors.js';
import type { HostTool } from '../lib/hosttools.js';
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
  // (UGA is x86-only)
  'arm64-efi': ['efi_gop'],
};

/** GRUB for UEFI on an image's architecture: its platform, the removable-media file, the Debian package. */
export interface EfiGrub {
  platform: string;
  /** the file in /EFI/BOOT that firmware boots without an NVRAM entry (UEFI spec 3.5.1.1) */
  file: string;
  pkg: string;
  /** also GRUB i386-pc in the BIOS boot partition (x86 machines may have BIOS only) */
  bios: boolean;
}

/**
 * amd64: x86_64-efi and BIOS. arm64: arm64-efi only; its modules come from Debian's arm64
 * package (grub-efi-arm64-bin:arm64, data only: Multi-Arch foreign, its grub-common dependency
 * met by the host's), made into an image by the host's own grub-mkimage. The BIOS boot
 * partition stays in an arm64 stick's layout, unused: one layout for every stick, which
 * mkma update and adding a hostname recognise (install/layout.ts), for 1 MiB.
 */
const EFI_GRUBS: Record<string, EfiGrub> = {
  amd64: { platform: EFI_PLATFORM, file: 'BOOTX64.EFI', pkg: 'grub-efi-amd64-bin', bios: true },
  arm64: { platform: 'arm64-efi', file: 'BOOTAA64.EFI', pkg: 'grub-efi-arm64-bin:arm64', bios: false },
};

export function efiGrubFor(arch: string): EfiGrub {
  const g = EFI_GRUBS[arch];
  if (!g) throw new GrubError(`mkma install writes GRUB for ${Object.keys(EFI_GRUBS).join(' and ')} images, not ${arch}`);
  return g;
}

/** Where the removable-media GRUB of `arch` is on the ESP (/EFI/BOOT/BOOTAA64.EFI). */
export function efiBootPath(arch: string): string {
  return `${path.posix.dirname(ESP_PATHS.efiBoot)}/${efiGrubFor(arch).file}`;
}

/** The host tools install needs for an `arch` image: INSTALL_TOOLS with that architecture's GRUB. */
export function grubTools(arch: string, tools: HostTool[]): HostTool[] {
  const g = efiGrubFor(arch);
  return [
    ...tools.filter((t) => g.bios || !t.path?.startsWith(`${GRUB_LIB}/`)),
    ...(g.platform === EFI_PLATFORM
      ? []
      : [
          {
            command: `GRUB ${g.platform}`,
            path: `${GRUB_LIB}/${g.platform}/kernel.img`,
            pkg: g.pkg,
            why: `GRUB for UEFI on ${arch} (its package is ${arch}'s: dpkg --add-architecture ${arch} first)`,
          },
        ]),
  ];
}

/**
 * One GRUB menu serves every hostname on a stick, and GRUB for one architecture is on it: adding
 * or updating an image of another architecture is refused (the stick would not boot it).
 */
export function refuseOtherArch(esp: Esp, arch: string, given: string, verb: string): void {
  if (!esp.exists(efiBootPath(arch))) {
    throw new UsageError(
      `${verb}: ${given} was made for another architecture (it has no ${efiBootPath(arch)}) and this image is ${arch}: ` +
        `use another stick${verb === 'install' ? ', or --wipe to start this one anew' : ''}`,
    );
  }
}

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
      `GRUB for ${platform} is not installed (${dir}): apt-get install ${platform === BIOS_PLATFORM ? 'grub-pc-bin' : (Object.values(EFI_GRUBS).find((g) => g.platform === platform)?.pkg ?? 'grub-efi-amd64-bin')}`,
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
  /** the image's architecture (default amd64) */
  arch?: string;
}

/** Installs GRUB for BIOS and UEFI (arm64: UEFI only); the menu (grub.cfg) is written separately. */
export function installGrub(o: GrubInstallOptions): void {
  const cfg = path.join(o.workDir, 'early.cfg');
  fs.writeFileSync(cfg, earlyConfig(o.esp.volumeId()));

  const g = efiGrubFor(o.arch ?? 'amd64');
  const efi = path.join(o.workDir, g.file);
  makeImage(g.platform, g.platform, efi, cfg);
  o.esp.put([efi], path.posix.dirname(ESP_PATHS.efiBoot));
  o.esp.put(moduleFiles(g.platform), `${ESP_PATHS.grubDir}/${g.platform}`);
  if (!g.bios) return;

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
