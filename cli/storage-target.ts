// The images directory a command works on: `--path DIR`, `--device DEV --path P`, or on the
// booted system the storage the init used (the kernel command line, else the init's boot.env),
// exactly as `mkma persist` finds it (persist/storage.ts).
import * as fs from 'node:fs';
import { BOOT_ENV_PATH, resolveTarget, type Target } from '../persist/storage.js';

function readIf(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** `readOnly`: for commands that only read (the device is then mounted read-only). */
export function storageTarget(values: { device?: string; path?: string }, readOnly = false): Target {
  return resolveTarget({
    device: values.device,
    path: values.path,
    cmdline: readIf('/proc/cmdline') ?? '',
    bootEnv: readIf(BOOT_ENV_PATH),
    readOnly,
  });
}

/** The --device and --path options of the commands that read the images (as persist finds them). */
export const STORAGE_OPTIONS = [
  {
    long: 'device',
    value: 'DEV',
    complete: 'file',
    help: `storage device (/dev/…, UUID=…, LABEL=…, PARTUUID=…); default: the one
the system booted from (mkma_storage_device= on the kernel command line)`,
  },
  {
    long: 'path',
    value: 'PATH',
    complete: 'dir',
    help: 'with --device: the images directory on it; alone: an images directory\n(e.g. the output directory of mkma build)',
  },
] as const;
