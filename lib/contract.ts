// The boot contract: every name and number that the build (TypeScript), the boot (the init's
// POSIX shell, init/templates) and the C extractor (init/unpack/mkma-unpack.c) must agree on,
// defined once. init/generate.ts turns it into the shell constants at the top of every
// generated init; the C side gets it as a generated header. Change a value here and all
// three follow; never spell one of these out elsewhere.
//
// Pure data: lib/ is the ground floor and imports nothing of mkma's.

/** File names in an images directory (format/names.ts orders the layers). */
export const FILES = {
  base: 'base.cpio.zst',
  /** the base as a read-only filesystem image (base_format = erofs / squashfs), beside the cpio */
  baseErofs: 'base.erofs',
  baseSquashfs: 'base.squashfs',
  initramfs: 'initramfs.cpio.zst',
  kernel: 'vmlinuz',
  buildInfo: 'mkma.json',
  layerPrefix: 'persistence.',
  layerSuffix: '.cpio.zst',
  /** persistence.<LAST>+from+<FIRST>.cpio.zst: a compacted layer, superseding FIRST..LAST (format/compacted.ts) */
  compactMark: '+from+',
} as const;

/**
 * A layer's state, in its file name (docs/FORMAT.md "Layer names and states"):
 * `persistence.ID[@STATE].cpio.zst`, STATE = `disabled` | `trial-LEFT-DONE` | `failed-DONE`,
 * optionally followed by `,pinned` (or `pinned` alone). No STATE: active. Changed only by
 * rename(2), so a crash leaves the old name or the new one.
 */
export const LAYER_STATE = {
  /** between the layer's id and its state (never in an id, so natural order ignores the state) */
  separator: '@',
  /** between the status and `pinned` */
  flagSeparator: ',',
  disabled: 'disabled',
  trial: 'trial',
  failed: 'failed',
  pinned: 'pinned',
  /** tries a new layer of mkma persist gets before a boot with it must have been good */
  tries: 3,
  /** most tries a layer can be given (one digit in the name) */
  maxTries: 9,
} as const;

/** The image format (docs/FORMAT.md; format/manifest.ts reads and writes it). */
export const FORMAT = {
  manifestVersion: 1,
  /** zstd skippable frame magic of the manifest frame (0x184d2a50..5f are skippable) */
  skippableMagic: 0x184d2a5e,
  footerTag: 'MKMA-MANIFEST-LEN',
  /** footer: tag + body length right-aligned in 12 columns + "\n" */
  footerDigits: 12,
  xattrSection: '%xattrs',
  /** cpio newc: fixed header size and the end marker */
  newcHeaderSize: 110,
  newcTrailer: 'TRAILER!!!',
  /** longest entry name accepted, NUL included (PATH_MAX) */
  nameLimit: 4096,
  /** longest symlink target (Linux refuses longer ones) */
  symlinkLimit: 4095,
  /** longest manifest number, in decimal digits: exact in a JS number and in shell arithmetic */
  numberDigits: 15,
  /** longest xattr name (bytes) and value (bytes, XATTR_SIZE_MAX) */
  xattrNameLimit: 255,
  xattrValueLimit: 65536,
} as const;

/**
 * zstd compression levels: the one range of compression_level, MKMA_COMPRESSION_LEVEL and
 * `mkma persist --level` (above 19 zstd needs --ultra, format/zstd.ts). An image records the
 * level it was written with in its manifest (`zstd_level`), so that `mkma persist` on the
 * running system writes its layers as the image was built.
 */
export const ZSTD_LEVEL = { min: 1, max: 22, default: 3 } as const;

export const FOOTER_SIZE = FORMAT.footerTag.length + FORMAT.footerDigits + 1;

/** Where things are on the running system (set up by the init, read by `mkma persist`). */
export const RUNTIME = {
  /** the RAM filesystem holding the layers of the overlay */
  overlay: '/overlay',
  /** the base with the layers applied: the overlay's lowerdir */
  lower: '/overlay/base',
  /** this boot's changes: the overlay's upperdir, what `mkma persist` saves */
  upper: '/overlay/fresh',
  work: '/overlay/work',
  merged: '/overlay/merge',
  /** where the init tells the running system where its images came from */
  bootEnv: '/overlay/boot.env',
  /** the init's scratch directory (a tmpfs, moved into the new root with /run) */
  initTmp: '/run/mkma',
  /** what the init applied and skipped at this boot, and why: lines `applied NAME` / `skipped NAME REASON` */
  layersRecord: '/run/mkma/layers',
  /** what `mkma persist` saved in this boot, per upperdir (persist/saved.ts): a virtual layer below it */
  savedThisBoot: '/run/mkma/saved',
  /** where the init mounts the storage device (read-only, unmounted before switch_root) */
  storageMount: '/mnt/storage',
} as const;

/** Kernel command line keys read by the init (and by `mkma persist`, for the storage). */
export const CMDLINE = {
  storageDevice: 'mkma_storage_device',
  imagesPath: 'mkma_images_path',
  ramSize: 'mkma_ram_size',
  onError: 'mkma_on_error',
  deviceTimeout: 'mkma_device_timeout',
  debug: 'mkma_debug',
  break: 'mkma_break',
  /** the base image's file name in the images directory (default FILES.base): a stick's generations */
  base: 'mkma_base',
  /** `all` (default) or `none`: the base without layers (the recovery entry of a boot menu) */
  layers: 'mkma_layers',
  /** 1 or 0 (default): check each layer's data hash (data_sha256) before applying it */
  verify: 'mkma_verify',
  /** the LUKS2 device holding the storage (UUID=…), unlocked at boot with a passphrase */
  luks: 'mkma_luks',
} as const;

/**
 * mkma-unpack's output protocol: one line per layer (-l) or image (-i), first word below.
 *   -l: "merge NAME" (the tree is about to change), then "ok NAME ENTRIES REMOVED" |
 *       "partial NAME REASON"; or "skip NAME REASON" (tree untouched); "warn NAME TEXT" before
 *       a layer's result line
 *   -i: "ok KIND ENTRIES UNPACKED DATA_BYTES" | "bad REASON"
 * A layer without a result line (mkma-unpack crashed or was killed) was not applied if no
 * "merge NAME" line came for it, and may be partly applied if one did.
 */
export const UNPACK_PROTOCOL = {
  ok: 'ok',
  skip: 'skip',
  partial: 'partial',
  warn: 'warn',
  bad: 'bad',
  merge: 'merge',
} as const;

/** mkma-unpack's exit statuses. */
export const UNPACK_EXIT = {
  ok: 0,
  /** one image failed (single image), or some layers were skipped (-l) */
  failed: 1,
  usage: 2,
  /** -l: some layer was applied only partly */
  partial: 3,
} as const;
