// `mkma build`: checks the command line, the configuration and the presets, then runs the
// builder (builder/build.ts) and prints what it made and how to boot it.
import { EXIT } from '../lib/errors.js';
import { createReporter, formatBytes } from '../lib/progress.js';
import { ZSTD_LEVEL } from '../lib/contract.js';
import { parse, printHelp, renderHelp, requireRoot, type CommandSpec } from './args.js';

export const SPEC = {
  name: 'build',
  synopsis: '[HOSTNAME] [options]',
  root: true,
  description: `Bootstraps a Debian root filesystem with mmdebstrap, configures it, and writes into OUT:
  base.cpio.zst        the root filesystem (cpio newc + zstd; manifest with xattrs)
  initramfs.cpio.zst   busybox, zstd, modules and mkma's init
  vmlinuz              the image's kernel
  mkma.json            versions, sizes, sha256 of each output, configuration hash
then prints the kernel command line and GRUB / systemd-boot entries.

HOSTNAME defaults to this machine's hostname (or \`hostname\` in the config file).
The configuration is --config FILE, else ./mkma.toml, else /etc/mkma/mkma.toml, else the
defaults; the build says which it used (mkma config shows every value and where it came from).`,
  positionals: { max: 1 },
  options: [
    {
      long: 'out',
      short: 'o',
      value: 'DIR',
      complete: 'dir',
      help: 'output directory (default ./mkma-out; the bootstrapped tree is kept in DIR/chroot)',
    },
    {
      long: 'config',
      short: 'c',
      value: 'FILE',
      complete: 'file',
      help: 'configuration file (TOML, see mkma.example.toml; default: discovered, above)',
    },
    {
      long: 'preset',
      short: 'p',
      value: 'PATH',
      multiple: true,
      complete: 'file',
      help: `apply a preset (TOML) after configuring; a directory means every *.toml
in it, in order of file name; repeat for more, applied in argument order.
Unchanged presets come from the cache in DIR/.cache (see "Presets" in README)`,
    },
    {
      long: 'arch',
      value: 'ARCH',
      complete: ['amd64', 'arm64'],
      help: `Debian architecture of the image (beats \`architecture\` in the config): amd64, or arm64
bootstrapped through qemu-user (packages qemu-user-static binfmt-support)`,
    },
    { long: 'rebuild', help: 'bootstrap again even if the configuration is unchanged (clears the cache)' },
    {
      long: 'no-snapshots',
      help: `keep no copies of the tree between presets in DIR/.cache (where the filesystem has no
reflinks, ext4, each is a full copy of the tree); a changed preset then bootstraps again`,
    },
    { long: 'host-kernel', help: "use this machine's /boot/vmlinuz-$(uname -r) and its modules" },
    { long: 'install-deps', help: 'apt-get install missing host tools first' },
    { long: 'json', help: 'print the result as JSON on stdout (implies --quiet)' },
  ],
  sections: [
    [
      'Environment',
      `  MKMA_COMPRESSION_LEVEL=N   zstd level ${ZSTD_LEVEL.min}..${ZSTD_LEVEL.max} (default ${ZSTD_LEVEL.default}; recorded in the image for mkma persist)
  MKMA_QEMU_TEST=1           after building, smoke-boot the image in QEMU; fail if it does not boot
  MKMA_QEMU_ACCEL=kvm|tcg    accelerator for that boot (default: kvm if /dev/kvm works)`,
    ],
  ],
  exitStatus: `0 built, 1 failed, 2 bad arguments or configuration, 3 not root or missing tools,
4 the QEMU boot test failed.`,
  examples: [
    'sudo mkma build myhost --config mkma.toml --out /srv/mkma',
    `sudo MKMA_SSH_USER=me MKMA_SSH_KEY="$(cat ~/.ssh/id_ed25519.pub)" \\
    mkma build --preset presets/console --preset presets/ssh-server`,
  ],
} as const satisfies CommandSpec;

