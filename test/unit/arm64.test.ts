// Building and booting another architecture (issue 16), the parts that need no bootstrap:
// binfmt_misc's check against a fake /proc/sys/fs/binfmt_misc, the configuration (--arch and
// the kernel that follows it), the cross-built mkma-unpack, and QEMU's arm64 machine.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BinfmtError, checkBinfmt, foreignEnv, foreignHostPackages, FOREIGN_ARCHES } from '../../builder/foreign.js';
import { readElfInfo } from '../../builder/elf.js';
import { buildUnpacker, unpackerToolchain } from '../../builder/unpacker.js';
import { resolveConfig } from '../../config/load.js';
import { generateInit } from '../../init/generate.js';
import { hostArch } from '../../lib/arch.js';
import { INSTALL_TOOLS, newForeignArches } from '../../lib/hosttools.js';
import { grubTools } from '../../install/grub.js';
import { REPO } from '../helpers/paths.js';
import { diskArch, machineFor, MACHINES } from '../../qemu/machine.js';
import { kernelCommandLine, qemuArgs } from '../../qemu/run.js';
import { smokeTools } from '../../qemu/smoke.js';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-arm64-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

const REGISTERED = `enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: PF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
`;

/** A binfmt_misc directory as the kernel shows it, with the given entries. */
function fakeBinfmt(name: string, files: Record<string, string>): string {
  const dir = path.join(TMP, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), text);
  return dir;
}

const noMount = () => 'mount: permission denied (test)';
/** the host's own PATH is not asked: arch-test "is installed" unless a test says otherwise */
const archTest = (cmd: string) => cmd === 'arch-test';

describe('checkBinfmt (a fake binfmt_misc: the host registration is never touched)', () => {
  test('qemu-aarch64 registered, enabled, with F: the interpreter', () => {
    const dir = fakeBinfmt('ok', { status: 'enabled\n', 'qemu-aarch64': REGISTERED });
    expect(checkBinfmt('arm64', { dir, mount: noMount, hasCommand: archTest })).toBe('/usr/libexec/qemu-binfmt/aarch64-binfmt-P');
  });

  test('not mounted: mounted, and the check goes on', () => {
    const dir = fakeBinfmt('unmounted', {});
    const mounted: string[] = [];
    const mount = (d: string) => {
      mounted.push(d);
      fs.writeFileSync(path.join(d, 'status'), 'enabled\n');
      fs.writeFileSync(path.join(d, 'qemu-aarch64'), REGISTERED);
      return null;
    };
    expect(checkBinfmt('arm64', { dir, mount, hasCommand: archTest })).toContain('aarch64-binfmt-P');
    expect(mounted).toEqual([dir]);
  });

  test('not mounted and not mountable: says how to load, mount and install', () => {
    const dir = fakeBinfmt('nomount', {});
    const e = (() => {
      try {
        checkBinfmt('arm64', { dir, mount: noMount, hasCommand: archTest });
      } catch (err) {
        return err as Error;
      }
      throw new Error('no error');
    })();
    expect(e).toBeInstanceOf(BinfmtError);
    expect(e.message).toContain('binfmt_misc is not mounted');
    expect(e.message).toContain('permission denied (test)');
    expect(e.message).toContain('modprobe binfmt_misc');
    expect(e.message).toContain('apt-get install qemu-user-static binfmt-support');
  });

  test('no qemu-aarch64: names qemu-user-static and binfmt-support; exit 3 (environment)', () => {
    const dir = fakeBinfmt('none', { status: 'enabled\n', 'qemu-arm': REGISTERED });
    expect(() => checkBinfmt('arm64', { dir, mount: noMount, hasCommand: archTest })).toThrow(
      /qemu-user for aarch64 registered in binfmt_misc.*qemu-aarch64 does not exist: apt-get install qemu-user-static binfmt-support/,
    );
    try {
      checkBinfmt('arm64', { dir, mount: noMount, hasCommand: archTest });
    } catch (e) {
      expect((e as BinfmtError).exitCode).toBe(3);
    }
  });

  test('disabled binfmt_misc, a disabled entry, or one without F: each says what to enable', () => {
    const off = fakeBinfmt('off', { status: 'disabled\n', 'qemu-aarch64': REGISTERED });
    expect(() => checkBinfmt('arm64', { dir: off, mount: noMount, hasCommand: archTest })).toThrow(/binfmt_misc is disabled.*echo 1 > /);
    const entryOff = fakeBinfmt('entry-off', { status: 'enabled\n', 'qemu-aarch64': REGISTERED.replace('enabled', 'disabled') });
    expect(() => checkBinfmt('arm64', { dir: entryOff, mount: noMount, hasCommand: archTest })).toThrow(
      /disabled .*update-binfmts --enable qemu-aarch64/,
    );
    const noF = fakeBinfmt('no-f', { status: 'enabled\n', 'qemu-aarch64': REGISTERED.replace('flags: PF', 'flags: P') });
    expect(() => checkBinfmt('arm64', { dir: noF, mount: noMount, hasCommand: archTest })).toThrow(
      /without the F \(fix binary\) flag.*qemu-user-static/,
    );
  });

  test('no arch-test (mmdebstrap needs it for a foreign bootstrap): named with its package, before anything else', () => {
    const dir = fakeBinfmt('no-arch-test', { status: 'enabled\n', 'qemu-aarch64': REGISTERED });
    expect(() => checkBinfmt('arm64', { dir, mount: noMount, hasCommand: () => false })).toThrow(
      /needs arch-test, which mmdebstrap runs.*apt-get install arch-test \(or mkma build --install-deps\)/,
    );
  });

  test('an architecture mkma cannot emulate', () => {
    expect(() => checkBinfmt('s390x', { dir: TMP, mount: noMount, hasCommand: archTest })).toThrow(/cannot build for s390x/);
  });
});

