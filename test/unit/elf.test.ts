// The ELF reader and the shared-library closure (builder/elf.ts), and in-root path resolution
// (builder/root-path.ts), against synthetic ELF files, fake roots and this machine's own binaries.
import { beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ElfError, libraryClosure, MissingLibraryError, readElfInfo } from '../../builder/elf.js';
import { resolveInRoot } from '../../builder/root-path.js';
import { put, useTempDir } from '../helpers/files.js';

const tempDir = useTempDir('elf');

const EM_386 = 3,
  EM_X86_64 = 62;

/**
 * A minimal but well-formed ELF file: one PT_LOAD mapping the whole file at 0x400000 (so
 * DT_STRTAB, a virtual address, has to be mapped back to a file offset), PT_INTERP, PT_DYNAMIC.
 */
function makeElf(o: {
  cls: 32 | 64;
  machine: number;
  interp?: string;
  needed?: string[];
  runpath?: string[];
  rpath?: string[];
  bigEndian?: boolean;
}): Buffer {
  const is64 = o.cls === 64;
  const ehsize = is64 ? 64 : 52,
    phentsize = is64 ? 56 : 32,
    phnum = 3,
    entsize = is64 ? 16 : 8,
    base = 0x400000;
  let strs = '\0';
  const str = (s: string) => {
    const at = Buffer.byteLength(strs);
    strs += `${s}\0`;
    return at;
  };
  const dyn: [number, number][] = (o.needed ?? []).map((n) => [1, str(n)]);
  if (o.runpath) dyn.push([29, str(o.runpath.join(':'))]);
  if (o.rpath) dyn.push([15, str(o.rpath.join(':'))]);
  const interpOff = ehsize + phnum * phentsize;
  const interp = Buffer.from(`${o.interp ?? ''}\0`);
  const strOff = interpOff + interp.length;
  const strBuf = Buffer.from(strs);
  const dynOff = Math.ceil((strOff + strBuf.length) / 8) * 8;
  dyn.push([5, base + strOff], [10, strBuf.length], [0, 0]);
  const total = dynOff + dyn.length * entsize;
  const b = Buffer.alloc(total);
  const word = (at: number, v: number) => (is64 ? b.writeBigUInt64LE(BigInt(v), at) : b.writeUInt32LE(v, at));
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = is64 ? 2 : 1;
  b[5] = o.bigEndian ? 2 : 1;
  b[6] = 1;
  b.writeUInt16LE(3, 16); // ET_DYN
  b.writeUInt16LE(o.machine, 18);
  b.writeUInt32LE(1, 20);
  word(is64 ? 32 : 28, ehsize);
  b.writeUInt16LE(ehsize, is64 ? 52 : 40);
  b.writeUInt16LE(phentsize, is64 ? 54 : 42);
  b.writeUInt16LE(phnum, is64 ? 56 : 44);
  const ph = (i: number, type: number, offset: number, size: number) => {
    const at = ehsize + i * phentsize;
    b.writeUInt32LE(type, at);
    word(at + (is64 ? 8 : 4), offset);
    word(at + (is64 ? 16 : 8), base + offset);
    word(at + (is64 ? 24 : 12), base + offset);
    word(at + (is64 ? 32 : 16), size);
    word(at + (is64 ? 40 : 20), size);
  };
  ph(0, 1, 0, total);
  if (o.interp) ph(1, 3, interpOff, interp.length);
  else ph(1, 6, ehsize, phnum * phentsize); // PT_PHDR, ignored
  ph(2, 2, dynOff, dyn.length * entsize);
  interp.copy(b, interpOff);
  strBuf.copy(b, strOff);
  dyn.forEach(([tag, val], i) => {
    word(dynOff + i * entsize, tag);
    word(dynOff + i * entsize + entsize / 2, val);
  });
  return b;
}

