// The table of mkma's commands and the text of `mkma --help`. Each command lives in its own
// cli/*-cmd.ts (its SPEC, its --help text, its run()) and is loaded only when it runs or when
// its description is needed (`mkma completion`, the man page): `mkma persist` and `mkma --help`
// do not pay for the configuration parser, the builder or the TUI.
import { CMDLINE } from '../lib/contract.js';
import type { CommandContext, CommandSpec, DescribedCommand } from './args.js';

/** What every cli/*-cmd.ts exports. */
export interface CommandModule {
  /** the text of `mkma <command> --help` (rendered from SPEC) */
  HELP: string;
  /** the command's options as data: --help, completion and the man page are made from it */
  SPEC?: CommandSpec;
  /** `mkma NAME ARGS…`; `context` is for the commands that describe mkma itself (completion) */
  run(argv: string[], context: CommandContext): Promise<number>;
}

export interface Command {
  /** one line for `mkma --help` */
  summary: string;
  load(): Promise<CommandModule>;
}

/** Every command, in the order `mkma --help` lists them. */
export const COMMANDS: Record<string, Command> = {
  build: { summary: 'bootstrap, configure and pack an image (base, initramfs, kernel)', load: () => import('./build-cmd.js') },
  qemu: {
    summary: 'boot the built image (or an installed disk) in QEMU and report pass/fail with boot timings',
    load: () => import('./qemu-cmd.js'),
  },
  install: {
    summary: 'write the image onto a USB stick or disk image that boots with BIOS and UEFI',
    load: () => import('./install-cmd.js'),
  },
  update: {
    summary: 'put a new build on an installed stick, keeping its layers and the previous generation',
    load: () => import('./update-cmd.js'),
  },
  unpack: { summary: 'apply base + layers into a directory, as the boot does (inspection, tests)', load: () => import('./unpack-cmd.js') },
  persist: { summary: 'on the running RAM system: choose changes and save them as a layer', load: () => import('./persist-cmd.js') },
  layers: { summary: 'list the layers in boot order: created, message, entries, sizes, state', load: () => import('./layers-cmd.js') },
  chroot: {
    summary: 'change the images offline: a shell or command in base + layers, saved as a new layer',
    load: () => import('./chroot-cmd.js'),
  },
  verify: { summary: 'check the base and every layer: manifest, shard table, data hash', load: () => import('./verify-cmd.js') },
  lint: { summary: 'check presets (keys, folders, hooks, environment, shellcheck) without building', load: () => import('./lint-cmd.js') },
  config: { summary: 'show the effective configuration and where each value came from', load: () => import('./config-cmd.js') },
  completion: { summary: 'print a bash or zsh completion script', load: () => import('./completion-cmd.js') },
};

export const KERNEL_PARAMETERS: Array<[string, string]> = [
  [`${CMDLINE.storageDevice}=DEV`, '/dev/…, UUID=…, LABEL=… or PARTUUID=… holding the images'],
  [`${CMDLINE.imagesPath}=DIR`, 'directory of the images on that device'],
  [`${CMDLINE.ramSize}=SIZE`, 'size of the RAM filesystem (default 50%)'],
  [`${CMDLINE.onError}=shell|reboot|halt`, 'what to do when boot cannot continue (default shell)'],
  [`${CMDLINE.deviceTimeout}=SECONDS`, 'how long to wait for the storage device (default 30)'],
  [`${CMDLINE.layers}=all|none|N|until=ID`, 'none: the base alone (recovery); N: the first N layers; until=ID: up to that layer'],
  [`${CMDLINE.verify}=0|1`, "check each layer's data hash before applying it; a damaged one is skipped (default 0)"],
  [`${CMDLINE.base}=FILE`, 'the base image file in the images directory (default base.cpio.zst)'],
  [CMDLINE.debug, 'verbose boot log'],
  [CMDLINE.break, 'a shell just before switch_root'],
];

/** Two columns, the first padded to its longest entry. */
function table(rows: Array<[string, string]>): string {
  const width = Math.max(...rows.map(([a]) => a.length));
  return rows.map(([a, b]) => `  ${a.padEnd(width)}  ${b}`).join('\n');
}

export function mainHelp(): string {
  return `mkma — a Debian machine that boots entirely into RAM and keeps only what you choose to keep.

Usage: mkma <command> [options]      (mkma <command> --help for details)

Commands:
${table(Object.entries(COMMANDS).map(([name, c]) => [name, c.summary]))}

Options for every command:
  -q, --quiet   no progress output       --json        results and errors as JSON
  --debug       log every program run    -h, --help    the command's help

Configuration: --config FILE, else ./mkma.toml, else /etc/mkma/mkma.toml (mkma config shows it)

Kernel command line (printed by mkma build):
${table(KERNEL_PARAMETERS)}

Quick start: sudo mkma build myhost && mkma qemu
`;
}

/** Every command with its spec (one not yet described by a spec has the common options only). */
export async function describedCommands(): Promise<DescribedCommand[]> {
  // one at a time: jest's ESM loader (--experimental-vm-modules) fails concurrent dynamic imports
  // that share a module ("request for 'node:child_process' is not in cache")
  const described: DescribedCommand[] = [];
  for (const [name, c] of Object.entries(COMMANDS)) {
    const m = await c.load();
    const spec: CommandSpec = m.SPEC ?? { name, synopsis: '', description: '', options: [], exitStatus: '', examples: [] };
    described.push({ name, summary: c.summary, spec });
  }
  return described;
}
