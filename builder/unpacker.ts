// mkma-unpack, the initramfs's fast extractor (init/unpack/mkma-unpack.c): compiled on the
// host into a static binary (natively, or with Debian's cross compiler for a foreign image),
// cached. Optional by design: when it cannot be built (no compiler, no static libzstd) the
// caller warns, naming what to install, and the build emits the init's busybox variant of the
// layer code (init/generate.ts, Extractor 'busybox').
//
// The C source has no constants of its own: the boot contract (lib/contract.ts) is generated
// into a header (init/generate.ts: contractHeader) and compiled in with `-include`.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BOOT_CONTRACT, contractHeader, type BootContract } from '../init/generate.js';
import { runSync, type RunResult } from '../lib/run.js';
import { readElfInfo } from './elf.js';
import { hostArch } from '../lib/arch.js';
import { FOREIGN_ARCHES } from './foreign.js';

/** Debian packages the host needs to build it (gcc, the static libc, the static libzstd). */
export const UNPACKER_HOST_PACKAGES = ['gcc', 'libc6-dev', 'libzstd-dev'];

/** Where the initramfs carries it: on the init's PATH. */
export const UNPACKER_INITRAMFS_PATH = '/usr/bin/mkma-unpack';

export const UNPACKER_CFLAGS = ['-O2', '-std=gnu11', '-Wall', '-static'];
const UNPACKER_LIBS = ['-lzstd', '-lpthread'];

export interface UnpackerResult {
  /** the static binary, or null when it could not be built (see reason) */
  path: string | null;
  reason?: string;
}

/** init/unpack/mkma-unpack.c, from both the sources (tests) and dist/builder (installed). */
export function unpackerSource(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const rel = path.join('init', 'unpack', 'mkma-unpack.c');
  for (const candidate of [path.join(here, '..', rel), path.join(here, '..', '..', rel)]) {
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error(`${rel} not found near ${here}`);
}

/** A command that may fail or be missing: its result, never an exception. */
function tryRun(cmd: string, args: string[]): { ok: boolean; out: string; err: string } {
  let r: RunResult;
  try {
    r = runSync(cmd, args, { allowFailure: true });
  } catch (e) {
    return { ok: false, out: '', err: (e as Error).message };
  }
  return { ok: r.ok, out: r.stdout.trim(), err: (r.stderr || (r.signal ? `killed by ${r.signal}` : '')).trim() };
}

const lastLine = (s: string) => s.split('\n').filter(Boolean).slice(-3).join(' / ');

/**
 * Writes the contract header into dir (named by its content, so that concurrent builds and
 * different contracts never share one) and returns its path.
 */
export function writeContractHeader(dir: string, contract: BootContract = BOOT_CONTRACT): string {
  const text = contractHeader(contract);
  const file = path.join(dir, `mkma-contract-${createHash('sha256').update(text).digest('hex').slice(0, 12)}.h`);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(dir, { recursive: true });
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  }
  return file;
}

/** How mkma-unpack is compiled for an architecture: the compiler and what provides it and its libraries. */
export interface UnpackerToolchain {
  cc: string;
  /** Debian packages that provide the compiler, the static libc and the static libzstd */
  packages: string[];
  /** a foreign target: the ELF machine the binary must have (readElfInfo's e_machine) */
  machine?: number;
}

/**
 * The host's gcc for a native build. For a foreign image, Debian's cross compiler
 * (gcc-aarch64-linux-gnu, which brings the static libc as libc6-dev-arm64-cross) with the
 * target's static libzstd from Debian's multiarch package (libzstd-dev:arm64, after
 * `dpkg --add-architecture arm64`), which the cross linker finds on its multiarch path
 * /usr/lib/aarch64-linux-gnu. Chosen over building zstd's decoder from source (mkma would then
 * carry and update a copy of zstd) and over compiling inside the target chroot (gcc and
 * libzstd-dev would have to be installed into the image, or a second tree bootstrapped, and
 * compiled under qemu-user). The result is checked like the native one (docs/arm64-research.md:
 * a static cross build extracts the same tree as the native one).
 */
export function unpackerToolchain(arch: string, host: string): UnpackerToolchain | null {
  if (arch === host) return { cc: 'gcc', packages: UNPACKER_HOST_PACKAGES };
  const f = FOREIGN_ARCHES[arch];
  if (!f) return null;
  return {
    cc: `${f.triplet}-gcc`,
    packages: [`gcc-${f.triplet.replace(/_/g, '-')}`, `libzstd-dev:${arch}`],
    machine: f.elfMachine,
  };
}