describe('readElfInfo', () => {
  test('64-bit: interp, needed in order, RUNPATH split on colons', () => {
    const f = join(tempDir(), 'elf64');
    writeFileSync(
      f,
      makeElf({
        cls: 64,
        machine: EM_X86_64,
        interp: '/lib64/ld-linux-x86-64.so.2',
        needed: ['libz.so.1', 'libc.so.6'],
        runpath: ['$ORIGIN/../lib', '/opt/x'],
      }),
    );
    expect(readElfInfo(f)).toEqual({
      interp: '/lib64/ld-linux-x86-64.so.2',
      needed: ['libz.so.1', 'libc.so.6'],
      runpath: ['$ORIGIN/../lib', '/opt/x'],
      class: 64,
      machine: EM_X86_64,
    });
  });

  test('32-bit', () => {
    const f = join(tempDir(), 'elf32');
    writeFileSync(f, makeElf({ cls: 32, machine: EM_386, interp: '/lib/ld-linux.so.2', needed: ['libc.so.6'] }));
    expect(readElfInfo(f)).toEqual({ interp: '/lib/ld-linux.so.2', needed: ['libc.so.6'], runpath: [], class: 32, machine: EM_386 });
  });

  test('DT_RPATH is used only when there is no DT_RUNPATH, as in glibc', () => {
    const f = join(tempDir(), 'rpath');
    writeFileSync(f, makeElf({ cls: 64, machine: EM_X86_64, needed: ['a.so'], rpath: ['/r'] }));
    expect(readElfInfo(f)!.runpath).toEqual(['/r']);
    writeFileSync(f, makeElf({ cls: 64, machine: EM_X86_64, needed: ['a.so'], rpath: ['/r'], runpath: ['/rp'] }));
    expect(readElfInfo(f)!.runpath).toEqual(['/rp']);
  });

  test('non-ELF files give null; big-endian and truncated ELF throw ElfError', () => {
    put(tempDir(), 'script.sh', '#!/bin/sh\necho hi\n');
    put(tempDir(), 'empty', '');
    expect(readElfInfo(join(tempDir(), 'script.sh'))).toBeNull();
    expect(readElfInfo(join(tempDir(), 'empty'))).toBeNull();
    writeFileSync(join(tempDir(), 'be'), makeElf({ cls: 64, machine: 2, bigEndian: true }));
    expect(() => readElfInfo(join(tempDir(), 'be'))).toThrow(/big-endian ELF is unsupported/);
    writeFileSync(join(tempDir(), 'trunc'), makeElf({ cls: 64, machine: EM_X86_64, needed: ['x'] }).subarray(0, 100));
    expect(() => readElfInfo(join(tempDir(), 'trunc'))).toThrow(ElfError);
  });

  test('agrees with readelf on real binaries of this machine', () => {
    const readelf = (f: string) => execFileSync('readelf', ['-d', '-l', '-W', f], { encoding: 'utf8' });
    for (const f of [
      '/usr/bin/zstd',
      '/usr/bin/xz',
      realpathSync('/bin/ls'),
      '/usr/bin/node',
      realpathSync('/lib/x86_64-linux-gnu/libc.so.6'),
    ]) {
      if (!existsSync(f)) continue;
      const out = readelf(f);
      const info = readElfInfo(f)!;
      expect(info.needed).toEqual([...out.matchAll(/\(NEEDED\)\s+Shared library: \[(.*)\]/g)].map((m) => m[1]));
      expect(info.interp).toBe(/Requesting program interpreter: (.*)\]/.exec(out)?.[1] ?? null);
      expect(info.class).toBe(64);
    }
    // static-pie: a dynamic section, but nothing needed
    if (existsSync('/sbin/ldconfig')) expect(readElfInfo(realpathSync('/sbin/ldconfig'))).toMatchObject({ interp: null, needed: [] });
  });
});

describe('resolveInRoot', () => {
  let root: string;
  beforeAll(() => {
    root = join(tempDir(), 'resolve');
    put(root, 'usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', 'ld');
    put(root, 'lib', { link: 'usr/lib' });
    put(root, 'lib64', { link: 'usr/lib64' });
    // absolute target: must land in root/usr/lib/..., never in the host's /usr/lib
    put(root, 'usr/lib64/ld-linux-x86-64.so.2', { link: '/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2' });
    put(root, 'usr/bin/up', { link: '../../../../../etc' });
    put(root, 'loop/a', { link: 'b' });
    put(root, 'loop/b', { link: 'a' });
  });

  test('follows relative and absolute links inside the root, recording each symlink', () => {
    expect(resolveInRoot(root, '/lib64/ld-linux-x86-64.so.2')).toEqual({
      path: '/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2',
      symlinks: ['/lib64', '/usr/lib64/ld-linux-x86-64.so.2', '/lib'],
      exists: true,
    });
  });

  test('.. and ../ targets stop at the root', () => {
    expect(resolveInRoot(root, '/../../usr/./lib/../lib')).toEqual({ path: '/usr/lib', symlinks: [], exists: true });
    expect(resolveInRoot(root, '/usr/bin/up/passwd')).toMatchObject({ path: '/etc/passwd', exists: false });
    expect(resolveInRoot(root, '/')).toEqual({ path: '/', symlinks: [], exists: true });
  });

  test('missing paths resolve lexically; loops throw', () => {
    expect(resolveInRoot(root, '/lib/nope/x')).toEqual({ path: '/usr/lib/nope/x', symlinks: ['/lib'], exists: false });
    expect(() => resolveInRoot(root, '/loop/a')).toThrow(/too many levels of symbolic links/);
  });
});