describe('the bootstrap environment', () => {
  test('QEMU_CPU=cortex-a72 for a foreign arm64 tree (pointer authentication), nothing for the host', () => {
    if (hostArch() !== 'arm64') expect(foreignEnv('arm64')).toEqual({ QEMU_CPU: 'cortex-a72' });
    expect(foreignEnv(hostArch())).toEqual({});
    expect(FOREIGN_ARCHES.arm64.cpu).toBe('cortex-a72');
  });

  test('--install-deps for arm64 adds qemu-user-static, binfmt-support, arch-test, the cross compiler with its libc, and arm64 libzstd', () => {
    if (hostArch() !== 'arm64')
      expect(foreignHostPackages('arm64')).toEqual([
        'qemu-user-static',
        'binfmt-support',
        'arch-test',
        'gcc-aarch64-linux-gnu',
        'libc6-dev-arm64-cross',
        'libzstd-dev:arm64',
      ]);
    expect(foreignHostPackages(hostArch())).toEqual([]);
  });

  test('--install-deps adds to dpkg the architectures of pkg:arch names it does not know yet', () => {
    const pkgs = ['gcc-aarch64-linux-gnu', 'libzstd-dev:arm64', 'libzstd-dev:riscv64', 'grub-efi-arm64-bin:arm64', 'x:any'];
    expect(newForeignArches(pkgs, ['amd64'])).toEqual(['arm64', 'riscv64']);
    expect(newForeignArches(pkgs, ['amd64', 'arm64'])).toEqual(['riscv64']);
    expect(newForeignArches(['gcc'], ['amd64'])).toEqual([]);
  });

  test('test/host-packages.txt has what an arm64 build and its UEFI stick need on this host', () => {
    const list = fs.readFileSync(path.join(REPO, 'test/host-packages.txt'), 'utf8').split('\n');
    const stick = grubTools('arm64', INSTALL_TOOLS).map((t) => t.pkg);
    // (losetup's package "mount" is essential: on every system)
    for (const p of [...foreignHostPackages('arm64'), ...stick, MACHINES.arm64.uefi.pkg]) if (p !== 'mount') expect(list).toContain(p);
    expect(stick).toContain('grub-efi-arm64-bin:arm64');
    expect(stick).not.toContain('grub-pc-bin');
  });
});