/**
 * Builds (or takes from cacheDir) the static mkma-unpack for the image's architecture `arch`
 * (a Debian architecture name, e.g. amd64; default: the host's, for use on this machine):
 * natively or with Debian's cross compiler (unpackerToolchain). `contract` is for tests that
 * change the boot contract; `host` for tests that pretend another host.
 */
export function buildUnpacker(opts: { cacheDir: string; arch?: string; contract?: BootContract; host?: string }): UnpackerResult {
  const host = opts.host ?? hostArch();
  const arch = opts.arch ?? host;
  const tc = unpackerToolchain(arch, host);
  if (!tc) return { path: null, reason: `mkma cannot compile mkma-unpack for ${arch} on this ${host} host` };
  const foreign = tc.machine !== undefined ? ` for ${arch}` : '';
  const multiarch = foreign ? `, after dpkg --add-architecture ${arch} && apt-get update` : '';
  const install = (what: string): UnpackerResult => ({
    path: null,
    reason: `${what} (apt-get install ${tc.packages.join(' ')}${multiarch})`,
  });
  const gcc = tryRun(tc.cc, ['-dumpfullversion', '-dumpversion']);
  if (!gcc.ok) return install(`${tc.cc} is not available: ${gcc.err || 'failed'}`);
  const gccVersion = (tryRun(tc.cc, ['--version']).out.split('\n')[0] || gcc.out).trim();
  for (const lib of ['libzstd.a', 'libc.a']) {
    // gcc prints the bare name back when it cannot find the file
    const found = tryRun(tc.cc, [`-print-file-name=${lib}`]).out;
    if (!path.isAbsolute(found) || !fs.existsSync(found)) return install(`${lib}${foreign} is not installed`);
  }

  let source: string;
  try {
    source = unpackerSource();
  } catch (e) {
    return { path: null, reason: (e as Error).message };
  }
  const header = contractHeader(opts.contract);
  const key = createHash('sha256')
    .update(fs.readFileSync(source))
    .update(`\0${header}\0${gccVersion}\0${arch}\0${UNPACKER_CFLAGS.join(' ')} ${UNPACKER_LIBS.join(' ')}`)
    .digest('hex')
    .slice(0, 16);
  const out = path.join(opts.cacheDir, `mkma-unpack-${arch}-${key}`);
  if (isExecutable(out)) return { path: out };

  fs.mkdirSync(opts.cacheDir, { recursive: true });
  const headerFile = writeContractHeader(opts.cacheDir, opts.contract);
  const tmp = `${out}.tmp-${process.pid}`;
  const cc = tryRun(tc.cc, [...UNPACKER_CFLAGS, '-include', headerFile, '-o', tmp, source, ...UNPACKER_LIBS]);
  if (!cc.ok) {
    fs.rmSync(tmp, { force: true });
    return { path: null, reason: `${tc.cc} failed to build mkma-unpack: ${lastLine(cc.err) || 'no message'}` };
  }
  const bad = checkBinary(tmp, tc);
  if (bad) {
    fs.rmSync(tmp, { force: true });
    return { path: null, reason: bad };
  }
  fs.renameSync(tmp, out);
  return { path: out };
}

/**
 * The freshly built binary must be a static executable of the target and start: natively, or
 * for a foreign target through qemu-user (binfmt_misc, which the foreign bootstrap required).
 */
function checkBinary(file: string, tc: UnpackerToolchain): string | null {
  const elf = readElfInfo(file);
  if (!elf || elf.interp !== null) return `the freshly built mkma-unpack is not a static executable (${tc.cc})`;
  if (tc.machine !== undefined && elf.machine !== tc.machine)
    return `the freshly built mkma-unpack is for ELF machine ${elf.machine}, not ${tc.machine} (${tc.cc})`;
  const probe = tryRun(file, ['-h']);
  if (!probe.ok || !probe.out.includes('usage: mkma-unpack'))
    return `the freshly built mkma-unpack does not run${tc.machine !== undefined ? ' under qemu-user' : ''}: ${probe.err || probe.out || 'no output'}`;
  return null;
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}
