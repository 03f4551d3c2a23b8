import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import {
  chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync,
  symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import {
  decompressModule, ElfError, libraryClosure, MissingLibraryError, moduleClosure, moduleName, parseBuiltin,
  parseDeviceAliases, parseModulesAlias, parseModulesDep, parseSoftdep, readElfInfo, resolveInRoot,
} from '../../builder/closure.js';
import { planModules } from '../../builder/initramfs.js';
import { generateInit } from '../../init/generate.js';

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'mkma-closure-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Creates root/rel with its parents; `content` a string/Buffer, or { link } for a symlink. */
function put(root: string, rel: string, content: string | Buffer | { link: string }): void {
  const p = join(root, rel);
  mkdirSync(dirname(p), { recursive: true });
  if (typeof content === 'object' && 'link' in content) symlinkSync(content.link, p);
  else writeFileSync(p, content);
}

const EM_386 = 3, EM_X86_64 = 62;

/**
 * A minimal but well-formed ELF file: one PT_LOAD mapping the whole file at 0x400000 (so
 * DT_STRTAB, a virtual address, has to be mapped back to a file offset), PT_INTERP, PT_DYNAMIC.
 */
function makeElf(o: {
  cls: 32 | 64; machine: number; interp?: string; needed?: string[]; runpath?: string[]; rpath?: string[]; bigEndian?: boolean;
}): Buffer {
  const is64 = o.cls === 64;
  const ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32, phnum = 3, entsize = is64 ? 16 : 8, base = 0x400000;
  let strs = '\0';
  const str = (s: string) => { const at = Buffer.byteLength(strs); strs += `${s}\0`; return at; };
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
    const f = join(tmp, 'elf64');
    writeFileSync(f, makeElf({ cls: 64, machine: EM_X86_64, interp: '/lib64/ld-linux-x86-64.so.2', needed: ['libz.so.1', 'libc.so.6'], runpath: ['$ORIGIN/../lib', '/opt/x'] }));
    expect(readElfInfo(f)).toEqual({
      interp: '/lib64/ld-linux-x86-64.so.2', needed: ['libz.so.1', 'libc.so.6'], runpath: ['$ORIGIN/../lib', '/opt/x'], class: 64, machine: EM_X86_64,
    });
  });

  test('32-bit', () => {
    const f = join(tmp, 'elf32');
    writeFileSync(f, makeElf({ cls: 32, machine: EM_386, interp: '/lib/ld-linux.so.2', needed: ['libc.so.6'] }));
    expect(readElfInfo(f)).toEqual({ interp: '/lib/ld-linux.so.2', needed: ['libc.so.6'], runpath: [], class: 32, machine: EM_386 });
  });

  test('DT_RPATH is used only when there is no DT_RUNPATH, as in glibc', () => {
    const f = join(tmp, 'rpath');
    writeFileSync(f, makeElf({ cls: 64, machine: EM_X86_64, needed: ['a.so'], rpath: ['/r'] }));
    expect(readElfInfo(f)!.runpath).toEqual(['/r']);
    writeFileSync(f, makeElf({ cls: 64, machine: EM_X86_64, needed: ['a.so'], rpath: ['/r'], runpath: ['/rp'] }));
    expect(readElfInfo(f)!.runpath).toEqual(['/rp']);
  });

  test('non-ELF files give null; big-endian and truncated ELF throw ElfError', () => {
    put(tmp, 'script.sh', '#!/bin/sh\necho hi\n');
    put(tmp, 'empty', '');
    expect(readElfInfo(join(tmp, 'script.sh'))).toBeNull();
    expect(readElfInfo(join(tmp, 'empty'))).toBeNull();
    writeFileSync(join(tmp, 'be'), makeElf({ cls: 64, machine: 2, bigEndian: true }));
    expect(() => readElfInfo(join(tmp, 'be'))).toThrow(/big-endian ELF is unsupported/);
    writeFileSync(join(tmp, 'trunc'), makeElf({ cls: 64, machine: EM_X86_64, needed: ['x'] }).subarray(0, 100));
    expect(() => readElfInfo(join(tmp, 'trunc'))).toThrow(ElfError);
  });

  test('agrees with readelf on real binaries of this machine', () => {
    const readelf = (f: string) => execFileSync('readelf', ['-d', '-l', '-W', f], { encoding: 'utf8' });
    for (const f of ['/usr/bin/zstd', '/usr/bin/xz', realpathSync('/bin/ls'), '/usr/bin/node', realpathSync('/lib/x86_64-linux-gnu/libc.so.6')]) {
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
    root = join(tmp, 'resolve');
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
    root = join(tmp, 'fakeroot');
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
    const r2 = join(tmp, 'fakeroot-conf');
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
    const r3 = join(tmp, 'fakeroot-nolibc');
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
    root = join(tmp, 'synthetic');
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
      '/lib', '/usr/bin/app', '/usr/lib/app/libfoo.so.1', '/usr/lib/ld-fake.so', '/usr/lib/x86_64-linux-gnu/libbar.so.2',
    ]);
    expect(libraryClosure(root, ['/usr/bin/app32']).files).toEqual(['/lib', '/usr/bin/app32', '/usr/lib/i386-linux-gnu/libbar.so.2']);
  });

  test('a soname already loaded is reused, as ld.so does, even if its own lookup would fail', () => {
    expect(libraryClosure(root, ['/usr/bin/sd']).files).toEqual([
      '/usr/bin/sd', '/usr/lib/x86_64-linux-gnu/priv/libcore.so', '/usr/lib/x86_64-linux-gnu/priv/libshared.so',
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
    expect(err).toMatchObject({ binary: '/usr/bin/broken2', library: 'libnope.so.9', neededBy: '/usr/lib/x86_64-linux-gnu/libneedsnope.so' });
    expect((err as Error).message).toBe(
      `/usr/bin/broken2 needs libnope.so.9 (through /usr/lib/x86_64-linux-gnu/libneedsnope.so), which is not in the image at ${root}`);
  });
});

