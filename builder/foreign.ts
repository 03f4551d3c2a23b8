// Building an image for another CPU architecture than the host's: what runs the target's
// programs (qemu-user through binfmt_misc), the CPU model it emulates, and the cross compiler
// that builds mkma-unpack for it. Nothing of the image runs on the host except through
// qemu-user inside the chroot (mmdebstrap's maintainer scripts, presets).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hostArch } from '../lib/arch.js';
import { EnvironmentError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';
import { hasCommand } from '../lib/hosttools.js';

export interface ForeignArch {
  /** the qemu-user name, as in /usr/bin/qemu-<name>-static and binfmt_misc's qemu-<name> */
  qemu: string;
  /**
   * QEMU_CPU for qemu-user during the bootstrap and presets, or null for QEMU's default.
   * arm64: trixie's binaries are built with branch protection (PAC in most functions), and
   * QEMU's default `max` CPU emulates pointer authentication with the architected QARMA5
   * cipher, expensive under TCG. cortex-a72 (ARMv8.0, no PAC: the instructions are NOPs) was
   * the fastest or close to it in every workload measured; the bootstrap took 291.7 s against
   * 575.9 s with the default, the kernel package's postinst 22.6 s against 80.6 s
   * (docs/arm64-research.md).
   */
  cpu: string | null;
  /** GNU triplet of Debian's cross toolchain (gcc-<triplet with - for _>) */
  triplet: string;
  /** ELF e_machine of its binaries (a cross-built helper is checked against it) */
  elfMachine: number;
}

export const FOREIGN_ARCHES: Record<string, ForeignArch> = {
  arm64: { qemu: 'aarch64', cpu: 'cortex-a72', triplet: 'aarch64-linux-gnu', elfMachine: 183 },
  riscv64: { qemu: 'riscv64', cpu: null, triplet: 'riscv64-linux-gnu', elfMachine: 243 },
  amd64: { qemu: 'x86_64', cpu: null, triplet: 'x86_64-linux-gnu', elfMachine: 62 },
};

export function isForeign(arch: string): boolean {
  return arch !== hostArch();
}

/** Environment for processes that may run the target's binaries (mmdebstrap, a preset's chroot). */
export function foreignEnv(arch: string): Record<string, string> {
  const f = FOREIGN_ARCHES[arch];
  return isForeign(arch) && f?.cpu ? { QEMU_CPU: f.cpu } : {};
}

export const BINFMT_DIR = '/proc/sys/fs/binfmt_misc';
/** Debian's packages: the static emulators (registered with the F flag), and the registration service. */
export const BINFMT_PACKAGES = ['qemu-user-static', 'binfmt-support'];
/**
 * mmdebstrap refuses a foreign bootstrap without arch-test ("install arch-test for foreign
 * architecture support"); it is only a Recommends of mmdebstrap, and both --install-deps and
 * CI install without recommends, so a fresh host lacks it.
 */
export const ARCH_TEST_PACKAGE = 'arch-test';

/**
 * Host packages a build for `arch` needs besides the native ones: qemu-user with its
 * registration, the cross compiler with its static libc (only recommended by the compiler, and
 * --install-deps installs without recommends) and the target's static libzstd, a package of
 * that architecture (lib/hosttools.ts installTools adds it to dpkg's architectures first).
 */
export function foreignHostPackages(arch: string): string[] {
  const f = FOREIGN_ARCHES[arch];
  return isForeign(arch) && f
    ? [...BINFMT_PACKAGES, ARCH_TEST_PACKAGE, `gcc-${f.triplet}`, `libc6-dev-${arch}-cross`, `libzstd-dev:${arch}`]
    : [];
}

export class BinfmtError extends EnvironmentError {}

export interface BinfmtCheckOptions {
  /** where binfmt_misc is (tests point this at a fake directory) */
  dir?: string;
  /** mounts binfmt_misc at dir when it is not; returns an error text or null */
  mount?: (dir: string) => string | null;
  /** whether a command is on PATH (tests answer for arch-test) */
  hasCommand?: (cmd: string) => boolean;
}

function mountBinfmt(dir: string): string | null {
  const r = runSync('mount', ['-t', 'binfmt_misc', 'binfmt_misc', dir], { allowFailure: true });
  return r.ok ? null : r.stderr.trim() || `mount exited with ${r.status}`;
}

/**
 * Before a foreign bootstrap: binfmt_misc is mounted (mounted here when it is not) and enabled,
 * and qemu-<arch> is registered, enabled, with the F (fix binary) flag: the kernel then opens
 * the emulator once, at registration, so it runs inside a chroot that does not contain it.
 * Without F the interpreter path is looked up inside the chroot at every exec and mmdebstrap's
 * first maintainer script fails with ENOENT. Throws BinfmtError saying what to install or
 * enable; returns the registered interpreter.
 */
export function checkBinfmt(arch: string, o: BinfmtCheckOptions = {}): string {
  const f = FOREIGN_ARCHES[arch];
  if (!f) {
    throw new BinfmtError(
      `cannot build for ${arch} on this ${hostArch()} host: mkma knows how to emulate ${Object.keys(FOREIGN_ARCHES).join(', ')}`,
    );
  }
  const dir = o.dir ?? BINFMT_DIR;
  const install = `apt-get install ${BINFMT_PACKAGES.join(' ')}`;
  if (!(o.hasCommand ?? hasCommand)('arch-test')) {
    throw new BinfmtError(
      `building a ${arch} image needs arch-test, which mmdebstrap runs to check that this host can execute ${arch} ` +
        `programs: apt-get install ${ARCH_TEST_PACKAGE} (or mkma build --install-deps)`,
    );
  }
  const status = path.join(dir, 'status');
  if (!fs.existsSync(status)) {
    const err = (o.mount ?? mountBinfmt)(dir);
    if (!fs.existsSync(status)) {
      throw new BinfmtError(
        `building a ${arch} image runs its programs through qemu-user, but binfmt_misc is not mounted at ${dir}` +
          ` and mounting it failed${err ? ` (${err})` : ''}: load the module (modprobe binfmt_misc), mount it` +
          ` (mount -t binfmt_misc binfmt_misc ${dir}), and ${install}`,
      );
    }
  }
  if (fs.readFileSync(status, 'utf8').trim() !== 'enabled') {
    throw new BinfmtError(`binfmt_misc is disabled (${status}): enable it with: echo 1 > ${status}`);
  }
  const name = `qemu-${f.qemu}`;
  const entry = path.join(dir, name);
  if (!fs.existsSync(entry)) {
    throw new BinfmtError(
      `building a ${arch} image needs qemu-user for ${f.qemu} registered in binfmt_misc, and ${entry} does not exist: ` +
        `${install} (on systemd hosts then: systemctl restart systemd-binfmt)`,
    );
  }
  const text = fs.readFileSync(entry, 'utf8');
  const lines = text.split('\n').map((l) => l.trim());
  const interpreter = lines.find((l) => l.startsWith('interpreter '))?.slice('interpreter '.length) ?? '?';
  const flags =
    lines
      .find((l) => l.startsWith('flags:'))
      ?.slice('flags:'.length)
      .trim() ?? '';
  if (lines[0] !== 'enabled') {
    throw new BinfmtError(`${name} is registered in binfmt_misc but disabled (${entry}): update-binfmts --enable ${name}`);
  }
  if (!flags.includes('F')) {
    throw new BinfmtError(
      `${name} is registered in binfmt_misc without the F (fix binary) flag (${entry}: interpreter ${interpreter}, flags "${flags}"): ` +
        `the emulator would be looked up inside the image's tree, where it is not. ` +
        `qemu-user-static registers it with F: ${install}, and remove the other registration (update-binfmts --package qemu-user-binfmt --remove …)`,
    );
  }
  return interpreter;
}

/** The architecture whose binaries have ELF machine `machine` (null when mkma knows none). */
export function archOfElfMachine(machine: number): string | null {
  return Object.entries(FOREIGN_ARCHES).find(([, f]) => f.elfMachine === machine)?.[0] ?? null;
}
