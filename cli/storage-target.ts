// The images directory a command works on: `--path DIR`, `--device DEV --path P`, or on the
// booted system the storage the init used (the kernel command line, else the init's boot.env),
// exactly as `mkma persist` finds it (persist/storage.ts).
import * as fs from 'node:fs';
import { createReporter, formatBytes, type Reporter, type Stage } from '../lib/progress.js';
import { baseOfNewLayer } from '../persist/base-identity.js';
import { BOOT_ENV_PATH, resolveTarget, type Target } from '../persist/storage.js';

export function readIf(file: string): string | undefined {
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

/** The base a layer written into `target` goes on (its data_sha256), when known: persist/base-identity.ts. */
export function baseUnder(values: { device?: string; path?: string }, target: Target): string | undefined {
  return baseOfNewLayer({ device: values.device, path: values.path, bootEnv: readIf(BOOT_ENV_PATH), imagesDir: target.imagesDir });
}

/** --device: the storage device (every command that finds the storage). */
export const DEVICE_OPTION = {
  long: 'device',
  value: 'DEV',
  complete: 'file',
  help: `storage device (/dev/…, UUID=…, LABEL=…, PARTUUID=…); default: the one
the system booted from (mkma_storage_device= on the kernel command line)`,
} as const;

/** The --device and --path options of the commands that read the images (as persist finds them). */
export const STORAGE_OPTIONS = [
  DEVICE_OPTION,
  {
    long: 'path',
    value: 'PATH',
    complete: 'dir',
    help: 'with --device: the images directory on it; alone: an images directory\n(e.g. the output directory of mkma build)',
  },
] as const;

/**
 * Runs `work` on the images directory the options name (found read-only), with a reporter
 * (quiet with --quiet or --json), and releases the storage after, whatever happens.
 */
export async function readImages<T>(
  values: { device?: string; path?: string; quiet?: boolean; json?: boolean },
  work: (imagesDir: string, reporter: Reporter, where: string) => Promise<T>,
): Promise<{ result: T; where: string }> {
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  const target = storageTarget(values, true);
  try {
    for (const w of target.warnings) reporter.warn(w);
    return { result: await work(target.imagesDir, reporter, target.description), where: target.description };
  } finally {
    target.release();
  }
}

/** Data bytes from which a file's hashing gets a progress line. */
const PROGRESS_FROM = 32 << 20;

/** Progress of a verification on `stage`: which file, and how much of a large one is read. */
export function verifyProgress(stage: Stage): {
  onFile: (name: string, index: number, count: number) => void;
  onProgress: (done: number, total: number) => void;
} {
  let current = '';
  return {
    onFile: (name, i, n) => (current = `${name} (${i + 1} of ${n})`),
    onProgress: (done, total) => {
      if (total >= PROGRESS_FROM)
        stage.progress(`${current}: ${formatBytes(done)} of ${formatBytes(total)} (${Math.floor((done / total) * 100)}%)`);
    },
  };
}

/**
 * Runs `work` on the images directory the options name, found for writing (the device is
 * mounted read-write only meanwhile), with persist's lock held (persist/write.ts acquireLock:
 * one change at a time, a persist included); releases both after, whatever happens. `command`
 * ("mkma layers disable") is what the lock file names as its holder meanwhile.
 */
export async function changeImages<T>(
  values: { device?: string; path?: string; quiet?: boolean; json?: boolean },
  command: string,
  work: (imagesDir: string, reporter: Reporter, where: string) => Promise<T> | T,
): Promise<{ result: T; where: string }> {
  const reporter = createReporter({ quiet: !!values.quiet || !!values.json });
  const target = storageTarget(values);
  try {
    for (const w of target.warnings) reporter.warn(w);
    const { acquireLock } = await import('../persist/write.js');
    const unlock = acquireLock(target.imagesDir, command);
    try {
      return { result: await work(target.imagesDir, reporter, target.description), where: target.description };
    } finally {
      unlock();
    }
  } finally {
    target.release();
  }
}