// ---------------------------------------------------------------------------------------------

const MODULES_DEP = `kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/lib/crc16.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/fs/jbd2/jbd2.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.zst: kernel/drivers/char/hw_random/rng-core.ko.zst
kernel/drivers/char/hw_random/rng-core.ko.zst:
kernel/drivers/md/dm-mod.ko.gz:
kernel/fs/overlayfs/overlay.ko:
kernel/test/cyc_a.ko:
kernel/test/cyc_b.ko:
`;
const MODULES_SOFTDEP = `# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crc32c
softdep jbd2 pre: no_such_thing
softdep virtio_blk post: virtio-rng
softdep cyc_a post: cyc_b
softdep cyc_b pre: cyc_a
`;
const MODULES_BUILTIN = `kernel/drivers/block/loop.ko
kernel/fs/squashfs/squashfs.ko
`;
const MODULES_ALIAS = `# Aliases extracted from modules themselves.
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk
alias virtio:d00000002v* virtio_blk
alias fs-ext4 ext4
alias acpi*:PNP0A03:* dm_mod
`;

describe('module index parsers', () => {
  test('parseModulesDep', () => {
    const deps = parseModulesDep(MODULES_DEP);
    expect(deps.get('kernel/fs/ext4/ext4.ko.xz')).toEqual(['kernel/lib/crc16.ko.xz', 'kernel/fs/mbcache.ko.xz', 'kernel/fs/jbd2/jbd2.ko.xz']);
    expect(deps.get('kernel/lib/crc16.ko.xz')).toEqual([]);
    expect(deps.size).toBe(15);
  });

  test('parseSoftdep: pre and post, merged across lines, names normalised', () => {
    const sd = parseSoftdep('softdep foo-bar pre: a-b c post: d\nsoftdep foo_bar post: e\n# softdep x pre: y\n');
    expect([...sd]).toEqual([['foo_bar', { pre: ['a_b', 'c'], post: ['d', 'e'] }]]);
  });

  test('parseBuiltin and moduleName', () => {
    expect(parseBuiltin(MODULES_BUILTIN).map(moduleName)).toEqual(['loop', 'squashfs']);
    expect(['a/dm-mod.ko.gz', 'x.ko.zst', 'y.ko.xz', 'z.ko', 'crc32c-intel'].map(moduleName)).toEqual(['dm_mod', 'x', 'y', 'z', 'crc32c_intel']);
  });

  test('parseDeviceAliases keeps the device globs of the modules asked for', () => {
    expect([...parseDeviceAliases(MODULES_ALIAS, new Set(['virtio_blk', 'ext4']))]).toEqual([
      ['virtio_blk', ['pci:v00001AF4d00001001sv*sd*bc*sc*i*', 'virtio:d00000002v*']],
    ]);
  });

  test('parseModulesAlias keeps exact aliases only', () => {
    expect([...parseModulesAlias(MODULES_ALIAS)]).toEqual([
      ['crypto_crc32c', ['crc32c_generic', 'crc32c_intel']],
      ['crc32c', ['crc32c_generic', 'crc32c_intel']],
      ['fs_ext4', ['ext4']],
    ]);
  });
});