export const HELP = renderHelp(SPEC);

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(SPEC, argv);
  if (values.help) return printHelp(HELP);
  const { BUILD_TOOLS, FAST_BOOT_PACKAGES, QEMU_TOOLS, installTools, requireTools } = await import('../lib/hosttools.js');
  const qemuTest = process.env.MKMA_QEMU_TEST === '1';
  const tools = qemuTest ? [...BUILD_TOOLS, ...QEMU_TOOLS] : BUILD_TOOLS;
  requireRoot('mkma build');
  // the configuration and every preset are checked (keys, folders, hooks, environment
  // variables) before anything runs; every problem of all of them is reported at once
  const { buildInputsFromArgs } = await import('./build-inputs.js');
  const { config, found, presets } = buildInputsFromArgs(values, positionals[0]);
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  reporter.info(`configuration: ${found.file ?? 'none'} (${found.how})`);
  if (values['install-deps']) {
    // another architecture: qemu-user and the cross compiler (libzstd-dev:ARCH needs dpkg --add-architecture: not done for the user)
    const { foreignHostPackages } = await import('../builder/foreign.js');
    installTools(tools, (s) => reporter.info(s), [...FAST_BOOT_PACKAGES, ...foreignHostPackages(config.architecture)]);
  }
  requireTools(tools);
  const { build } = await import('../builder/build.js');
  const out = values.out ?? 'mkma-out';
  const interactive = !values.json && !!process.stdin.isTTY && !!process.stdout.isTTY;
  const result = await build({
    config,
    out,
    rebuild: !!values.rebuild,
    snapshots: !values['no-snapshots'],
    hostKernel: !!values['host-kernel'],
    reporter,
    presets,
    interactive,
  });
  let boot: unknown = null;
  if (qemuTest) {
    const { smokeBoot, describeSmoke } = await import('../qemu/smoke.js');
    const { log: _log, ...r } = await smokeBoot({ out, reporter, env: process.env });
    boot = r;
    if (!values.json) process.stderr.write(describeSmoke({ ...r, log: '' }) + '\n');
    if (!r.ok) {
      if (values.json) process.stdout.write(JSON.stringify({ ...result, boot }, null, 2) + '\n');
      process.stderr.write(`mkma: the image did not boot: ${r.reason}\n  console log: ${r.logPath}\n`);
      return EXIT.bootFailed;
    }
  }
  if (values.json) {
    process.stdout.write(JSON.stringify({ ...result, config: found, boot }, null, 2) + '\n');
    return EXIT.ok;
  }
  const o = result.outputs;
  const lines = [
    '',
    `mkma: built ${result.hostname} (kernel ${result.kernelVersion}, bootstrap ${result.bootstrap})`,
    `  kernel     ${o.kernel.path}  (${formatBytes(o.kernel.bytes)})`,
    `  initramfs  ${o.initramfs.path}  (${formatBytes(o.initramfs.bytes)})`,
    `  base       ${o.base.path}  (${formatBytes(o.base.bytes)}, ${formatBytes(o.base.unpackedBytes)} in RAM, ${o.base.entries} entries)`,
    ...(presets.length
      ? [
          '',
          'Stages:',
          ...result.stages.map((s) => `  ${s.stage}: ${s.status}`),
          `  (${result.cache.snapshots} snapshot(s), ${formatBytes(result.cache.bytes)}, in ${out}/.cache for rebuilds)`,
        ]
      : []),
    '',
    'Kernel command line:',
    `  ${result.cmdline}`,
  ];
  if (result.storage) {
    lines.push(`  (the images are on ${result.storage.source}, ${result.storage.fstype}, mounted at ${result.storage.mountpoint})`);
    if (!result.storage.stable) {
      lines.push(`  WARNING: no UUID of ${result.storage.source} could be read: a /dev name may change; find it with blkid and use UUID=…`);
    }
    lines.push('', 'GRUB (e.g. /etc/grub.d/40_custom, then update-grub):', result.grub!, '', 'systemd-boot:', result.systemdBoot!);
  } else {
    lines.push('  (the output directory is not on a block device: copy the images to the boot disk and use its UUID)');
  }
  if (!qemuTest) lines.push('', 'Try it in a VM: mkma qemu --out ' + out);
  process.stdout.write(lines.join('\n') + '\n');
  return EXIT.ok;
}
