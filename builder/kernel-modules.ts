// The kernel modules an initramfs loads, resolved from the kernel's own index files as modprobe
// would (modules.dep, modules.softdep, modules.builtin, modules.alias), and the storage drivers
// matched by hardware (modules.alias device patterns), for the init's match_storage.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, posix } from 'node:path';
import { run } from '../lib/run.js';

/** Module name as the kernel sees it: basename without .ko[.xz|.zst|.gz], '-' → '_'. */
export function moduleName(pathOrName: string): string {
  return normalizeName(basename(pathOrName).replace(/\.ko(\.(xz|zst|gz))?$/, ''));
}

/** modprobe treats '-' and '_' alike in module names and aliases. */
const normalizeName = (name: string) => name.replace(/-/g, '_');

const lines = (text: string) =>
  text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));

/** modules.dep: relative module path → all its dependencies (transitive, as depmod writes them). */
export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const line of lines(text)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    deps.set(
      line.slice(0, colon).trim(),
      line
        .slice(colon + 1)
        .split(/\s+/)
        .filter(Boolean),
    );
  }
  return deps;
}

export interface Softdep {
  pre: string[];
  post: string[];
}

/** modules.softdep: `softdep ext4 pre: crc32c post: x`, keyed by normalised module name. */
export function parseSoftdep(text: string): Map<string, Softdep> {
  const out = new Map<string, Softdep>();
  for (const line of lines(text)) {
    const [kw, mod, ...rest] = line.split(/\s+/);
    if (kw !== 'softdep' || !mod) continue;
    const sd = out.get(normalizeName(mod)) ?? { pre: [], post: [] };
    let list: string[] | null = null; // names before any pre:/post: are invalid; skip them
    for (const tok of rest) {
      if (tok === 'pre:') list = sd.pre;
      else if (tok === 'post:') list = sd.post;
      else list?.push(normalizeName(tok));
    }
    out.set(normalizeName(mod), sd);
  }
  return out;
}

/** modules.builtin: relative paths of modules compiled into the kernel. */
export function parseBuiltin(text: string): string[] {
  return lines(text);
}

/**
 * modules.alias: alias → providing module names, both normalised. Only exact names are kept
 * (`alias crc32c crc32c_generic`); wildcard device aliases (pci:v*...) are for udev.
 */
export function parseModulesAlias(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [alias, mod] of aliasEntries(text)) {
    if (!/[*?[]/.test(alias)) addUnique(out, normalizeName(alias), normalizeName(mod));
  }
  return out;
}

/** modules.alias' `alias PATTERN MODULE` lines, as [pattern, module]. */
function* aliasEntries(text: string): Generator<[string, string]> {
  for (const line of lines(text)) {
    const [kw, alias, mod] = line.split(/\s+/);
    if (kw === 'alias' && alias && mod) yield [alias, mod];
  }
}

function addUnique(map: Map<string, string[]>, key: string, value: string): void {
  const list = map.get(key) ?? [];
  if (!list.includes(value)) list.push(value);
  map.set(key, list);
}

/** Buses whose device aliases the init matches against sysfs modaliases (storage drivers). */
const DEVICE_ALIAS_RE = /^(pci|usb|virtio|scsi|mmc|sdio|acpi|of|platform|vmbus|ccw|pcmcia|ieee1394|hid|serio):/;

/**
 * modules.alias' device aliases (the wildcard ones udev matches): normalised module name →
 * its glob patterns, for the modules in `only`.
 */
export function parseDeviceAliases(text: string, only: Set<string>): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [alias, mod] of aliasEntries(text)) {
    const name = normalizeName(mod);
    if (DEVICE_ALIAS_RE.test(alias) && only.has(name)) addUnique(out, name, alias);
  }
  return out;
}

export interface ModuleClosureOptions {
  /** Wanted modules that don't exist are dropped instead of reported in `missing`. */
  optional?: boolean;
  /** Alias map (parseModulesAlias); defaults to modulesDir/modules.alias. */
  aliases?: Map<string, string[]>;
}

export interface ModuleClosure {
  /** Relative module paths (as in modules.dep) in load order: dependencies first. */
  order: string[];
  /** Wanted modules compiled into the kernel: nothing to load. */
  builtin: string[];
  /** Wanted modules that are neither files, built-in, nor an alias (as the caller spelled them). */
  missing: string[];
}

