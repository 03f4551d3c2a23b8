// What the initramfs must contain besides busybox: the shared libraries of the few binaries it
// runs, and the kernel modules it loads before the root is mounted.
//
// Both are computed by reading the built image's files, never by running anything from it
// (no chroot ldd, no modprobe --show-depends), so a foreign-architecture image works the
// same as a native one and nothing from the host's own / leaks in.
import { spawn } from 'node:child_process';
import {
  closeSync, copyFileSync, existsSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync,
  readFileSync, readlinkSync, readSync, rmSync, statSync,
} from 'node:fs';
import { basename, dirname, join, posix } from 'node:path';
import { MkmaError } from '../lib/errors.js';

// ---------------------------------------------------------------------------------------------
// Paths inside a root

export interface InRootPath {
  /** Absolute path inside the root with every symlink resolved ('/' for the root itself). */
  path: string;
  /**
   * Every symlink crossed on the way, as in-root paths whose parent directories are real
   * directories (never themselves under a symlink), in the order they were met.
   */
  symlinks: string[];
  /** Whether `path` exists. A missing component is kept literally, like `realpath -m`. */
  exists: boolean;
}

const MAX_SYMLINKS = 40; // Linux's own limit (ELOOP)

/**
 * Resolves `path` inside `root` the way the kernel would after chroot(root): component by
 * component, with absolute symlink targets re-rooted at `root` and '..' never leaving it.
 * node's realpath can't do that: an absolute target like /usr/lib/x would escape to the host.
 */
export function resolveInRoot(root: string, path: string): InRootPath {
  let todo = path.split('/').filter(Boolean);
  let cur = ''; // resolved so far, '' standing for the root
  let exists = true;
  let hops = 0;
  const symlinks: string[] = [];
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '.') continue;
    if (c === '..') {
      cur = cur.slice(0, cur.lastIndexOf('/'));
      continue;
    }
    const next = `${cur}/${c}`;
    let isLink = false;
    if (exists) {
      try {
        isLink = lstatSync(join(root, next)).isSymbolicLink();
      } catch {
        exists = false; // the rest can't exist either; keep resolving lexically
      }
    }
    if (!isLink) {
      cur = next;
      continue;
    }
    if (++hops > MAX_SYMLINKS) throw new Error(`too many levels of symbolic links resolving ${path} in ${root}`);
    symlinks.push(next);
    const target = readlinkSync(join(root, next));
    if (target.startsWith('/')) cur = '';
    todo = [...target.split('/').filter(Boolean), ...todo];
  }
  return { path: cur || '/', symlinks, exists };
}

// ---------------------------------------------------------------------------------------------
// ELF

export interface ElfInfo {
  /** PT_INTERP, e.g. '/lib64/ld-linux-x86-64.so.2'; null for static binaries and most libraries. */
  interp: string | null;
  /** DT_NEEDED sonames, in file order. */
  needed: string[];
  /** DT_RUNPATH, or DT_RPATH when there is no RUNPATH (glibc ignores RPATH then), unexpanded. */
  runpath: string[];
  class: 32 | 64;
  /** e_machine (62 x86_64, 183 aarch64, 3 i386, 40 arm, ...). */
  machine: number;
}

/** A file that starts like an ELF file but can't be parsed (truncated, big-endian, corrupt). */
export class ElfError extends MkmaError {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'ElfError';
  }
}

const PT_LOAD = 1, PT_DYNAMIC = 2, PT_INTERP = 3;
const DT_NULL = 0, DT_NEEDED = 1, DT_STRTAB = 5, DT_STRSZ = 10, DT_RPATH = 15, DT_RUNPATH = 29;

/**
 * Reads what the dynamic loader would read: PT_INTERP and the dynamic section's NEEDED and
 * RUNPATH/RPATH strings. Only the needed byte ranges are read (libraries can be 100+ MB).
 *
 * Returns null for a file that is not ELF at all (a shell script, a text file): callers copy
 * those as they are. Throws ElfError for a big-endian or malformed ELF file.
 */
