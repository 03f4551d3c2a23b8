// `mkma update TARGET [HOSTNAME]`: a new build of a hostname onto its stick (install/update.ts).
import { EXIT, UsageError } from '../lib/errors.js';
import { createReporter } from '../lib/progress.js';
import { parse, printHelp, renderHelp, requireRoot, type CommandSpec } from './args.js';

export const SPEC = {
  name: 'update',
  synopsis: 'TARGET [HOSTNAME] [--out DIR] [--append WORDS]',
  root: true,
  description: `Writes the image built in OUT onto the mkma stick TARGET (a disk or a disk image file made by
mkma install) as the new generation of its hostname, and keeps that hostname's layers. The
generation it replaces stays as "previous", with its own menu entry; the one before that is
removed. The menu is the switch: a power cut at any moment leaves a menu whose entries all
boot. Other hostnames on the stick are not touched. An unchanged build writes nothing.
Layers written on another base than the new one (their manifests record it) are named in a
warning and kept.

HOSTNAME, when given, must be the build's (a check that the right image goes to the right place).`,
  positionals: { max: 2, complete: 'file' },
  options: [
    { long: 'out', short: 'o', value: 'DIR', complete: 'dir', help: 'where mkma build wrote the images (default ./mkma-out)' },
    {
      long: 'append',
      value: 'WORDS',
      multiple: true,
      help: 'the kernel command line words to add (default: those of the current generation)',
    },
    { long: 'install-deps', help: 'apt-get install missing host tools first' },
  ],
  exitStatus: `0 updated (or already current), 1 failed, 2 refused or bad arguments (nothing
written), 3 not root or missing tools.`,
  examples: ['sudo mkma build myhost && sudo mkma update /dev/sdb myhost'],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const [target, hostname] = positionals;
  if (!target) throw new UsageError('update: which stick? mkma update /dev/sdX [HOSTNAME]');
  requireRoot('mkma update', 'it attaches loop devices and mounts the stick');
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  const { INSTALL_TOOLS, installTools } = await import('../lib/hosttools.js');
  const { readBuiltImages } = await import('../install/images.js');
  const images = readBuiltImages(values.out ?? 'mkma-out');
  // the image's architecture picks GRUB's platforms (install/grub.ts)
  const { grubTools } = await import('../install/grub.js');
  if (values['install-deps']) installTools(grubTools(images.architecture, INSTALL_TOOLS), (s) => reporter.info(s));
  const { update } = await import('../install/update.js');
  const append = values.append?.flatMap((a) => a.split(/\s+/).filter(Boolean));
  const r = await update({ target, images, hostname, append, reporter });
  if (values.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  else if (r.updated) {
    process.stdout.write(
      `mkma: ${r.hostname} on ${r.target} is now generation ${r.generation} (previous: ${r.previous}), ` +
        `${r.layers.length} layer(s) kept${r.layersOnOtherBase.length ? ` (${r.layersOnOtherBase.length} written on another base)` : ''}, ` +
        `in ${r.durationSec.toFixed(1)} s\n`,
    );
  }
  return EXIT.ok;
}
