// The host's CPU architecture by its Debian name: what a build or a boot compares the image's
// `architecture` with (another one is bootstrapped through qemu-user and booted under TCG).
import * as os from 'node:os';

const DEBIAN_NAMES: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  ia32: 'i386',
  arm: 'armhf',
  ppc64: 'ppc64el',
  s390x: 's390x',
  riscv64: 'riscv64',
};

export function hostArch(): string {
  return DEBIAN_NAMES[os.arch()] ?? os.arch();
}
