// The shared libraries a binary needs, read from the image's own files: the ELF headers
// (PT_INTERP, DT_NEEDED, DT_RUNPATH) and the image's ld.so configuration, resolved as ld.so
// would inside the image. Nothing from the image is run (no chroot ldd), so a foreign-
// architecture image works the same as a native one and nothing of the host's / leaks in.
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { join, posix } from 'node:path';
import { MkmaError } from '../lib/errors.js';
import { resolveInRoot, type InRootPath } from './root-path.js';

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
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'ElfError';
  }
}

const PT_LOAD = 1,
  PT_DYNAMIC = 2,
  PT_INTERP = 3;
const DT_NULL = 0,
  DT_NEEDED = 1,
  DT_STRTAB = 5,
  DT_STRSZ = 10,
  DT_RPATH = 15,
  DT_RUNPATH = 29;

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
    const needed: number[] = [],
      runpath: number[] = [],
      rpath: number[] = [];
    let strtab: number | null = null,
      strsz: number | null = null;
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
  constructor(
    readonly binary: string,
    readonly library: string,
    readonly neededBy: string | null,
    root: string,
  ) {
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
    if (!bin.exists) throw new MkmaError(`${binary} is not in the image at ${root}`);
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
      const runpath = info.runpath.map((d) => d.replace(/\$\{ORIGIN\}|\$ORIGIN/g, posix.dirname(path))).filter((d) => d.startsWith('/')); // relative entries are relative to the cwd at run time
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
  const re = new RegExp(
    `^${posix
      .basename(pattern)
      .replace(/[.+^${}()|\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
  const r = resolveInRoot(root, dir);
  if (!r.exists) return [];
  let names: string[];
  try {
    names = readdirSync(join(root, r.path));
  } catch {
    return [];
  }
  return names
    .filter((n) => re.test(n) && !n.startsWith('.'))
    .sort()
    .map((n) => posix.join(dir, n));
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
