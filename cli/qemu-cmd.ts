// `mkma qemu`: boot the built image and report (qemu/smoke.ts).
import { parse, printHelp } from './args.js';
import { EXIT, UsageError } from '../lib/errors.js';
import { createReporter } from '../lib/progress.js';

export const HELP = `Usage: mkma qemu [--out DIR] [--timeout S] [--memory M] [--cpus N] [--fresh] [--interactive]

Boots OUT/vmlinuz + OUT/initramfs.cpio.zst in QEMU with the images on a virtual disk
(OUT/qemu/disk.img, made with mke2fs -d: nothing is mounted), reads the serial console and
reports pass/fail with the boot phase timings. The disk keeps persistence layers written in
the guest between runs unless --fresh.

Options:
  -o, --out DIR        build output directory (default ./mkma-out)
      --timeout S      give up after S seconds (default 600)
      --memory M       guest memory in MiB (default 2048)
      --cpus N         guest CPUs (default 2)
      --fresh          recreate the disk without the layers saved in earlier runs
  -i, --interactive    give the console to the user instead of testing
      --json           print the result (pass/fail, accelerator, phase timings) as JSON on stdout
Environment: MKMA_QEMU_ACCEL=kvm|tcg (default kvm where /dev/kvm works, else tcg)
Exit status: 0 booted to multi-user, 4 did not, 2 bad arguments, 3 missing tools.
`;

function positiveInt(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`qemu: --${name} must be a positive whole number, got "${v}"`);
  return n;
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parse('qemu', argv, {
    out: { type: 'string', short: 'o' },
    timeout: { type: 'string' },
    memory: { type: 'string' },
    cpus: { type: 'string' },
    fresh: { type: 'boolean' },
    interactive: { type: 'boolean', short: 'i' },
    json: { type: 'boolean' },
  });
  if (values.help) return printHelp(HELP);
  const reporter = createReporter({ quiet: !!values.json });
  const { smokeBoot, describeSmoke } = await import('../qemu/smoke.js');
  const r = await smokeBoot({
    out: values.out ?? 'mkma-out',
    reporter,
    env: process.env,
    timeoutSec: positiveInt('timeout', values.timeout, values.interactive ? 0 : 600) || undefined,
    memoryMiB: positiveInt('memory', values.memory, 2048),
    cpus: positiveInt('cpus', values.cpus, 2),
    fresh: !!values.fresh,
    interactive: !!values.interactive,
  });
  if (values.interactive) return EXIT.ok;
  if (values.json) {
    const { log: _log, ...rest } = r;
    process.stdout.write(JSON.stringify(rest, null, 2) + '\n');
  } else {
    process.stdout.write(describeSmoke(r) + '\n');
  }
  return r.ok ? EXIT.ok : EXIT.bootFailed;
}
