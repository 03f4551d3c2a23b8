// --help texts: each answers what the command does, its options, and an example.
export const COMMANDS: Record<string, string> = {
  build: `Usage: sudo mkma build [HOSTNAME] [options]

Bootstraps a Debian root filesystem with mmdebstrap, configures it, and writes into OUT:
  base.cpio.zst        the root filesystem (cpio newc + zstd; manifest with xattrs)
  initramfs.cpio.zst   busybox, zstd, modules and mkma's init
  vmlinuz              the image's kernel
  mkma.json            versions, sizes, sha256 of each output, configuration hash
then prints the kernel command line and GRUB / systemd-boot entries.

HOSTNAME defaults to this machine's hostname (or \`hostname\` in the config file).

Options:
  -o, --out DIR        output directory (default ./mkma-out; the bootstrapped tree is kept in DIR/chroot)
  -c, --config FILE    configuration file (TOML, see mkma.example.toml)
  -p, --preset PATH    apply a preset (TOML) after configuring; a directory means every *.toml
                       in it, in order of file name; repeat for more, applied in argument order.
                       Unchanged presets come from the cache in DIR/.cache (see "Presets" in README)
      --rebuild        bootstrap again even if the configuration is unchanged (clears the cache)
      --host-kernel    use this machine's /boot/vmlinuz-$(uname -r) and its modules
      --install-deps   apt-get install missing host tools first
  -q, --quiet          no progress output
      --json           print the result as JSON on stdout (implies --quiet)

Environment:
  MKMA_COMPRESSION_LEVEL=N   zstd level 1..22 (default 3)
  MKMA_QEMU_TEST=1           after building, smoke-boot the image in QEMU; fail if it does not boot
  MKMA_QEMU_ACCEL=kvm|tcg    accelerator for that boot (default: kvm if /dev/kvm works)

Exit status: 0 built, 1 failed, 2 bad arguments or configuration, 3 not root or missing tools,
4 the QEMU boot test failed.

Example: sudo mkma build myhost --config mkma.toml --out /srv/mkma
         sudo MKMA_SSH_USER=me MKMA_SSH_KEY="$(cat ~/.ssh/id_ed25519.pub)" \
           mkma build --preset presets/console --preset presets/ssh-server
`,
  lint: `Usage: mkma lint [--preset PATH …] [--config FILE]

Checks presets without building: unknown keys, wrong types, missing shared directories and
files folders, hooks that are not executable, environment variables that are not set, and
runs shellcheck (shellcheck -s bash -f gcc -) on each script. Every finding is printed as
FILE:LINE: message, with script findings mapped to their line in the TOML file.
--config FILE checks an mkma.toml as well.

Options:
  -p, --preset PATH    a preset file, or a directory of *.toml presets (repeatable)
  -c, --config FILE    a configuration file to check too

Exit status: 0 and "ok" when nothing is wrong, 1 when something is, 2 bad arguments,
3 shellcheck is not installed.

Example: mkma lint --preset presets/console --preset presets/ssh-server
`,
  unpack: `Usage: sudo mkma unpack --images DIR --into DIR [--json] [--extractor auto|native|ts]

Does on this machine exactly what the initramfs does at boot: unpacks DIR/base.cpio.zst into
an empty directory and applies every persistence.*.cpio.zst in order (deletions, replaced
directories, xattrs). A damaged layer is skipped whole and reported (exit status 1).

--extractor: native is mkma-unpack, the initramfs' extractor, compiled here once and cached
in \$MKMA_CACHE_DIR or /var/cache/mkma/unpacker (needs gcc libc6-dev libzstd-dev); ts is
mkma's TypeScript reader (same rules, slower); auto (default) is native when it can be built.
`,
  qemu: `Usage: mkma qemu [--out DIR] [--timeout S] [--memory M] [--cpus N] [--fresh] [--interactive]

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
      --interactive    give the console to the user instead of testing
Environment: MKMA_QEMU_ACCEL=kvm|tcg (default kvm where /dev/kvm works, else tcg)
Exit status: 0 booted to multi-user, 4 did not, 2 bad arguments, 3 missing tools.
`,
};

// persist's text lives with its command (cli/persist-cmd.ts); listed here for `mkma help`.
COMMANDS.persist = '';

export async function commandHelp(cmd: string): Promise<string> {
  if (cmd === 'persist') return (await import('./persist-cmd.js')).PERSIST_HELP;
  return COMMANDS[cmd];
}

export function mainHelp(): string {
  return `mkma — a Debian machine that boots entirely into RAM and keeps only what you choose to keep.

Usage: mkma <command> [options]      (mkma <command> --help for details)

Commands:
  build    bootstrap, configure and pack an image (base, initramfs, kernel)
  qemu     boot the built image in QEMU and report pass/fail with boot timings
  unpack   apply base + layers into a directory, as the boot does (inspection, tests)
  persist  on the running RAM system: choose changes and save them as a layer
  lint     check presets (keys, folders, hooks, environment, shellcheck) without building

Kernel command line (printed by mkma build):
  mkma_storage_device=DEV   /dev/…, UUID=…, LABEL=… or PARTUUID=… holding the images
  mkma_images_path=DIR      directory of the images on that device
  mkma_ram_size=SIZE        size of the RAM filesystem (default 50%)
  mkma_on_error=shell|reboot|halt   what to do when boot cannot continue (default shell)
  mkma_debug                verbose boot log;  mkma_break: shell before switch_root

Quick start: sudo mkma build myhost && mkma qemu
`;
}
