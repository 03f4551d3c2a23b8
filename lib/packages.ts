// Which Debian package provides a program mkma runs: one table, so that every "not installed"
// message (lib/run.ts) and every --install-deps (lib/hosttools.ts) names the same package.
export const PACKAGE_OF: Record<string, string> = {
  mmdebstrap: 'mmdebstrap',
  zstd: 'zstd',
  getfattr: 'attr',
  setfattr: 'attr',
  xz: 'xz-utils',
  depmod: 'kmod',
  findmnt: 'util-linux',
  blkid: 'util-linux',
  flock: 'util-linux',
  mount: 'mount',
  umount: 'mount',
  losetup: 'mount',
  gcc: 'gcc',
  shellcheck: 'shellcheck',
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-system-aarch64': 'qemu-system-arm',
  'qemu-system-riscv64': 'qemu-system-misc',
  mke2fs: 'e2fsprogs',
  debugfs: 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  cpio: 'cpio',
  busybox: 'busybox-static',
  tmux: 'tmux',
  mknod: 'coreutils',
  sgdisk: 'gdisk',
  'mkfs.vfat': 'dosfstools',
  'mkfs.ext4': 'e2fsprogs',
  'grub-install': 'grub2-common',
  cryptsetup: 'cryptsetup',
  'mkfs.erofs': 'erofs-utils',
  mksquashfs: 'squashfs-tools',
  ssh: 'openssh-client',
  'ssh-keygen': 'openssh-client',
  'apt-get': 'apt',
};

export function packageFor(program: string): string | undefined {
  return PACKAGE_OF[program.slice(program.lastIndexOf('/') + 1)];
}
