// Host tools mkma needs, and the Debian packages that provide them.
import * as fs from 'node:fs';
import { EnvironmentError } from './errors.js';
import { runSync } from './run.js';

export interface HostTool {
  command: string;
  pkg: string;
  why: string;
  /** a file that must exist instead of `command` on PATH (GRUB's platform directories, firmware) */
  path?: string;
}

export const BUILD_TOOLS: HostTool[] = [
  { command: 'mmdebstrap', pkg: 'mmdebstrap', why: 'bootstraps the Debian root filesystem' },
  { command: 'zstd', pkg: 'zstd', why: 'compresses the images' },
  { command: 'getfattr', pkg: 'attr', why: 'reads extended attributes (file capabilities, ACLs)' },
  { command: 'setfattr', pkg: 'attr', why: 'restores extended attributes (mkma unpack)' },
  { command: 'xz', pkg: 'xz-utils', why: 'decompresses kernel modules for the initramfs' },
  { command: 'depmod', pkg: 'kmod', why: 'indexes kernel modules after trimming' },
  { command: 'findmnt', pkg: 'util-linux', why: 'finds the storage device for the kernel command line' },
];

/** Optional: mkma-unpack, the fast boot-time extractor, is compiled from them (see builder/unpacker.ts). */
export const FAST_BOOT_TOOLS: HostTool[] = [{ command: 'gcc', pkg: 'gcc', why: 'compiles mkma-unpack, the fast boot-time extractor' }];
export const FAST_BOOT_PACKAGES = ['gcc', 'libc6-dev', 'libzstd-dev'];

export const QEMU_TOOLS: HostTool[] = [
  { command: 'qemu-system-x86_64', pkg: 'qemu-system-x86', why: 'boots the image for the smoke test' },
  { command: 'mke2fs', pkg: 'e2fsprogs', why: 'makes the test disk without mounting anything' },
  { command: 'debugfs', pkg: 'e2fsprogs', why: 'reads layers back from the test disk' },
];

export function hasCommand(cmd: string): boolean {
  return runSync('/bin/sh', ['-c', `command -v "$1" >/dev/null 2>&1`, 'sh', cmd], { allowFailure: true }).ok;
}

/**
 * `mkma install` and `mkma update`: partitioning, the two filesystems, GRUB for both firmware
 * types. The ESP is written with mtools (no vfat mount: the host kernel may lack it), GRUB's
 * images are made with grub-mkimage and set up with grub-bios-setup (grub-install would probe
 * a mounted boot directory on the host); grub-bios-setup finds partition offsets through
 * udevadm.
 */
export const INSTALL_TOOLS: HostTool[] = [
  { command: 'sgdisk', pkg: 'gdisk', why: 'writes the GPT partition table' },
  { command: 'partx', pkg: 'util-linux', why: 'makes the kernel read the new partition table' },
  { command: 'losetup', pkg: 'mount', why: 'attaches a disk image file as a block device' },
  { command: 'blkid', pkg: 'util-linux', why: 'reads filesystem UUIDs' },
  { command: 'mkfs.vfat', pkg: 'dosfstools', why: 'makes the EFI system partition' },
  { command: 'mcopy', pkg: 'mtools', why: 'writes the EFI system partition without mounting it' },
  { command: 'mkfs.ext4', pkg: 'e2fsprogs', why: 'makes the data partition' },
  { command: 'grub-mkimage', pkg: 'grub-common', why: "makes GRUB's boot images" },
  { command: 'udevadm', pkg: 'udev', why: "lets grub-bios-setup find the target's partitions" },
  { command: 'grub-bios-setup', path: '/usr/lib/grub/i386-pc/grub-bios-setup', pkg: 'grub-pc-bin', why: 'installs GRUB for BIOS' },
  { command: 'GRUB x86_64-efi', path: '/usr/lib/grub/x86_64-efi/kernel.img', pkg: 'grub-efi-amd64-bin', why: 'GRUB for UEFI' },
];

/** `mkma install --encrypt`. */
export const ENCRYPT_TOOLS: HostTool[] = [{ command: 'cryptsetup', pkg: 'cryptsetup-bin', why: 'encrypts the data partition (LUKS2)' }];

export function missingTools(tools: HostTool[]): HostTool[] {
  return tools.filter((t) => (t.path ? !fs.existsSync(t.path) : !hasCommand(t.command)));
}

export class MissingToolsError extends EnvironmentError {
  constructor(readonly missing: HostTool[]) {
    const pkgs = [...new Set(missing.map((t) => t.pkg))];
    super(
      `missing host tools: ${missing.map((t) => `${t.command} (${t.why})`).join(', ')}.\n` +
        `Install them with: apt-get install ${pkgs.join(' ')}   (or run mkma with --install-deps)`,
    );
  }
}

export function requireTools(tools: HostTool[]): void {
  const missing = missingTools(tools);
  if (missing.length) throw new MissingToolsError(missing);
}

/** The architectures of `pkg:arch` names that dpkg knows neither as its own nor as foreign ones. */
export function newForeignArches(pkgs: string[], dpkgArches?: string[]): string[] {
  const known =
    dpkgArches ??
    [runSync('dpkg', ['--print-architecture']).stdout, runSync('dpkg', ['--print-foreign-architectures']).stdout].join('\n').split(/\s+/);
  const wanted = pkgs.map((p) => p.split(':')[1]).filter((a): a is string => !!a && a !== 'any' && a !== 'all');
  return [...new Set(wanted)].filter((a) => !known.includes(a));
}

/** --install-deps: apt-get install what is missing (apt-get update first, once). */
export function installTools(tools: HostTool[], log: (s: string) => void, extraPackages: string[] = []): void {
  const missingExtra = extraPackages.filter(
    (p) => runSync('dpkg-query', ['-W', '-f=${Status}', p], { allowFailure: true }).stdout !== 'install ok installed',
  );
  const pkgs = [...new Set([...missingTools(tools).map((t) => t.pkg), ...missingExtra])];
  if (!pkgs.length) return;
  log(`installing host packages: ${pkgs.join(' ')}`);
  const env = { DEBIAN_FRONTEND: 'noninteractive' };
  for (const arch of newForeignArches(pkgs)) {
    log(
      `adding ${arch} to dpkg's architectures (dpkg --add-architecture ${arch}) for ${pkgs.filter((p) => p.endsWith(`:${arch}`)).join(' ')}`,
    );
    runSync('dpkg', ['--add-architecture', arch]);
  }
  runSync('apt-get', ['update'], { stdio: 'inherit', env });
  runSync('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { stdio: 'inherit', env });
}