describe('configuration', () => {
  const opts = { file: 'mkma.toml', env: {}, defaultHostname: 'h' };
  test('the kernel package follows the architecture unless chosen', () => {
    expect(resolveConfig('', opts).config.kernelPackage).toBe('linux-image-amd64');
    expect(resolveConfig('architecture = "arm64"\n', opts).config.kernelPackage).toBe('linux-image-arm64');
    const chosen = resolveConfig('architecture = "arm64"\nkernel_package = "linux-image-cloud-arm64"\n', opts);
    expect(chosen.config.kernelPackage).toBe('linux-image-cloud-arm64');
  });

  test('--arch beats the file, and is checked like it', () => {
    const r = resolveConfig('architecture = "amd64"\n', { ...opts, overrides: { architecture: 'arm64' } });
    expect(r.config.architecture).toBe('arm64');
    expect(r.config.kernelPackage).toBe('linux-image-arm64');
    expect(r.origins.architecture).toEqual({ from: 'command line' });
    expect(() => resolveConfig('', { ...opts, overrides: { architecture: 'arm 64' } })).toThrow(
      /architecture.*\(given on the command line\)/,
    );
  });
});

describe('mkma-unpack for arm64', () => {
  test('the toolchain: the host gcc natively, Debian cross gcc and multiarch libzstd-dev otherwise', () => {
    expect(unpackerToolchain('amd64', 'amd64')?.cc).toBe('gcc');
    expect(unpackerToolchain('arm64', 'amd64')).toEqual({
      cc: 'aarch64-linux-gnu-gcc',
      packages: ['gcc-aarch64-linux-gnu', 'libzstd-dev:arm64'],
      machine: 183,
    });
    expect(unpackerToolchain('s390x', 'amd64')).toBeNull();
  });

  test('without the cross compiler: no binary, and the reason names the cross packages, not gcc', () => {
    const saved = process.env.PATH;
    process.env.PATH = path.join(TMP, 'empty-path');
    try {
      const r = buildUnpacker({ cacheDir: path.join(TMP, 'cache-nocc'), arch: 'arm64', host: 'amd64' });
      expect(r.path).toBeNull();
      expect(r.reason).toMatch(/^aarch64-linux-gnu-gcc is not available/);
      expect(r.reason).toContain('apt-get install gcc-aarch64-linux-gnu libzstd-dev:arm64, after dpkg --add-architecture arm64');
      expect(r.reason).not.toMatch(/install gcc /);
    } finally {
      process.env.PATH = saved;
    }
  });

  // CI installs gcc-aarch64-linux-gnu, libzstd-dev:arm64 and qemu-user-static (.ci/run)
  test('cross-built: a static aarch64 executable that runs under qemu-user', () => {
    if (hostArch() === 'arm64') return; // native there: the unpacker tests cover it
    const r = buildUnpacker({ cacheDir: path.join(TMP, 'cache-arm64'), arch: 'arm64' });
    if (!r.path) throw new Error(`the arm64 mkma-unpack was not built: ${r.reason}`);
    expect(path.basename(r.path)).toMatch(/^mkma-unpack-arm64-[0-9a-f]{16}$/);
    const elf = readElfInfo(r.path)!;
    expect(elf).toMatchObject({ machine: 183, interp: null, class: 64 });
    const h = spawnSync(r.path, ['-h'], { encoding: 'utf8' });
    expect(h.stdout + h.stderr).toContain('usage: mkma-unpack');
    expect(buildUnpacker({ cacheDir: path.join(TMP, 'cache-arm64'), arch: 'arm64' })).toEqual({ path: r.path });
  });
});

