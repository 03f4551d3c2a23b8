// mkma-unpack, the initramfs's fast extractor (init/unpack/mkma-unpack.c): compiled on the
// host into a static binary, cached. Optional by design: when it cannot be built (another
// architecture, no compiler, no static libzstd) the caller warns and the build emits the
// init's busybox variant of the layer code (init/generate.ts, Extractor 'busybox').
//
// The C source has no constants of its own: the boot contract (lib/contract.ts) is generated
// into a header (init/generate.ts: contractHeader) and compiled in with `-include`.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BOOT_CONTRACT, contractHeader, type BootContract } from '../init/generate.js';
import { runSync, type RunResult } from '../lib/run.js';

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

/**
 * Builds (or takes from cacheDir) the static mkma-unpack for the image's architecture `arch`
 * (a Debian architecture name, e.g. amd64; default: the host's, for use on this machine).
 * Only native builds: a cross compiler and a foreign libzstd.a are not worth it for an
 * optional speed-up. `contract` is for tests that change the boot contract.
 */
export function buildUnpacker(opts: { cacheDir: string; arch?: string; contract?: BootContract }): UnpackerResult {
  const dpkg = tryRun('dpkg', ['--print-architecture']);
  if (!dpkg.ok) return { path: null, reason: `cannot tell the host architecture (dpkg --print-architecture: ${dpkg.err || 'failed'})` };
  const arch = opts.arch ?? dpkg.out;
  if (dpkg.out !== arch) {
    return { path: null, reason: `the image is ${arch} but the host is ${dpkg.out} (mkma-unpack is only built natively)` };
  }
  const gcc = tryRun('gcc', ['-dumpfullversion', '-dumpversion']);
  if (!gcc.ok)
    return { path: null, reason: `gcc is not available (${gcc.err || 'failed'}; apt-get install ${UNPACKER_HOST_PACKAGES.join(' ')})` };
  const gccVersion = (tryRun('gcc', ['--version']).out.split('\n')[0] || gcc.out).trim();
  for (const lib of ['libzstd.a', 'libc.a']) {
    // gcc prints the bare name back when it cannot find the file
    const found = tryRun('gcc', [`-print-file-name=${lib}`]).out;
    if (!path.isAbsolute(found) || !fs.existsSync(found)) {
      return { path: null, reason: `${lib} is not installed (apt-get install ${UNPACKER_HOST_PACKAGES.join(' ')})` };
    }
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
  const cc = tryRun('gcc', [...UNPACKER_CFLAGS, '-include', headerFile, '-o', tmp, source, ...UNPACKER_LIBS]);
  if (!cc.ok) {
    fs.rmSync(tmp, { force: true });
    return { path: null, reason: `gcc failed to build mkma-unpack: ${lastLine(cc.err) || 'no message'}` };
  }
  // A quick sanity run: the binary must start and know its usage.
  const probe = tryRun(tmp, ['-h']);
  if (!probe.ok || !probe.out.includes('usage: mkma-unpack')) {
    fs.rmSync(tmp, { force: true });
    return { path: null, reason: `the freshly built mkma-unpack does not run: ${probe.err || probe.out || 'no output'}` };
  }
  fs.renameSync(tmp, out);
  return { path: out };
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}
