// The typed configuration every stage receives. It is produced once, by config/load.ts, from
// defaults + mkma.toml + environment + command line, and then only read.

export type RootPasswordPolicy = { kind: 'locked' } | { kind: 'empty' } | { kind: 'hash'; hash: string };

export type BaseFormat = 'cpio' | 'erofs' | 'squashfs';

export interface Config {
  /** hostname of the image (CLI argument, else `hostname` key, else the build host's) */
  hostname: string;
  /** Debian suite for mmdebstrap */
  suite: string;
  mirror: string;
  architecture: string;
  /** mmdebstrap --variant */
  variant: string;
  components: string[];
  /** packages added to the default set */
  packages: string[];
  /** the kernel image package installed into the image */
  kernelPackage: string;
  /**
   * kernel modules kept in the image: 'all' (default, real hardware works), or a list of
   * module names whose dependency closure is kept (small test images)
   */
  kernelModules: 'all' | string[];
  /** extra modules (with their dependencies) put into the initramfs */
  initramfsModules: string[];
  /** zstd level for base and layers (1..22); MKMA_COMPRESSION_LEVEL overrides */
  compressionLevel: number;
  rootPassword: RootPasswordPolicy;
  /** leave documentation, man pages and translations out of the image (smaller, faster boot) */
  slim: boolean;
  /** install mkma (and the Node.js runtime) into the image so `mkma persist` works offline */
  installMkma: boolean;
  /** default size of the RAM filesystem (tmpfs size= value: "50%", "4G"); mkma_ram_size= overrides */
  ramSize: string;
  /** systemd settings for a RAM boot (builder/boot-tuning.ts); false leaves the tree as Debian made it */
  bootTuning: boolean;
  /** how the base is stored: a cpio archive unpacked at boot, or also a read-only filesystem image mounted from RAM */
  baseFormat: BaseFormat;
  /** the file the configuration came from, if any (for error messages) */
  source: string | null;
}
