// `mkma qemu`: boot the built image and report (qemu/smoke.ts), or an installed disk through
// its firmware and GRUB (qemu/installed.ts).
import { parse, printHelp, renderHelp, type CommandSpec } from './args.js';
import { EXIT, UsageError } from '../lib/errors.js';
import { createReporter } from '../lib/progress.js';

export const SPEC = {
  name: 'qemu',
  synopsis: '[--out DIR [--fresh] | --disk IMG [--uefi]] [--timeout S] [--memory M] [--cpus N] [--interactive]',
  description: `Boots OUT/vmlinuz + OUT/initramfs.cpio.zst in QEMU with the images on a virtual disk
(OUT/qemu/disk.img, made with mke2fs -d: nothing is mounted), reads the serial console and
reports pass/fail with the boot phase timings. The disk keeps persistence layers written in
the guest between runs unless --fresh.

With --disk, boots a disk image made by mkma install through its firmware and GRUB: SeaBIOS,
or with --uefi OVMF (package ovmf; its variables are kept in IMG.efivars.fd). The console log
is IMG.console.log.

An arm64 image (mkma build --arch arm64) boots in qemu-system-aarch64 -M virt -cpu max,pauth=off
(package qemu-system-arm), always under TCG on another host, console ttyAMA0, with three times
the time limit. Its installed disk (GRUB at /EFI/BOOT/BOOTAA64.EFI) boots with --uefi only,
with AAVMF (package qemu-efi-aarch64); the disk's architecture is read from its ESP.`,
  options: [
    { long: 'out', short: 'o', value: 'DIR', complete: 'dir', help: 'build output directory (default ./mkma-out)' },
    { long: 'disk', value: 'IMG', complete: 'file', help: 'boot this installed disk image (mkma install) instead' },
    { long: 'uefi', help: 'with --disk: UEFI firmware (OVMF) instead of BIOS (SeaBIOS)' },
    { long: 'timeout', value: 'S', help: 'give up after S seconds (default 600, arm64 1800)' },
    { long: 'memory', value: 'M', help: 'guest memory in MiB (default 2048)' },
    { long: 'cpus', value: 'N', help: 'guest CPUs (default 2)' },
    { long: 'fresh', help: 'recreate the disk without the layers saved in earlier runs' },
    { long: 'interactive', short: 'i', help: 'give the console to the user instead of testing (log in, try mkma persist)' },
    { long: 'json', help: 'print the result (pass/fail, accelerator, phase timings) as JSON on stdout' },
  ],
  sections: [['Environment', '  MKMA_QEMU_ACCEL=kvm|tcg   accelerator (default kvm where /dev/kvm works, else tcg)']],
  exitStatus: '0 booted to multi-user, 4 did not, 2 bad arguments, 3 missing tools.',
  examples: ['mkma qemu --out mkma-out', 'mkma qemu --interactive --fresh', 'mkma qemu --disk stick.img --uefi'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

function positiveInt(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`qemu: --${name} must be a positive whole number, got "${v}"`);
  return n;
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  if (values.disk !== undefined && (values.out !== undefined || values.fresh))
    throw new UsageError('qemu: --disk boots an installed disk: --out and --fresh do not apply');
  if (values.uefi && values.disk === undefined) throw new UsageError('qemu: --uefi needs --disk IMG (a disk made by mkma install)');
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  const { smokeBoot, describeSmoke } = await import('../qemu/smoke.js');
  const common = {
    reporter,
    env: process.env,
    // unset: the architecture's limit (600 s for amd64, scaled for an emulated one)
    timeoutSec: values.timeout === undefined ? undefined : positiveInt('timeout', values.timeout, 0),
    memoryMiB: positiveInt('memory', values.memory, 2048),
    cpus: positiveInt('cpus', values.cpus, 2),
    interactive: !!values.interactive,
  };
  const r =
    values.disk !== undefined
      ? await (await import('../qemu/installed.js')).bootInstalledDisk({ ...common, disk: values.disk, uefi: !!values.uefi })
      : await smokeBoot({ ...common, out: values.out ?? 'mkma-out', fresh: !!values.fresh });
  if (values.interactive) return EXIT.ok;
  if (values.json) {
    const { log: _log, ...rest } = r;
    process.stdout.write(JSON.stringify(rest, null, 2) + '\n');
  } else {
    process.stdout.write(describeSmoke(r) + '\n');
  }
  return r.ok ? EXIT.ok : EXIT.bootFailed;
}
