// Every setting of mkma.toml, defined once: TOML key, type, default, help and environment
// override. config/load.ts validates against this table and the README's reference is
// rendered from it (`npm run readme`), so a new setting is added here and nowhere else
// (plus its field in types.ts, which the compiler then demands).

import type { TomlValue } from 'smol-toml';
import type { Config, RootPasswordPolicy } from './types.js';
import { ZSTD_LEVEL } from '../lib/contract.js';

/** What is wrong with one string value (shown after "<key>: "), or null when it is fine. */
export type Check = (s: string) => string | null;

export type SettingType =
  | { kind: 'string'; check?: Check }
  | { kind: 'string[]'; check?: Check }
  | { kind: 'integer'; min: number; max: number }
  | { kind: 'boolean' }
  | { kind: 'enum'; values: readonly string[] }
  /** the string "all", or a list of names */
  | { kind: 'all-or-list'; check?: Check };

export interface Setting<T = unknown> {
  /** TOML key (snake_case) */
  key: string;
  type: SettingType;
  /** in TOML form; null: no fixed default, the caller supplies one (hostname) */
  default: TomlValue | null;
  /** what the reference shows for a null default */
  defaultText?: string;
  /** one line, for the reference and the example file */
  help: string;
  /** environment variable that overrides the file */
  env?: string;
  /**
   * false for settings that only affect packing or boot, or that the configure stage applies
   * to the bootstrapped tree on every build (hostname, root password): changing them keeps a
   * bootstrapped tree reusable (see configHash). Absent means true, so a new setting errs on
   * rebuilding.
   */
  affectsTree?: false;
  /** TOML value (already validated) → Config value; absent when they are the same */
  toConfig?(raw: TomlValue): T;
  /** Config value → TOML form, the inverse of toConfig (for describeConfig) */
  toToml?(v: T): TomlValue;
}

// Debian Policy 5.6.1 (lowercase, at least two characters).
export const DEBIAN_PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]+$/;
export const MODULE_NAME_RE = /^[A-Za-z0-9_-]+$/;
// RFC 1123: dot-separated labels of 1..63 letters, digits and hyphens, no hyphen at either end.
const HOSTNAME_LABEL_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
// A crypt(3) hash goes verbatim into /etc/shadow, where ':' separates fields and a newline
// separates entries: either would corrupt the file, so neither is accepted.
const CRYPT_HASH_RE = /^\$[^\s:]+$/;
const RAM_SIZE_RE = /^(?:(?:[1-9][0-9]?|100)%|[1-9][0-9]*[KMGkmg]?)$/;

export function hostnameProblem(s: string): string | null {
  const ok = s.length <= 253 && s.split('.').every((label) => HOSTNAME_LABEL_RE.test(label));
  return ok
    ? null
    : `${JSON.stringify(s)} is not a valid hostname (RFC 1123: dot-separated labels of ` +
        `1 to 63 letters, digits and hyphens, not starting or ending with a hyphen)`;
}

const packageName: Check = (s) =>
  DEBIAN_PACKAGE_RE.test(s)
    ? null
    : `${JSON.stringify(s)} is not a valid Debian package name (lowercase letters, digits, ` +
      `"+", "-", "."; at least 2 characters, starting with a letter or digit)`;

const moduleName: Check = (s) =>
  MODULE_NAME_RE.test(s) ? null : `${JSON.stringify(s)} is not a valid kernel module name (letters, digits, "_" and "-")`;

const word: Check = (s) => (/^[A-Za-z0-9][A-Za-z0-9._/-]*$/.test(s) ? null : `${JSON.stringify(s)} is not valid`);

const nonEmpty: Check = (s) => (s.trim() === '' ? 'must not be empty' : null);

// The value is not echoed: it may be a clear-text password typed by mistake.
const rootPassword: Check = (s) =>
  s === 'locked' || s === 'empty' || CRYPT_HASH_RE.test(s)
    ? null
    : 'must be "locked", "empty" or a crypt hash starting with "$" (make one with ' +
      '`mkpasswd -m yescrypt`; a clear-text password is not accepted)';

const ramSize: Check = (s) =>
  RAM_SIZE_RE.test(s)
    ? null
    : `${JSON.stringify(s)} is not a tmpfs size (a percentage of RAM from 1% to 100%, ` +
      `or a size with an optional K, M or G suffix, e.g. "4G")`;

type Fields = Omit<Config, 'source'>;