export function readElfInfo(file: string): ElfInfo | null {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const read = (off: number, len: number): Buffer => {
      if (off < 0 || len < 0 || off + len > size) throw new ElfError(file, `truncated ELF file (${len} bytes at ${off})`);
      const buf = Buffer.alloc(len);
      readSync(fd, buf, 0, len, off);
      return buf;
    };
    if (size < 16) return null;
    const ident = read(0, 16);
    if (ident.readUInt32BE(0) !== 0x7f454c46) return null; // "\x7fELF"
    if (ident[4] !== 1 && ident[4] !== 2) throw new ElfError(file, `unknown ELF class ${ident[4]}`);
    if (ident[5] !== 1) throw new ElfError(file, 'big-endian ELF is unsupported');
    const is64 = ident[4] === 2;
    // 32- and 64-bit layouts differ only in word sizes, hence the offset pairs below.
    const word = (b: Buffer, off: number): number => (is64 ? Number(b.readBigUInt64LE(off)) : b.readUInt32LE(off));
    const eh = read(0, is64 ? 64 : 52);
    const machine = eh.readUInt16LE(18);
    const phoff = word(eh, is64 ? 32 : 28);
    const phentsize = eh.readUInt16LE(is64 ? 54 : 42);
    const phnum = eh.readUInt16LE(is64 ? 56 : 44);

    const loads: { offset: number; vaddr: number; filesz: number }[] = [];
    let interp: string | null = null;
    let dynamic: { offset: number; filesz: number } | null = null;
    for (let i = 0; i < phnum; i++) {
      const ph = read(phoff + i * phentsize, is64 ? 56 : 32);
      const seg = { offset: word(ph, is64 ? 8 : 4), vaddr: word(ph, is64 ? 16 : 8), filesz: word(ph, is64 ? 32 : 16) };
      const type = ph.readUInt32LE(0);
      if (type === PT_LOAD) loads.push(seg);
      else if (type === PT_DYNAMIC) dynamic = seg;
      else if (type === PT_INTERP) interp = cString(read(seg.offset, seg.filesz), 0);
    }
    const info: ElfInfo = { interp, needed: [], runpath: [], class: is64 ? 64 : 32, machine };
    if (!dynamic) return info; // static binary

    const entsize = is64 ? 16 : 8;
    const dyn = read(dynamic.offset, dynamic.filesz);
    const needed: number[] = [], runpath: number[] = [], rpath: number[] = [];
    let strtab: number | null = null, strsz: number | null = null;
    for (let off = 0; off + entsize <= dyn.length; off += entsize) {
      const tag = is64 ? Number(dyn.readBigInt64LE(off)) : dyn.readInt32LE(off);
      const val = word(dyn, off + entsize / 2);
      if (tag === DT_NULL) break;
      if (tag === DT_NEEDED) needed.push(val);
      else if (tag === DT_RUNPATH) runpath.push(val);
      else if (tag === DT_RPATH) rpath.push(val);
      else if (tag === DT_STRTAB) strtab = val;
      else if (tag === DT_STRSZ) strsz = val;
    }
    const refs = [...needed, ...runpath, ...rpath];
    if (refs.length === 0) return info;
    if (strtab === null) throw new ElfError(file, 'dynamic section without DT_STRTAB');
    // DT_STRTAB is a virtual address: map it to a file offset through the PT_LOAD holding it.
    const seg = loads.find((s) => strtab! >= s.vaddr && strtab! < s.vaddr + s.filesz);
    if (!seg) throw new ElfError(file, `DT_STRTAB 0x${strtab.toString(16)} is outside every PT_LOAD segment`);
    const strOff = seg.offset + (strtab - seg.vaddr);
    const strs = read(strOff, Math.min(strsz ?? Infinity, seg.offset + seg.filesz - strOff));
    info.needed = needed.map((o) => cString(strs, o));
    info.runpath = (runpath.length > 0 ? runpath : rpath).flatMap((o) => cString(strs, o).split(':')).filter(Boolean);
    return info;
  } finally {
    closeSync(fd);
  }
}

function cString(buf: Buffer, off: number): string {
  const end = buf.indexOf(0, off);
  return buf.toString('utf8', off, end < 0 ? buf.length : end);
}

// ---------------------------------------------------------------------------------------------
// Shared-library closure