/** ldd's libraries + interpreter for a binary, as real paths. */
function lddFiles(bin: string): string[] {
  const out = execFileSync('ldd', [bin], { encoding: 'utf8' });
  return [...out.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)].map((m) => realpathSync(m[1]));
}

describe('libraryClosure on this machine (root /)', () => {
  const bins = ['/usr/bin/zstd', '/bin/ls', '/usr/bin/node', '/usr/bin/xz'].filter((b) => existsSync(b));

  test.each(bins)('%s: the real files are exactly the binary + what ldd loads', (bin) => {
    const { files } = libraryClosure('/', [bin]);
    const real = files.filter((f) => lstatSync(f).isFile());
    expect(real).toEqual([...new Set([realpathSync(bin), ...lddFiles(bin)])].sort());
    for (const f of files) {
      // each entry lives in real directories, so mkdir -p + copy-with-type reproduces it
      expect(realpathSync(dirname(f))).toBe(dirname(f));
      // and each symlink's target is in the list too (or is a directory)
      if (lstatSync(f).isSymbolicLink()) expect(files.includes(realpathSync(f)) || lstatSync(realpathSync(f)).isDirectory()).toBe(true);
    }
    // the interpreter path the kernel opens is reproduced: every symlink on its way is listed
    const interp = resolveInRoot('/', readElfInfo(bin)!.interp!);
    expect(files).toEqual(expect.arrayContaining([...interp.symlinks, interp.path]));
  });

  test('a path through the /bin symlink lists the symlink', () => {
    if (!lstatSync('/bin').isSymbolicLink()) return;
    expect(libraryClosure('/', ['/bin/ls']).files).toContain('/bin');
  });
});

describe('libraryClosure in a fake root', () => {
  const bin = '/usr/bin/zstd';
  let root: string;
  let libs: { soname: string; real: string }[];
  beforeAll(() => {
    root = join(tempDir(), 'fakeroot');
    put(root, 'usr/bin/zstd', readFileSync(bin));
    put(root, 'bin', { link: 'usr/bin' });
    put(root, 'lib', { link: 'usr/lib' });
    put(root, 'lib64', { link: 'usr/lib64' });
    put(root, 'usr/lib64/ld-linux-x86-64.so.2', { link: '/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2' });
    const out = execFileSync('ldd', [bin], { encoding: 'utf8' });
    libs = [...out.matchAll(/^\s*(\S+) => (\/\S+)/gm)].map((m) => ({ soname: m[1], real: realpathSync(m[2]) }));
    for (const { soname, real } of libs) {
      put(root, `usr/lib/x86_64-linux-gnu/${basename(real)}`, readFileSync(real));
      if (basename(real) !== soname) put(root, `usr/lib/x86_64-linux-gnu/${soname}`, { link: basename(real) });
    }
    put(root, 'usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', readFileSync(realpathSync('/lib64/ld-linux-x86-64.so.2')));
  });

  test('absolute symlinks are resolved inside the root; symlinks and targets are all listed', () => {
    const { files } = libraryClosure(root, ['/bin/zstd']);
    const t = '/usr/lib/x86_64-linux-gnu';
    const expected = ['/bin', '/lib', '/lib64', '/usr/bin/zstd', '/usr/lib64/ld-linux-x86-64.so.2', `${t}/ld-linux-x86-64.so.2`];
    for (const { soname, real } of libs) expected.push(`${t}/${soname}`, `${t}/${basename(real)}`);
    expect(files).toEqual([...new Set(expected)].sort());
    for (const f of files) expect(lstatSync(join(root, f))).toBeTruthy();
  });

  test('ld.so.conf directories (with relative include globs) come before the triplet dirs', () => {
    const r2 = join(tempDir(), 'fakeroot-conf');
    execFileSync('cp', ['-a', root, r2]);
    put(r2, 'etc/ld.so.conf', '# comment\ninclude ld.so.conf.d/*.conf\n');
    put(r2, 'etc/ld.so.conf.d/a.conf', '/opt/a/lib  # trailing comment\n');
    put(r2, 'etc/ld.so.conf.d/b.txt', '/opt/ignored\n');
    put(r2, 'opt/a/lib/libc.so.6', readFileSync(join(root, 'usr/lib/x86_64-linux-gnu/libc.so.6')));
    const { files } = libraryClosure(r2, ['/usr/bin/zstd']);
    expect(files).toContain('/opt/a/lib/libc.so.6');
    expect(files).not.toContain('/usr/lib/x86_64-linux-gnu/libc.so.6');
  });

  test('a library missing from the root is an error even if the host has it', () => {
    const r3 = join(tempDir(), 'fakeroot-nolibc');
    execFileSync('cp', ['-a', root, r3]);
    rmSync(join(r3, 'usr/lib/x86_64-linux-gnu/libc.so.6'));
    expect(() => libraryClosure(r3, ['/bin/zstd'])).toThrow(MissingLibraryError);
    expect(() => libraryClosure(r3, ['/bin/zstd'])).toThrow('/bin/zstd needs libc.so.6');
    expect(() => libraryClosure(r3, ['/bin/nothere'])).toThrow(/\/bin\/nothere is not in the image/);
  });
});