/** A kernel modules directory holding the index files above (no module files). */
function modulesDir(version: string): string {
  const dir = join(tmp, 'modules', version);
  put(dir, 'modules.dep', MODULES_DEP);
  put(dir, 'modules.softdep', MODULES_SOFTDEP);
  put(dir, 'modules.builtin', MODULES_BUILTIN);
  put(dir, 'modules.alias', MODULES_ALIAS);
  return dir;
}

describe('moduleClosure', () => {
  let dir: string;
  beforeAll(() => {
    dir = modulesDir('6.12.0-test');
  });

  test('load order, softdeps through aliases, built-in and missing modules', () => {
    expect(moduleClosure(dir, ['ext4', 'virtio_blk', 'loop', 'dm-mod', 'nosuch', 'ext4', 'overlay', 'LOOP'])).toEqual({
      order: [
        // ext4's `pre: crc32c`, an alias provided by two modules
        'kernel/arch/x86/crypto/crc32c-intel.ko.xz',
        'kernel/crypto/crc32c_generic.ko.xz',
        // ext4's dependencies, last listed first (jbd2's nonexistent softdep is ignored)
        'kernel/fs/jbd2/jbd2.ko.xz',
        'kernel/fs/mbcache.ko.xz',
        'kernel/lib/crc16.ko.xz',
        'kernel/fs/ext4/ext4.ko.xz',
        'kernel/drivers/virtio/virtio.ko.xz',
        'kernel/drivers/virtio/virtio_ring.ko.xz',
        'kernel/drivers/block/virtio_blk.ko.xz',
        // virtio_blk's `post: virtio-rng`, with its own dependency
        'kernel/drivers/char/hw_random/rng-core.ko.zst',
        'kernel/drivers/char/hw_random/virtio-rng.ko.zst',
        'kernel/drivers/md/dm-mod.ko.gz',
        'kernel/fs/overlayfs/overlay.ko',
      ],
      builtin: ['loop'],
      missing: ['nosuch', 'LOOP'],
    });
  });

  test('every module comes after all its modules.dep dependencies', () => {
    const deps = parseModulesDep(MODULES_DEP);
    const { order } = moduleClosure(dir, [...deps.keys()].map(moduleName).reverse());
    expect(new Set(order).size).toBe(order.length);
    expect(order.length).toBe(deps.size);
    order.forEach((m, i) => {
      for (const d of deps.get(m)!) expect(order.indexOf(d)).toBeLessThan(i);
    });
  });

  test('wanted names resolve through aliases too; an explicit alias map replaces modules.alias', () => {
    expect(moduleClosure(dir, ['crypto-crc32c']).order).toEqual(['kernel/arch/x86/crypto/crc32c-intel.ko.xz', 'kernel/crypto/crc32c_generic.ko.xz']);
    expect(moduleClosure(dir, ['ext4'], { aliases: new Map([['crc32c', ['crc32c_generic']]]) }).order[0]).toBe('kernel/crypto/crc32c_generic.ko.xz');
    expect(moduleClosure(dir, ['ext4'], { aliases: new Map() }).order[0]).toBe('kernel/fs/jbd2/jbd2.ko.xz');
  });

  test('softdep cycles terminate; optional drops missing modules', () => {
    expect(moduleClosure(dir, ['cyc_a']).order).toEqual(['kernel/test/cyc_a.ko', 'kernel/test/cyc_b.ko']);
    expect(moduleClosure(dir, ['cyc_b']).order).toEqual(['kernel/test/cyc_a.ko', 'kernel/test/cyc_b.ko']);
    expect(moduleClosure(dir, ['nosuch', 'squashfs'], { optional: true })).toEqual({ order: [], builtin: ['squashfs'], missing: [] });
  });

  test('modules.softdep, modules.builtin and modules.alias are optional files', () => {
    const bare = join(tmp, 'modules/bare');
    put(bare, 'modules.dep', MODULES_DEP);
    expect(moduleClosure(bare, ['ext4', 'loop'])).toEqual({
      order: ['kernel/fs/jbd2/jbd2.ko.xz', 'kernel/fs/mbcache.ko.xz', 'kernel/lib/crc16.ko.xz', 'kernel/fs/ext4/ext4.ko.xz'],
      builtin: [],
      missing: ['loop'],
    });
  });
});

