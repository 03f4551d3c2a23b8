// The Debian root filesystem, by mmdebstrap (Debian's own tool): its arguments for a
// configuration, and the run itself (builder/stages/bootstrap.ts decides when).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config } from '../config/types.js';
import { MkmaError } from '../lib/errors.js';
import { run } from '../lib/run.js';
import { BootstrapSteps, lastLines } from './bootstrap-steps.js';
import { checkBinfmt, foreignEnv, isForeign } from './foreign.js';

/** What every image needs to boot to systemd, and what mkma's own initramfs takes from it. */
export const BASE_PACKAGES = [
  'systemd-sysv',
  'udev',
  'kmod',
  'dbus',
  // the initramfs takes these from the image, so build and boot use the same binaries
  'zstd',
  'attr',
  'busybox-static',
  'util-linux',
];

export function packageSet(c: Config): string[] {
  const pkgs = [...BASE_PACKAGES, ...(c.kernelPackage ? [c.kernelPackage] : []), ...c.packages];
  if (c.installMkma) pkgs.push('nodejs');
  return [...new Set(pkgs)];
}

/** dpkg path filters: never generate a distribution initrd (mkma makes its own). */
export function dpkgOptions(c: Config): string[] {
  const opts = ['path-exclude=/etc/kernel/postinst.d/initramfs-tools', 'path-exclude=/etc/kernel/postinst.d/dracut'];
  if (c.slim) {
    opts.push(
      'path-exclude=/usr/share/doc/*',
      // keep the licences: the image is redistributable
      'path-include=/usr/share/doc/*/copyright',
      'path-exclude=/usr/share/man/*',
      'path-exclude=/usr/share/info/*',
      'path-exclude=/usr/share/locale/*',
      'path-include=/usr/share/locale/locale.alias',
    );
  }
  return opts;
}

export function mmdebstrapArgs(c: Config, target: string): string[] {
  return [
    `--variant=${c.variant}`,
    `--architectures=${c.architecture}`,
    `--components=${c.components.join(',')}`,
    `--include=${packageSet(c).join(',')}`,
    ...dpkgOptions(c).map((o) => `--dpkgopt=${o}`),
    '--aptopt=APT::Install-Recommends "false"',
    c.suite,
    target,
    c.mirror,
  ];
}

export class BootstrapError extends MkmaError {}

/** mmdebstrap's and apt's reasons, shortened to what a user can act on. */
export function summarizeMmdebstrapError(output: string): string {
  const lines = output
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const errors = lines.filter((l) => /^E: /.test(l) && !/^E: (apt-get|mmdebstrap|run_chroot|setup failed|main\(\) failed)/.test(l));
  const picked = errors.length ? errors : lines.filter((l) => /^(E|W): /.test(l));
  const unique = [...new Set(picked)].slice(0, 4);
  const text = unique.length ? unique.join('\n  ') : lines.slice(-5).join('\n  ');
  let hint = '';
  if (/Unable to locate package|has no installation candidate/.test(output))
    hint = 'check the package names in `packages` (mkma.toml) for this suite';
  else if (/Failed to fetch|Could not resolve|Temporary failure resolving|Connection refused|Release file/.test(output))
    hint = 'check `mirror` and `suite`, and that the mirror is reachable from this machine';
  return `mmdebstrap failed:\n  ${text}${hint ? `\n  (${hint})` : ''}`;
}

/** What a bootstrap shows and keeps: its steps, the progress within them, the full log. */
export interface BootstrapOutput {
  /** the full output goes here (mode 0600: it names the image's packages and users' files) */
  logFile: string;
  onStep: (step: string) => void;
  onProgress: (text: string) => void;
}

/** mmdebstrap's lines that the error quotes from its log */
const ERROR_TAIL = 8;

/**
 * Bootstraps `c` into `target` (a new directory: the caller renames it into place only when
 * mmdebstrap succeeded, so a failed bootstrap never destroys the previous tree). mmdebstrap
 * runs with --verbose: apt's and dpkg's own lines go to the log, and give the progress within
 * its steps (builder/bootstrap-steps.ts).
 */
export async function mmdebstrap(c: Config, target: string, o: BootstrapOutput): Promise<void> {
  fs.rmSync(target, { recursive: true, force: true });
  // another architecture: its maintainer scripts run through qemu-user (builder/foreign.ts)
  if (isForeign(c.architecture)) checkBinfmt(c.architecture);
  fs.mkdirSync(path.dirname(o.logFile), { recursive: true, mode: 0o700 });
  fs.rmSync(o.logFile, { force: true });
  const log = fs.openSync(o.logFile, 'w', 0o600);
  const steps = new BootstrapSteps();
  const tail: string[] = [];
  let r;
  try {
    r = await run('mmdebstrap', ['--verbose', ...mmdebstrapArgs(c, target)], {
      allowFailure: true,
      // the user's own QEMU_CPU wins
      env: { ...foreignEnv(c.architecture), ...process.env },
      onLine: (line) => {
        fs.writeSync(log, line + '\n');
        tail.push(line);
        if (tail.length > 400) tail.shift();
        const e = steps.line(line);
        if (e && 'step' in e) o.onStep(e.step);
        else if (e && 'progress' in e) o.onProgress(e.progress);
      },
    });
  } finally {
    fs.closeSync(log);
  }
  if (!r.ok) {
    fs.rmSync(target, { recursive: true, force: true });
    const last = lastLines(tail, ERROR_TAIL).map((l) => `    ${l}`);
    throw new BootstrapError(
      `${summarizeMmdebstrapError(tail.join('\n'))}\n  last lines of its output:\n${last.join('\n')}\n  full log: ${o.logFile}`,
    );
  }
}