export class MissingLibraryError extends MkmaError {
  /** `neededBy` is the library that needs it, null when `binary` needs it directly. */
  constructor(readonly binary: string, readonly library: string, readonly neededBy: string | null, root: string) {
    super(`${binary} needs ${library}${neededBy ? ` (through ${neededBy})` : ''}, which is not in the image at ${root}`);
    this.name = 'MissingLibraryError';
  }
}

/**
 * Every path the initramfs needs so that `binaries` (absolute paths inside `root`) run: the
 * binaries, their interpreter and all libraries they load, transitively.
 *
 * `files` is sorted and lists symlinks as well as what they point to: with merged /usr,
 * '/lib64/ld-linux-x86-64.so.2' yields '/lib64' (symlink), '/usr/lib64/ld-linux-x86-64.so.2'
 * (symlink), '/lib' (symlink) and '/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2' (file).
 * Every entry sits in real directories only, so creating parents with mkdir -p and copying
 * each entry with its own type (lstat) reproduces all the original paths. Sorting puts a
 * symlinked directory before anything reached through it.
 *
 * Non-ELF binaries (scripts) are listed but not followed: their interpreter is the caller's
 * business. Throws MissingLibraryError when a library can't be found.
 */
export function libraryClosure(root: string, binaries: string[]): { files: string[] } {
  const files = new Set<string>();
  const keep = (r: InRootPath) => {
    for (const s of r.symlinks) files.add(s);
    files.add(r.path);
  };
  const systemDirs = [...ldSoConfDirs(root), ...defaultLibDirs(root)];

  for (const binary of binaries) {
    const bin = resolveInRoot(root, binary);
    if (!bin.exists) throw new Error(`${binary} is not in the image at ${root}`);
    keep(bin);
    const binInfo = readElfInfo(join(root, bin.path));
    if (!binInfo) continue;
    // Breadth-first like ld.so, which also reuses an already loaded soname instead of searching
    // again: a library may only be findable through the executable's RUNPATH (systemd's
    // libsystemd-core needs libsystemd-shared, both in a private dir only systemd points to).
    const loaded = new Set<string>();
    const seen = new Set([bin.path]);
    const queue: { path: string; info: ElfInfo }[] = [{ path: bin.path, info: binInfo }];
    const load = (r: InRootPath, info: ElfInfo | null) => {
      keep(r);
      if (info && !seen.has(r.path)) queue.push({ path: r.path, info });
      seen.add(r.path);
    };
    while (queue.length > 0) {
      const { path, info } = queue.shift()!;
      const neededBy = path === bin.path ? null : path;
      if (info.interp) {
        const r = resolveInRoot(root, info.interp);
        if (!r.exists) throw new MissingLibraryError(binary, info.interp, neededBy, root);
        load(r, readElfInfo(join(root, r.path)));
      }
      // RUNPATH applies to the object's own dependencies; $ORIGIN is the object's directory.
      const runpath = info.runpath
        .map((d) => d.replace(/\$\{ORIGIN\}|\$ORIGIN/g, posix.dirname(path)))
        .filter((d) => d.startsWith('/')); // relative entries are relative to the cwd at run time
      for (const soname of info.needed) {
        if (loaded.has(soname)) continue;
        const found = findLibrary(root, soname, [...runpath, ...systemDirs], info);
        if (!found) throw new MissingLibraryError(binary, soname, neededBy, root);
        loaded.add(soname);
        load(found.r, found.info);
      }
    }
  }
  return { files: [...files].sort() };
}

/** First `dir/soname` that is a regular ELF file of the same class and machine (ld.so skips others). */
function findLibrary(root: string, soname: string, dirs: string[], want: ElfInfo): { r: InRootPath; info: ElfInfo } | null {
  const candidates = soname.includes('/') ? [soname] : [...new Set(dirs)].map((d) => posix.join(d, soname));
  for (const c of candidates) {
    const r = resolveInRoot(root, c);
    if (!r.exists || !statSync(join(root, r.path)).isFile()) continue;
    const info = readElfInfo(join(root, r.path));
    if (info && info.class === want.class && info.machine === want.machine) return { r, info };
  }
  return null;
}