describe('the init says what unpacks', () => {
  const modules = { storage: [], filesystems: {}, overlay: [] };
  const base = { modules, defaultRamSize: '50%', deviceTimeoutSec: 30, version: 't' };
  test('mkma-unpack, or busybox cpio with the reason', () => {
    expect(generateInit({ ...base, extractor: 'native' })).toContain("EXTRACTOR='mkma-unpack'");
    const fallback = generateInit({ ...base, extractor: 'busybox', fallbackReason: "aarch64-linux-gnu-gcc isn't\navailable" });
    expect(fallback).toContain(`EXTRACTOR='busybox cpio (mkma-unpack not built: aarch64-linux-gnu-gcc isn'\\''t available)'`);
    expect(fallback).toMatch(/phase unpack-base .*, with \$EXTRACTOR"/);
  });
});

describe('QEMU for arm64', () => {
  test('virt, max without pointer authentication under TCG, ttyAMA0, qemu-system-aarch64', () => {
    const m = machineFor('arm64');
    expect(m).toMatchObject({ qemuBinary: 'qemu-system-aarch64', machine: 'virt', console: 'ttyAMA0', tcgCpu: 'max,pauth=off' });
    expect(m.timeoutScale).toBeGreaterThan(MACHINES.amd64.timeoutScale);
    const args = qemuArgs({
      kernel: '/k',
      initrd: '/i',
      disks: [{ path: '/d.img' }],
      append: 'mkma_test',
      memoryMiB: 2048,
      cpus: 2,
      accel: 'tcg',
      interactive: false,
      machine: m.machine,
      cpu: m.tcgCpu,
      console: m.console,
    });
    const at = (o: string) => args[args.indexOf(o) + 1];
    expect(at('-machine')).toBe('virt');
    expect(at('-cpu')).toBe('max,pauth=off');
    expect(at('-accel')).toBe('tcg,thread=multi');
    expect(at('-append')).toBe('mkma_test console=ttyAMA0');
    expect(at('-drive')).toBe('file=/d.img,format=raw,if=virtio');
    expect(kernelCommandLine('a')).toBe('a console=ttyS0');
  });

  test('the smoke boot needs qemu-system-aarch64 (qemu-system-arm), not the x86 emulator', () => {
    const tools = smokeTools(MACHINES.arm64);
    expect(tools[0]).toMatchObject({ command: 'qemu-system-aarch64', pkg: 'qemu-system-arm' });
    expect(tools.some((t) => t.command === 'qemu-system-x86_64')).toBe(false);
  });

  test('an architecture mkma does not boot', () => {
    expect(() => machineFor('riscv64')).toThrow(/boots amd64 and arm64 images, not riscv64/);
  });
});

describe('mkma qemu --disk: the architecture of an installed disk', () => {
  /** A GPT disk file with an ESP (FAT made by mtools at the partition's offset) holding /EFI/BOOT/NAMES. */
  function disk(name: string, loaders: string[]): string {
    const file = path.join(TMP, name);
    const run = (cmd: string, args: string[]) => {
      const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
      if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
    };
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 72 << 20);
    run('sgdisk', ['-n', '1:2048:+68M', '-t', '1:EF00', file]);
    const esp = `${file}@@${2048 * 512}`;
    run('mformat', ['-i', esp, '-F', '-T', String((68 << 20) / 512), '::']);
    run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT']);
    const loader = path.join(TMP, 'loader');
    fs.writeFileSync(loader, 'MZ');
    for (const l of loaders) run('mcopy', ['-i', esp, loader, `::/EFI/BOOT/${l}`]);
    return file;
  }

  test('BOOTAA64.EFI in the ESP: arm64; BOOTX64.EFI: amd64; neither, both, or no disk: amd64', () => {
    expect(diskArch(disk('arm64.img', ['BOOTAA64.EFI']))).toBe('arm64');
    expect(diskArch(disk('amd64.img', ['BOOTX64.EFI']))).toBe('amd64');
    expect(diskArch(disk('both.img', ['BOOTX64.EFI', 'BOOTAA64.EFI']))).toBe('amd64');
    expect(diskArch(disk('none.img', []))).toBe('amd64');
    expect(diskArch(path.join(TMP, 'missing.img'))).toBe('amd64');
  }, 60_000);
});
