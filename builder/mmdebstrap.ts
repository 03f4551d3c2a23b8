// The Debian root filesystem, by mmdebstrap (Debian's own tool): its arguments for a
// configuration, and the run itself (builder/stages/bootstrap.ts decides when).
import * as fs from 'node:fs';
import type { Config } from '../config/types.js';
import { MkmaError } from '../lib/errors.js';
import { spawnTracked } from '../lib/run.js';
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

/**
 * Bootstraps `c` into `target` (a new directory: the caller renames it into place only when
 * mmdebstrap succeeded, so a failed bootstrap never destroys the previous tree). mmdebstrap's
 * "I:" lines go to `onProgress`.
 */
export async function mmdebstrap(c: Config, target: string, onProgress: (line: string) => void): Promise<void> {
  fs.rmSync(target, { recursive: true, force: true });
  // another architecture: its maintainer scripts run through qemu-user (builder/foreign.ts)
  if (isForeign(c.architecture)) checkBinfmt(c.architecture);
  const output: string[] = [];
  const code = await new Promise<number | null>((resolve, reject) => {
    // not runSync/run: its lines are progress, read as they come
    const child = spawnTracked('mmdebstrap', mmdebstrapArgs(c, target), {
      stdio: ['ignore', 'pipe', 'pipe'],
      // the user's own QEMU_CPU wins
      env: { ...foreignEnv(c.architecture), ...process.env },
    });
    const onData = (d: Buffer) => {
      for (const line of d.toString().split('\n')) {
        if (!line.trim()) continue;
        output.push(line);
        if (output.length > 400) output.shift();
        if (line.startsWith('I: ')) onProgress(line.slice(3));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('error', (e) => reject(new BootstrapError(`cannot run mmdebstrap (apt-get install mmdebstrap): ${e.message}`)));
    child.on('close', resolve);
  });
  if (code !== 0) {
    fs.rmSync(target, { recursive: true, force: true });
    throw new BootstrapError(summarizeMmdebstrapError(output.join('\n')));
  }
}
