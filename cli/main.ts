// The `mkma` command: finds the command in COMMANDS, runs it, and turns what it throws into a
// message and an exit status (0 ok, 1 failed, 2 usage or configuration, 3 environment: not
// root or missing tools, 4 the boot test failed; lib/errors.ts). Each command lives in its own
// cli/*-cmd.ts with its --help text, and is loaded only when it runs: `mkma persist` and
// `mkma --help` do not pay for the configuration parser, the builder or the TUI.
import { CMDLINE } from '../lib/contract.js';
import { EXIT, exitCodeOf, UsageError } from '../lib/errors.js';
import { setDebug } from '../lib/run.js';
import { printHelp } from './args.js';

/** What every cli/*-cmd.ts exports. */
export interface CommandModule {
  /** the text of `mkma <command> --help` */
  HELP: string;
  run(argv: string[]): Promise<number>;
}

interface Command {
  /** one line for `mkma --help` */
  summary: string;
  load(): Promise<CommandModule>;
}

/** Every command, in the order `mkma --help` lists them. */
export const COMMANDS: Record<string, Command> = {
  build: { summary: 'bootstrap, configure and pack an image (base, initramfs, kernel)', load: () => import('./build-cmd.js') },
  qemu: { summary: 'boot the built image in QEMU and report pass/fail with boot timings', load: () => import('./qemu-cmd.js') },
  unpack: { summary: 'apply base + layers into a directory, as the boot does (inspection, tests)', load: () => import('./unpack-cmd.js') },
  persist: { summary: 'on the running RAM system: choose changes and save them as a layer', load: () => import('./persist-cmd.js') },
  lint: { summary: 'check presets (keys, folders, hooks, environment, shellcheck) without building', load: () => import('./lint-cmd.js') },
};

const KERNEL_PARAMETERS: Array<[string, string]> = [
  [`${CMDLINE.storageDevice}=DEV`, '/dev/…, UUID=…, LABEL=… or PARTUUID=… holding the images'],
  [`${CMDLINE.imagesPath}=DIR`, 'directory of the images on that device'],
  [`${CMDLINE.ramSize}=SIZE`, 'size of the RAM filesystem (default 50%)'],
  [`${CMDLINE.onError}=shell|reboot|halt`, 'what to do when boot cannot continue (default shell)'],
  [`${CMDLINE.deviceTimeout}=SECONDS`, 'how long to wait for the storage device (default 30)'],
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

Options for every command: --debug (log every program mkma runs, and stack traces)

Kernel command line (printed by mkma build):
${table(KERNEL_PARAMETERS)}

Quick start: sudo mkma build myhost && mkma qemu
`;
}

export async function main(argvIn: string[]): Promise<number> {
  // --debug, anywhere: every command mkma runs is logged (lib/run.ts), and stack traces shown
  const argv = argvIn.filter((a) => a !== '--debug');
  if (argv.length !== argvIn.length) {
    process.env.MKMA_DEBUG = '1';
    setDebug(true);
  }
  const [cmd, ...rest] = argv;
  try {
    if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
      const topic = rest[0] !== undefined ? Object.hasOwn(COMMANDS, rest[0]) && COMMANDS[rest[0]] : undefined;
      return printHelp(topic ? (await topic.load()).HELP : mainHelp());
    }
    if (cmd === '--version' || cmd === '-V') {
      const { mkmaVersion } = await import('../builder/build.js');
      process.stdout.write(`mkma ${mkmaVersion()}\n`);
      return EXIT.ok;
    }
    if (!Object.hasOwn(COMMANDS, cmd)) {
      throw new UsageError(`unknown command "${cmd}"; commands: ${Object.keys(COMMANDS).join(', ')} (mkma --help)`);
    }
    return await (await COMMANDS[cmd].load()).run(rest);
  } catch (e) {
    return reportError(e);
  }
}

export function reportError(e: unknown): number {
  const err = e as Error;
  process.stderr.write(`mkma: ${err?.message ?? String(e)}\n`);
  const code = exitCodeOf(e);
  if (code === EXIT.failed && process.env.MKMA_DEBUG) process.stderr.write(`${err?.stack}\n`);
  return code;
}