describe('libraryClosure with synthetic ELF files', () => {
  let root: string;
  beforeAll(() => {
    root = join(tempDir(), 'synthetic');
    const elf64 = (o: { interp?: string; needed?: string[]; runpath?: string[] } = {}) => makeElf({ cls: 64, machine: EM_X86_64, ...o });
    put(root, 'lib', { link: 'usr/lib' });
    put(root, 'usr/lib/ld-fake.so', elf64());
    put(root, 'usr/bin/app', elf64({ interp: '/lib/ld-fake.so', needed: ['libfoo.so.1', 'libbar.so.2'], runpath: ['$ORIGIN/../lib/app'] }));
    put(root, 'usr/lib/app/libfoo.so.1', elf64({ needed: ['libbar.so.2'] }));
    put(root, 'usr/lib/libfoo.so.1', elf64()); // loses to RUNPATH
    put(root, 'usr/lib/i386-linux-gnu/libbar.so.2', makeElf({ cls: 32, machine: EM_386 })); // wrong class for app
    put(root, 'usr/lib/x86_64-linux-gnu/libbar.so.2', elf64());
    put(root, 'usr/bin/app32', makeElf({ cls: 32, machine: EM_386, needed: ['libbar.so.2'] }));
    put(root, 'usr/bin/broken', elf64({ needed: ['libfoo.so.1'] }));
    put(root, 'usr/lib/x86_64-linux-gnu/libneedsnope.so', elf64({ needed: ['libnope.so.9'] }));
    put(root, 'usr/bin/broken2', elf64({ needed: ['libneedsnope.so'] }));
    // systemd's layout: both private libraries only reachable through the executable's RUNPATH
    put(root, 'usr/bin/sd', elf64({ needed: ['libcore.so', 'libshared.so'], runpath: ['/usr/lib/x86_64-linux-gnu/priv'] }));
    put(root, 'usr/lib/x86_64-linux-gnu/priv/libcore.so', elf64({ needed: ['libshared.so'] }));
    put(root, 'usr/lib/x86_64-linux-gnu/priv/libshared.so', elf64());
    put(root, 'usr/bin/hello.sh', '#!/bin/sh\necho hello\n');
    chmodSync(join(root, 'usr/bin/hello.sh'), 0o755);
  });

  test('RUNPATH with $ORIGIN, then system dirs; libraries of another class/machine are skipped', () => {
    expect(libraryClosure(root, ['/usr/bin/app']).files).toEqual([
      '/lib',
      '/usr/bin/app',
      '/usr/lib/app/libfoo.so.1',
      '/usr/lib/ld-fake.so',
      '/usr/lib/x86_64-linux-gnu/libbar.so.2',
    ]);
    expect(libraryClosure(root, ['/usr/bin/app32']).files).toEqual(['/lib', '/usr/bin/app32', '/usr/lib/i386-linux-gnu/libbar.so.2']);
  });

  test('a soname already loaded is reused, as ld.so does, even if its own lookup would fail', () => {
    expect(libraryClosure(root, ['/usr/bin/sd']).files).toEqual([
      '/usr/bin/sd',
      '/usr/lib/x86_64-linux-gnu/priv/libcore.so',
      '/usr/lib/x86_64-linux-gnu/priv/libshared.so',
    ]);
  });

  test('non-ELF binaries are listed as they are', () => {
    expect(libraryClosure(root, ['/usr/bin/hello.sh']).files).toEqual(['/usr/bin/hello.sh']);
  });

  test('errors name the binary, the library and the library needing it', () => {
    // RUNPATH only applies to app's own dependencies: without it libfoo.so.1 comes from /usr/lib
    expect(libraryClosure(root, ['/usr/bin/broken']).files).toContain('/usr/lib/libfoo.so.1');
    let err: unknown;
    try {
      libraryClosure(root, ['/usr/bin/broken2']);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MissingLibraryError);
    expect(err).toMatchObject({
      binary: '/usr/bin/broken2',
      library: 'libnope.so.9',
      neededBy: '/usr/lib/x86_64-linux-gnu/libneedsnope.so',
    });
    expect((err as Error).message).toBe(
      `/usr/bin/broken2 needs libnope.so.9 (through /usr/lib/x86_64-linux-gnu/libneedsnope.so), which is not in the image at ${root}`,
    );
  });
});

// ---------------------------------------------------------------------------------------------