/** Directories from root/etc/ld.so.conf in file order, following `include` globs. */
function ldSoConfDirs(root: string): string[] {
  const dirs: string[] = [];
  const seen = new Set<string>(); // an include loop must not recurse forever
  const parse = (conf: string) => {
    const r = resolveInRoot(root, conf);
    if (!r.exists || seen.has(r.path)) return;
    seen.add(r.path);
    for (const raw of readFileSync(join(root, r.path), 'utf8').split('\n')) {
      const line = raw.replace(/#.*/, '').trim();
      const include = /^include\s+(.*)$/.exec(line);
      if (include) {
        // Relative include patterns are relative to the including file, as in ldconfig.
        for (const pat of include[1].split(/\s+/)) for (const f of globInRoot(root, posix.resolve(posix.dirname(conf), pat))) parse(f);
      } else if (line && !line.startsWith('hwcap ')) {
        dirs.push(...line.split(/[\s:,]+/).filter((d) => d.startsWith('/')));
      }
    }
  };
  parse('/etc/ld.so.conf');
  return dirs;
}

/** Sorted matches of a pattern whose wildcards (* ?) are in the last component only. */
function globInRoot(root: string, pattern: string): string[] {
  const dir = posix.dirname(pattern);
  const re = new RegExp(`^${posix.basename(pattern).replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  const r = resolveInRoot(root, dir);
  if (!r.exists) return [];
  let names: string[];
  try {
    names = readdirSync(join(root, r.path));
  } catch {
    return [];
  }
  return names.filter((n) => re.test(n) && !n.startsWith('.')).sort().map((n) => posix.join(dir, n));
}

/**
 * glibc's trusted directories for a Debian root: the multiarch triplet directories that exist
 * (found by listing, so an arm64 image works from an amd64 host), then lib64 and lib.
 */
function defaultLibDirs(root: string): string[] {
  const triplets = new Set<string>();
  for (const base of ['/lib', '/usr/lib']) {
    const r = resolveInRoot(root, base);
    if (!r.exists) continue;
    for (const e of readdirSync(join(root, r.path), { withFileTypes: true })) {
      if (/^[a-z0-9_]+-linux-[a-z0-9_]+$/.test(e.name) && (e.isDirectory() || e.isSymbolicLink())) triplets.add(e.name);
    }
  }
  const t = [...triplets].sort();
  return [...t.map((x) => `/lib/${x}`), ...t.map((x) => `/usr/lib/${x}`), '/lib64', '/usr/lib64', '/lib', '/usr/lib'];
}

// ---------------------------------------------------------------------------------------------
// Kernel modules

/** Module name as the kernel sees it: basename without .ko[.xz|.zst|.gz], '-' → '_'. */
export function moduleName(pathOrName: string): string {
  return normalizeName(basename(pathOrName).replace(/\.ko(\.(xz|zst|gz))?$/, ''));
}

/** modprobe treats '-' and '_' alike in module names and aliases. */
const normalizeName = (name: string) => name.replace(/-/g, '_');

const lines = (text: string) => text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));

/** modules.dep: relative module path → all its dependencies (transitive, as depmod writes them). */
export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const line of lines(text)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    deps.set(line.slice(0, colon).trim(), line.slice(colon + 1).split(/\s+/).filter(Boolean));
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
    return (aliases.get(n) ?? []).map((m) => byName.get(m)).filter((p): p is string => !!p).sort();
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
 * compressed one by one.
 */
export async function decompressModule(src: string, dest: string): Promise<void> {
  mkdirSync(dirname(dest), { recursive: true });
  const tool = DECOMPRESSORS[posix.extname(src)];
  if (!tool) {
    copyFileSync(src, dest);
    return;
  }
  const out = openSync(dest, 'w');
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(tool, ['-dc', src], { stdio: ['ignore', out, 'pipe'] });
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', (e) => reject(new Error(`cannot run ${tool}: ${e.message}`)));
      child.on('close', (code, signal) =>
        code === 0 ? resolve() : reject(new Error(`${tool} -dc ${src} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`)));
    });
  } catch (e) {
    rmSync(dest, { force: true }); // no half-written module for a later insmod to choke on
    throw e;
  } finally {
    closeSync(out);
  }
}
