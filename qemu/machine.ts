// The emulated machine and its firmware, per architecture, in one place: which QEMU, which
// machine type, which console the kernel writes to, and which UEFI firmware boots an installed
// disk (Debian's packages: ovmf for x86_64, qemu-efi-aarch64 for arm64). x86_64 also boots an
// installed disk with QEMU's own SeaBIOS.
import * as fs from 'node:fs';
import { EnvironmentError, UsageError } from '../lib/errors.js';
import type { HostTool } from '../lib/hosttools.js';
import { runSync } from '../lib/run.js';
import type { Firmware } from './run.js';

export type Arch = 'amd64' | 'arm64';

export function isArch(a: string): a is Arch {
  return Object.hasOwn(MACHINES, a);
}

export interface UefiFirmware {
  /** the name people know it by, for messages */
  name: string;
  /** candidates for the code and the variables template, first found wins */
  code: string[];
  vars: string[];
  pkg: string;
}

export interface MachineProfile {
  arch: Arch;
  qemuBinary: string;
  qemuPackage: string;
  machine: string;
  /** the kernel's serial console */
  console: string;
  /** what boots a disk without UEFI (null: UEFI only) */
  bios: string | null;
  uefi: UefiFirmware;
  /** -cpu under TCG (undefined: QEMU's default for the machine) */
  tcgCpu?: string;
  /** boot time limits are multiplied by this (the emulation is that much slower than amd64's TCG) */
  timeoutScale: number;
}

export const MACHINES: Record<Arch, MachineProfile> = {
  amd64: {
    arch: 'amd64',
    qemuBinary: 'qemu-system-x86_64',
    qemuPackage: 'qemu-system-x86',
    machine: 'q35',
    console: 'ttyS0',
    bios: 'SeaBIOS',
    timeoutScale: 1,
    uefi: {
      name: 'OVMF',
      // the 4 MiB build (Debian 12's default); the 2 MiB one for older releases
      code: ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_CODE.fd'],
      vars: ['/usr/share/OVMF/OVMF_VARS_4M.fd', '/usr/share/OVMF/OVMF_VARS.fd'],
      pkg: 'ovmf',
    },
  },
  arm64: {
    arch: 'arm64',
    qemuBinary: 'qemu-system-aarch64',
    qemuPackage: 'qemu-system-arm',
    machine: 'virt',
    console: 'ttyAMA0',
    bios: null,
    // `max` without pointer authentication: trixie's arm64 code is full of PAC instructions,
    // and `max` emulates them with the QARMA5 cipher, costly under TCG. Measured to
    // multi-user (docs/arm64-research.md): max 174.3 s, max,pauth-impdef=on 79.8 s,
    // cortex-a72 76.9 s, neoverse-n1 57.9 s, max,pauth=off 44.4 s; under `max` systemd even
    // timed out waiting for ttyAMA0.
    tcgCpu: 'max,pauth=off',
    // the best arm64 boot took 2.1x the amd64 one; 3 leaves room for a loaded CI machine
    timeoutScale: 3,
    uefi: {
      name: 'AAVMF',
      code: ['/usr/share/AAVMF/AAVMF_CODE.fd'],
      vars: ['/usr/share/AAVMF/AAVMF_VARS.fd'],
      pkg: 'qemu-efi-aarch64',
    },
  },
};

/** The machine for an image's architecture (mkma.json's), or a UsageError naming those mkma boots. */
export function machineFor(arch: string): MachineProfile {
  if (!isArch(arch)) throw new UsageError(`mkma qemu boots ${Object.keys(MACHINES).join(' and ')} images, not ${arch}`);
  return MACHINES[arch];
}

/** Host tools for booting an installed disk of `arch`. */
export function diskBootTools(arch: Arch, uefi: boolean): HostTool[] {
  const m = MACHINES[arch];
  const tools: HostTool[] = [{ command: m.qemuBinary, pkg: m.qemuPackage, why: 'boots the installed disk' }];
  if (uefi) tools.push({ command: `${m.uefi.name} firmware`, path: m.uefi.code[0], pkg: m.uefi.pkg, why: 'UEFI firmware for QEMU' });
  return tools;
}

/**
 * The firmware for a UEFI boot of `disk`: the code as installed, and the variables in a
 * writable copy next to the disk (`<disk>.efivars.fd`), made from the template the first time
 * and kept, as a real machine keeps its NVRAM.
 */
export function uefiFirmwareFor(arch: Arch, disk: string): Firmware {
  const u = MACHINES[arch].uefi;
  const code = u.code.find((p) => fs.existsSync(p));
  const template = u.vars.find((p) => fs.existsSync(p));
  if (!code || !template) throw new EnvironmentError(`${u.name} (UEFI firmware for QEMU) is not installed: apt-get install ${u.pkg}`);
  const vars = `${disk}.efivars.fd`;
  if (!fs.existsSync(vars)) fs.copyFileSync(template, vars);
  return { code, vars };
}

/** The removable-media boot file of each architecture's UEFI (UEFI spec 3.5.1.1). */
const REMOVABLE_EFI: Record<Arch, string> = { amd64: 'BOOTX64.EFI', arm64: 'BOOTAA64.EFI' };

/**
 * The architecture an installed disk boots: the one whose removable-media loader is in the
 * ESP's /EFI/BOOT (mkma install writes BOOTX64.EFI for amd64, BOOTAA64.EFI for arm64). Read
 * without mounting (sgdisk for the ESP's offset, mtools at it); amd64 when it cannot tell.
 */
export function diskArch(disk: string): Arch {
  try {
    const table = runSync('sgdisk', ['--print', disk], { allowFailure: true }).stdout;
    const sector = Number(/^Sector size \(logical\): (\d+) bytes/m.exec(table)?.[1] ?? 512);
    // "   2            4096          266239   128.0 MiB   EF00  mkma-esp"
    const start = /^\s*\d+\s+(\d+)\s+\d+\s+\S+ \S+\s+EF00\b/m.exec(table)?.[1];
    if (!start) return 'amd64';
    const dir = runSync('mdir', ['-b', '-i', `${disk}@@${Number(start) * sector}`, '::/EFI/BOOT'], {
      allowFailure: true,
      env: { MTOOLS_SKIP_CHECK: '1' },
    }).stdout.toUpperCase();
    const found = (Object.keys(REMOVABLE_EFI) as Arch[]).filter((a) => dir.includes(`/${REMOVABLE_EFI[a]}`));
    return found.length === 1 ? found[0] : 'amd64';
  } catch {
    return 'amd64';
  }
}