/** Keyed by Config field, so the compiler checks that every field has exactly one setting. */
export const SCHEMA: { [F in keyof Fields]: Setting<Fields[F]> } = {
  hostname: {
    key: 'hostname',
    type: { kind: 'string', check: hostnameProblem },
    default: null,
    defaultText: "the build host's hostname",
    // written by configure (builder/configure.ts), never by mmdebstrap
    affectsTree: false,
    help: 'Hostname of the image (the command line argument takes precedence).',
  },
  suite: {
    key: 'suite',
    type: { kind: 'string', check: word },
    default: 'trixie',
    help: 'Debian suite to bootstrap.',
  },
  mirror: {
    key: 'mirror',
    type: { kind: 'string', check: nonEmpty },
    default: 'http://deb.debian.org/debian',
    help: 'Debian mirror used by mmdebstrap.',
  },
  architecture: {
    key: 'architecture',
    type: { kind: 'string', check: word },
    default: 'amd64',
    help: 'Debian architecture of the image.',
  },
  variant: {
    key: 'variant',
    type: {
      kind: 'enum',
      values: ['extract', 'custom', 'essential', 'apt', 'required', 'minbase', 'buildd', 'important', 'debootstrap', 'standard'],
    },
    default: 'minbase',
    help: 'mmdebstrap --variant: the base package set.',
  },
  components: {
    key: 'components',
    type: { kind: 'string[]', check: word },
    default: ['main'],
    help: 'Archive components (e.g. "main", "contrib", "non-free-firmware").',
  },
  packages: {
    key: 'packages',
    type: { kind: 'string[]', check: packageName },
    default: [],
    help: 'Extra Debian packages installed into the image.',
  },
  kernelPackage: {
    key: 'kernel_package',
    type: { kind: 'string', check: packageName },
    default: 'linux-image-amd64',
    help: "Kernel image package installed into the image; when not set, Debian's kernel for `architecture` (linux-image-arm64 for arm64).",
  },
  kernelModules: {
    key: 'kernel_modules',
    type: { kind: 'all-or-list', check: moduleName },
    default: 'all',
    help: '"all" (real hardware works) or a list of modules whose dependency closure is kept (small test images).',
  },
  initramfsModules: {
    key: 'initramfs_modules',
    type: { kind: 'string[]', check: moduleName },
    default: [],
    help: 'Extra kernel modules (with their dependencies) put into the initramfs.',
  },
  compressionLevel: {
    key: 'compression_level',
    type: { kind: 'integer', min: ZSTD_LEVEL.min, max: ZSTD_LEVEL.max },
    default: ZSTD_LEVEL.default,
    env: 'MKMA_COMPRESSION_LEVEL',
    affectsTree: false,
    help: 'zstd level for the base image and layers (higher: smaller, much slower to build); recorded in the image, so `mkma persist` writes its layers at the same level.',
  },
  rootPassword: {
    key: 'root_password',
    type: { kind: 'string', check: rootPassword },
    default: 'locked',
    // set in /etc/shadow by configure (builder/configure.ts), never by mmdebstrap
    affectsTree: false,
    help: 'Root password: "locked", "empty", or a crypt hash such as "$y$..." from `mkpasswd`.',
    toConfig: (raw): RootPasswordPolicy => (raw === 'locked' || raw === 'empty' ? { kind: raw } : { kind: 'hash', hash: String(raw) }),
    toToml: (p) => (p.kind === 'hash' ? p.hash : p.kind),
  },
  slim: {
    key: 'slim',
    type: { kind: 'boolean' },
    default: true,
    help: 'Leave documentation, man pages and translations out of the image.',
  },
  installMkma: {
    key: 'install_mkma',
    type: { kind: 'boolean' },
    default: true,
    help: 'Install mkma and Node.js into the image so `mkma persist` works offline.',
  },
  ramSize: {
    key: 'ram_size',
    type: { kind: 'string', check: ramSize },
    default: '50%',
    affectsTree: false,
    help: 'Size of the RAM filesystem ("50%" of RAM, or e.g. "4G"); mkma_ram_size= on the kernel command line overrides.',
  },
  bootTuning: {
    key: 'boot_tuning',
    type: { kind: 'boolean' },
    default: true,
    // applied by configure on every build (builder/boot-tuning.ts)
    affectsTree: false,
    help: 'systemd settings for a RAM boot: needs-update stamps (no ldconfig/catalog/sysusers at each boot), an empty /etc/machine-id, no GPT/hibernate/TPM2/offline-update generators, the journal in /run only. false: the tree as Debian made it.',
  },
  baseFormat: {
    key: 'base_format',
    type: { kind: 'enum', values: ['cpio', 'erofs', 'squashfs'] },
    default: 'cpio',
    affectsTree: false,
    help: '"cpio": the init unpacks base.cpio.zst into RAM. "erofs" / "squashfs": the build also writes base.erofs / base.squashfs, which the init copies into RAM and mounts as the lowest layer (no unpack, less RAM); squashfs refuses a base with POSIX ACLs.',
  },
};

export type Field = keyof Fields;
export const SETTINGS: ReadonlyArray<Setting & { field: Field }> = Object.entries(SCHEMA).map(([field, s]) => ({
  ...(s as Setting),
  field: field as Field,
}));

/** Short type for the reference table. */
export function typeText(t: SettingType): string {
  switch (t.kind) {
    case 'string[]':
      return 'list of strings';
    case 'integer':
      return `integer ${t.min}..${t.max}`;
    case 'enum':
      return `one of ${t.values.join(', ')}`;
    case 'all-or-list':
      return '"all" or list of strings';
    default:
      return t.kind;
  }
}

/** A TOML literal (only the scalar and list forms mkma uses). */
export function tomlLiteral(v: TomlValue): string {
  if (Array.isArray(v)) return `[${v.map(tomlLiteral).join(', ')}]`;
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

/** The settings as a Markdown table (key, type, default, env, description), for the README. */
export function renderConfigReference(): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|');
  const code = (s: string) => '`' + s + '`';
  const rows = SETTINGS.map((s) =>
    [
      code(s.key),
      typeText(s.type),
      s.default === null ? (s.defaultText ?? '') : code(tomlLiteral(s.default)),
      s.env ? code(s.env) : '',
      s.help,
    ].map(cell),
  );
  return (
    [['Key', 'Type', 'Default', 'Env', 'Description'], ['---', '---', '---', '---', '---'], ...rows]
      .map((r) => `| ${r.join(' | ')} |`)
      .join('\n') + '\n'
  );
}
