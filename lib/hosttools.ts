// Host tools mkma needs, and the Debian packages that provide them.
import { EnvironmentError } from './errors.js';
import { runSync } from './run.js';

export interface HostTool {
  command: string;
  pkg: string;
  why: string;
}

export const BUILD_TOOLS: HostTool[] = [
  { command: 'mmdebstrap', pkg: 'mmdebstrap', why: 'bootstraps the Debian root filesystem' },
  { command: 'zstd', pkg: 'zstd', why: 'compresses the images' },
  { command: 'getfattr', pkg: 'attr', why: 'reads extended attributes (file capabilities, ACLs)' },
  { command: 'setfattr', pkg: 'attr', why: 'restores extended attributes (mkma unpack)' },
  { command: 'xz', pkg: 'xz-utils', why: 'decompresses kernel modules for the initramfs' },
  { command: 'depmod', pkg: 'kmod', why: 'indexes kernel modules after trimming' },
  { command: 'findmnt', pkg: 'util-linux', why: 'finds the storage device for the kernel command line' },
];

/** Optional: mkma-unpack, the fast boot-time extractor, is compiled from them (see builder/unpacker.ts). */
export const FAST_BOOT_TOOLS: HostTool[] = [{ command: 'gcc', pkg: 'gcc', why: 'compiles mkma-unpack, the fast boot-time extractor' }];
export const FAST_BOOT_PACKAGES = ['gcc', 'libc6-dev', 'libzstd-dev'];

export const QEMU_TOOLS: HostTool[] = [
  { command: 'qemu-system-x86_64', pkg: 'qemu-system-x86', why: 'boots the image for the smoke test' },
  { command: 'mke2fs', pkg: 'e2fsprogs', why: 'makes the test disk without mounting anything' },
  { command: 'debugfs', pkg: 'e2fsprogs', why: 'reads layers back from the test disk' },
];

export function hasCommand(cmd: string): boolean {
  return runSync('/bin/sh', ['-c', `command -v "$1" >/dev/null 2>&1`, 'sh', cmd], { allowFailure: true }).ok;
}

export function missingTools(tools: HostTool[]): HostTool[] {
  return tools.filter((t) => !hasCommand(t.command));
}

export class MissingToolsError extends EnvironmentError {
  constructor(readonly missing: HostTool[]) {
    const pkgs = [...new Set(missing.map((t) => t.pkg))];
    super(
      `missing host tools: ${missing.map((t) => `${t.command} (${t.why})`).join(', ')}.\n` +
        `Install them with: apt-get install ${pkgs.join(' ')}   (or run mkma with --install-deps)`,
    );
  }
}

export function requireTools(tools: HostTool[]): void {
  const missing = missingTools(tools);
  if (missing.length) throw new MissingToolsError(missing);
}

/** --install-deps: apt-get install what is missing (apt-get update first, once). */
export function installTools(tools: HostTool[], log: (s: string) => void, extraPackages: string[] = []): void {
  const missingExtra = extraPackages.filter(
    (p) => runSync('dpkg-query', ['-W', '-f=${Status}', p], { allowFailure: true }).stdout !== 'install ok installed',
  );
  const pkgs = [...new Set([...missingTools(tools).map((t) => t.pkg), ...missingExtra])];
  if (!pkgs.length) return;
  log(`installing host packages: ${pkgs.join(' ')}`);
  const env = { DEBIAN_FRONTEND: 'noninteractive' };
  runSync('apt-get', ['update'], { stdio: 'inherit', env });
  runSync('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { stdio: 'inherit', env });
}
