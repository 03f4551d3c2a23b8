// `mkma install TARGET`: checks the command line and the target, asks the user to confirm by
// typing the device's name, and runs install/install.ts.
import * as readline from 'node:readline/promises';
import * as path from 'node:path';
import { EXIT, UsageError } from '../lib/errors.js';
import { createReporter, formatBytes } from '../lib/progress.js';
import { parse, printHelp, renderHelp, requireRoot, type CommandSpec } from './args.js';

export const SPEC = {
  name: 'install',
  synopsis: 'TARGET [--out DIR] [--size SIZE] [--esp-size SIZE] [--label LABEL] [--append WORDS] [--wipe] [--yes]',
  root: true,
  description: `Writes the image built in OUT onto TARGET so that it boots with BIOS and with UEFI:
a GPT with a BIOS boot partition (GRUB i386-pc), an EFI system partition (FAT32: GRUB
x86_64-efi at /EFI/BOOT/BOOTX64.EFI, the menu, each hostname's kernel and initramfs) and a
data partition (ext4, label MKMA) with images/<hostname>/base.cpio.zst and its layers.
The kernel command line finds the data partition by its UUID, never by a /dev name.

TARGET is a whole disk (/dev/sdX) or a disk image file (--size creates one). A TARGET that
already is an mkma stick gets this hostname added: the other hostnames, their layers and menu
entries stay as they are. Anything else is erased and partitioned anew.

Refused, with nothing written (exit 2): a partition instead of a disk, the disk holding / or the
running mkma system's images, a disk with something mounted, in swap or held by device-mapper,
a read-only device, a file attached to a loop device, anything that is neither a block device
nor a regular file, and a target too small (the message says how much is needed).`,
  positionals: { max: 1, complete: 'file' },
  options: [
    { long: 'out', short: 'o', value: 'DIR', complete: 'dir', help: 'where mkma build wrote the images (default ./mkma-out)' },
    { long: 'size', value: 'SIZE', help: 'create TARGET as a disk image file of SIZE (e.g. 4G); it must not exist' },
    { long: 'esp-size', value: 'SIZE', help: 'size of the EFI system partition (default 512M: a dozen hostnames)' },
    { long: 'label', value: 'LABEL', help: 'ext4 label of the data partition (default MKMA)' },
    { long: 'append', value: 'WORDS', multiple: true, help: 'add WORDS to this hostname\'s kernel command line (e.g. "console=ttyS0")' },
    { long: 'wipe', help: 'partition anew even if TARGET already is an mkma stick' },
    { long: 'yes', short: 'y', help: 'do not ask for confirmation (scripts, tests)' },
    { long: 'install-deps', help: 'apt-get install missing host tools first' },
  ],
  exitStatus: `0 installed, 1 failed, 2 refused or bad arguments (nothing written), 3 not root or
missing tools.`,
  examples: [
    'sudo mkma install /dev/sdb --out /srv/mkma',
    'sudo mkma install stick.img --size 4G --yes && mkma qemu --disk stick.img --uefi',
  ],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

/** Reads the device name from the terminal; anything else stops (exit 2, nothing written). */
async function confirmOnTerminal(description: string, erases: boolean, target: string): Promise<void> {
  if (!process.stdin.isTTY || !process.stderr.isTTY) {
    throw new UsageError(`install: stdin is not a terminal, so nothing can be confirmed: check the target and run again with --yes`);
  }
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    process.stderr.write(
      erases
        ? `\n  ${description}\n  EVERYTHING on it will be erased.\n`
        : `\n  ${description}\n  is an mkma stick: this hostname will be added, the rest stays as it is.\n`,
    );
    const answer = (await rl.question(`  Type the device name (${target}) to continue: `)).trim();
    if (answer !== target && answer !== path.basename(target)) throw new UsageError('install: not confirmed; nothing was written');
  } finally {
    rl.close();
  }
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const target = positionals[0];
  if (!target) throw new UsageError('install: which disk? mkma install /dev/sdX (or a disk image file with --size)');
  const { parseSize, DEFAULT_DATA_LABEL, DEFAULT_ESP_BYTES } = await import('../install/layout.js');
  const label = values.label ?? DEFAULT_DATA_LABEL;
  if (!/^[A-Za-z0-9_.-]{1,16}$/.test(label)) throw new UsageError(`install: --label "${label}": 1 to 16 letters, digits, _ . -`);
  const createBytes = values.size !== undefined ? parseSize(values.size, '--size') : undefined;
  const espBytes = values['esp-size'] !== undefined ? parseSize(values['esp-size'], '--esp-size') : DEFAULT_ESP_BYTES;
  const append = (values.append ?? []).flatMap((a) => a.split(/\s+/).filter(Boolean));
  requireRoot('mkma install', 'it partitions disks and attaches loop devices');
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  const { INSTALL_TOOLS, installTools } = await import('../lib/hosttools.js');
  const { readBuiltImages } = await import('../install/images.js');
  const images = readBuiltImages(values.out ?? 'mkma-out');
  // the image's architecture picks GRUB's platforms (install/grub.ts)
  const { grubTools } = await import('../install/grub.js');
  if (values['install-deps']) installTools(grubTools(images.architecture, INSTALL_TOOLS), (s) => reporter.info(s));
  const { install } = await import('../install/install.js');
  const r = await install({
    target,
    images,
    createBytes,
    espBytes,
    label,
    append,
    wipe: !!values.wipe,
    reporter,
    confirm: async (c) => {
      if (values.yes) return;
      await confirmOnTerminal(c.description, c.erases, target);
    },
  });
  if (values.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return EXIT.ok;
  }
  process.stdout.write(
    [
      '',
      `mkma: ${r.hostname} installed on ${r.target} in ${r.durationSec.toFixed(1)} s (${r.partitioned ? 'new layout' : 'added to the stick'}; ` +
        `on it now: ${r.hosts.join(', ')})`,
      `  kernel command line: ${r.cmdline}`,
      `  data partition: ext4 UUID ${r.dataUuid}; ESP volume ${r.espVolumeId}; images ${formatBytes(images.sizes.base)}`,
      '',
      r.layout.trimEnd(),
      '',
      `Boot it in a VM: mkma qemu --disk ${r.target} ${images.architecture === 'amd64' ? '[--uefi]' : '--uefi'}`,
      '',
    ].join('\n'),
  );
  return EXIT.ok;
}