describe('decompressModule', () => {
  const plain = Buffer.concat([Buffer.from('\x7fELF fake module\n'), Buffer.alloc(100_000, 'abc'), Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 255))]);
  let dir: string;
  beforeAll(() => {
    dir = join(tmp, 'decompress');
    put(dir, 'm.ko', plain);
    execFileSync('xz', ['-kq', join(dir, 'm.ko')]); // m.ko.xz
    execFileSync('zstd', ['-q', join(dir, 'm.ko'), '-o', join(dir, 'm.ko.zst')]);
    writeFileSync(join(dir, 'm.ko.gz'), execFileSync('gzip', ['-c', join(dir, 'm.ko')]));
  });

  test.each(['m.ko.xz', 'm.ko.zst', 'm.ko.gz', 'm.ko'])('%s round-trips to the plain module', async (src) => {
    const dest = join(dir, 'out', src, 'm.ko'); // parents are created
    await decompressModule(join(dir, src), dest);
    expect(readFileSync(dest).equals(plain)).toBe(true);
  });

  test('a corrupt module rejects and leaves no file behind', async () => {
    put(dir, 'bad.ko.xz', 'not xz at all');
    const dest = join(dir, 'out/bad.ko');
    await expect(decompressModule(join(dir, 'bad.ko.xz'), dest)).rejects.toThrow(/xz -dc .*bad\.ko\.xz failed/);
    expect(existsSync(dest)).toBe(false);
  });
});

describe('storage drivers by hardware (init: match_storage)', () => {
  let dir: string;
  beforeAll(() => {
    dir = modulesDir('6.12.0-match');
  });

  test('planModules: each storage module with device aliases, with its dependencies first', () => {
    const plan = planModules({ version: '6.12.0-match', image: '/nonexistent', modulesDir: dir },
      { storage: ['virtio_blk', 'dm-mod'], filesystems: { ext4: ['ext4'] }, overlay: ['overlay'] }, []);
    expect(plan.groups.storageByDevice).toEqual([
      { patterns: ['pci:v00001AF4d00001001sv*sd*bc*sc*i*', 'virtio:d00000002v*'], load: ['virtio', 'virtio_ring', 'virtio_blk', 'rng_core', 'virtio_rng'] },
    ]);
  });

  test('the generated match_storage picks the drivers of the devices given, under busybox', () => {
    const init = generateInit({
      modules: {
        storage: ['virtio_blk', 'nvme'], filesystems: {}, overlay: [],
        storageByDevice: [
          { patterns: ['virtio:d00000002v*'], load: ['virtio_blk'] },
          { patterns: ['pci:v*d*sv*sd*bc01sc08i02*', 'odd:a b(c)|*'], load: ['nvme_core', 'nvme'] },
        ],
      },
      defaultRamSize: '50%', deviceTimeoutSec: 30, version: 't',
    });
    const fn = /^match_storage\(\) \{\n[\s\S]*?\n\}$/m.exec(init)![0];
    const run = (...aliases: string[]) => execFileSync('busybox', ['sh', '-c',
      `${fn}\nMKMA_MATCHED=''\nfor a in "$@"; do match_storage "$a"; done\necho "[$MKMA_MATCHED]"`, 'sh', ...aliases], { encoding: 'utf8' }).trim();
    expect(run('virtio:d00000002v00001AF4')).toBe('[,virtio_blk]');
    expect(run('pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01', 'virtio:d00000001v00001AF4')).toBe('[]');
    expect(run('pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02', 'virtio:d00000002v00001AF4')).toBe('[,nvme_core nvme,virtio_blk]');
    expect(run('odd:a b(c)|x')).toBe('[,nvme_core nvme]');
  });

  test('start_chains loads each chain once, in the background, in its own order', () => {
    const init = generateInit({ modules: { storage: [], filesystems: {}, overlay: [] }, defaultRamSize: '50%', deviceTimeoutSec: 30, version: 't' });
    const fn = /^start_chains\(\) \{\n[\s\S]*?\n\}$/m.exec(init)![0];
    const out = execFileSync('busybox', ['sh', '-c', [
      // a stand-in for load_modules: one line per chain, its modules in order
      'load_modules() { echo "$*"; }',
      fn,
      "MKMA_STARTED=','",
      "start_chains ',scsi_common scsi_mod ahci,virtio_blk'",
      "start_chains ',virtio_blk,scsi_common scsi_mod virtio_scsi'",
      'wait',
      'echo "started: $MKMA_STARTED"',
    ].join('\n')], { encoding: 'utf8' }).trim().split('\n');
    expect(out.pop()).toBe('started: ,scsi_common scsi_mod ahci,virtio_blk,scsi_common scsi_mod virtio_scsi,');
    expect(out.sort()).toEqual(['scsi_common scsi_mod ahci', 'scsi_common scsi_mod virtio_scsi', 'virtio_blk']);
  });
});