/**
 * The modules to insmod, in order, so that each of `wanted` is loaded: for every module its
 * softdep `pre:` modules, then its modules.dep dependencies, then itself, then its `post:`
 * softdeps (the order modprobe uses). Softdeps that resolve to nothing are skipped: they are
 * optional by nature. A wanted or softdep name that is not a module file is looked up in the
 * aliases, and every module providing it is taken (e.g. crc32c → crc32c_generic, crc32c_intel).
 */
export function moduleClosure(modulesDir: string, wanted: string[], opts: ModuleClosureOptions = {}): ModuleClosure {
  const readOptional = (f: string) => (existsSync(join(modulesDir, f)) ? readFileSync(join(modulesDir, f), 'utf8') : '');
  const deps = parseModulesDep(readFileSync(join(modulesDir, 'modules.dep'), 'utf8'));
  const softdeps = parseSoftdep(readOptional('modules.softdep'));
  const builtins = new Set(parseBuiltin(readOptional('modules.builtin')).map(moduleName));
  const aliases = opts.aliases ?? parseModulesAlias(readOptional('modules.alias'));
  const byName = new Map<string, string>();
  for (const path of deps.keys()) byName.set(moduleName(path), path);

  // A name → the module files to load ([] for built-in or unknown names).
  const lookup = (name: string): string[] => {
    const n = normalizeName(name);
    const own = byName.get(n);
    if (own) return [own];
    return (aliases.get(n) ?? [])
      .map((m) => byName.get(m))
      .filter((p): p is string => !!p)
      .sort();
  };

  const order: string[] = [];
  const placed = new Set<string>();
  const visiting = new Set<string>(); // softdeps may form cycles (a post: b, b pre: a)
  const visit = (path: string) => {
    if (placed.has(path) || visiting.has(path)) return;
    visiting.add(path);
    const sd = softdeps.get(moduleName(path));
    for (const name of sd?.pre ?? []) lookup(name).forEach(visit);
    // depmod lists dependencies users-first, so the last one is loaded first (as modprobe does).
    for (const dep of [...(deps.get(path) ?? [])].reverse()) visit(dep);
    visiting.delete(path);
    placed.add(path);
    order.push(path);
    for (const name of sd?.post ?? []) lookup(name).forEach(visit);
  };

  const builtin: string[] = [];
  const missing: string[] = [];
  for (const name of wanted) {
    const n = normalizeName(name);
    const paths = lookup(n);
    if (paths.length > 0) paths.forEach(visit);
    else if (builtins.has(n) || (aliases.get(n) ?? []).some((m) => builtins.has(m))) {
      if (!builtin.includes(n)) builtin.push(n);
    } else if (!opts.optional && !missing.includes(name)) missing.push(name);
  }
  return { order, builtin, missing };
}

const DECOMPRESSORS: Record<string, string> = { '.xz': 'xz', '.zst': 'zstd', '.gz': 'gzip' };

/**
 * Writes `src` as a plain .ko at `dest` (parents created). busybox insmod takes plain modules
 * only, and the initramfs is zstd-compressed as a whole, which packs better than modules
 * compressed one by one. A module is a few MiB at most: it is decompressed in memory and
 * written whole, so a failure leaves no half-written file for a later insmod to choke on.
 */
export async function decompressModule(src: string, dest: string): Promise<void> {
  mkdirSync(dirname(dest), { recursive: true });
  const tool = DECOMPRESSORS[posix.extname(src)];
  if (!tool) {
    copyFileSync(src, dest);
    return;
  }
  const r = await run(tool, ['-dc', src]);
  writeFileSync(dest, r.stdoutBytes);
}

/** A storage driver the init loads when it finds a device matching one of its patterns. */
export interface StorageDriver {
  /** modules.alias device globs (pci:v…, virtio:d…) */
  patterns: string[];
  /** what to load for it, dependencies first (module names) */
  load: string[];
}

/**
 * The storage drivers of `storage` (module names) that have device aliases, each with its own
 * closure restricted to the group: the init matches sysfs modaliases against the patterns, as
 * udev would, and loads only the drivers of the hardware it finds.
 */
export function storageDrivers(modulesDir: string, storage: string[]): StorageDriver[] {
  const aliasFile = join(modulesDir, 'modules.alias');
  if (!existsSync(aliasFile)) return [];
  const inGroup = new Set(storage);
  const byModule = parseDeviceAliases(readFileSync(aliasFile, 'utf8'), inGroup);
  return storage
    .filter((m) => byModule.has(m))
    .map((m) => {
      const own = moduleClosure(modulesDir, [m], { optional: true })
        .order.map(moduleName)
        .filter((n) => inGroup.has(n));
      return { patterns: byModule.get(m)!, load: own.length ? own : [m] };
    });
}
