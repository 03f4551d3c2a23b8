// mkma-unpack, the initramfs's fast extractor (init/unpack/mkma-unpack.c): compiled on the
// host into a static binary, cached. Optional by design: when it cannot be built (another
// architecture, no compiler, no static libzstd) the caller warns and the init falls back to
// `zstd -dc | busybox cpio -i` (init/templates/layer.sh: extract()).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Debian packages the host needs to build it (gcc, the static libc, the static libzstd). */
export const UNPACKER_HOST_PACKAGES = ['gcc', 'libc6-dev', 'libzstd-dev'];

/** Where the initramfs carries it: on the init's PATH, found with `command -v mkma-unpack`. */
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

function run(cmd: string, args: string[]): { ok: boolean; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  if (r.error) return { ok: false, out: '', err: (r.error as NodeJS.ErrnoException).code === 'ENOENT' ? `${cmd} not found` : r.error.message };
  return { ok: r.status === 0, out: r.stdout.trim(), err: r.stderr.trim() };
}

const lastLine = (s: string) => s.split('\n').filter(Boolean).slice(-3).join(' / ');

/**
 * Builds (or takes from cacheDir) the static mkma-unpack for the image's architecture `arch`
 * (a Debian architecture name, e.g. amd64; default: the host's, for use on this machine).
 * Only native builds: a cross compiler and a foreign libzstd.a are not worth it for an
 * optional speed-up.
 */
export function buildUnpacker(opts: { cacheDir: string; arch?: string }): UnpackerResult {
  const dpkg = run('dpkg', ['--print-architecture']);
  if (!dpkg.ok) return { path: null, reason: `cannot tell the host architecture (dpkg --print-architecture: ${dpkg.err || 'failed'})` };
  const arch = opts.arch ?? dpkg.out;
  if (dpkg.out !== arch) {
    return { path: null, reason: `the image is ${arch} but the host is ${dpkg.out} (mkma-unpack is only built natively)` };
  }
  const gcc = run('gcc', ['-dumpfullversion', '-dumpversion']);
  if (!gcc.ok) return { path: null, reason: `gcc is not available (${gcc.err || 'failed'}; apt-get install ${UNPACKER_HOST_PACKAGES.join(' ')})` };
  const gccVersion = (run('gcc', ['--version']).out.split('\n')[0] || gcc.out).trim();
  for (const lib of ['libzstd.a', 'libc.a']) {
    // gcc prints the bare name back when it cannot find the file
    const found = run('gcc', [`-print-file-name=${lib}`]).out;
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
  const code = fs.readFileSync(source);
  const key = createHash('sha256')
    .update(code)
    .update(`\0${gccVersion}\0${arch}\0${UNPACKER_CFLAGS.join(' ')} ${UNPACKER_LIBS.join(' ')}`)
    .digest('hex')
    .slice(0, 16);
  const out = path.join(opts.cacheDir, `mkma-unpack-${arch}-${key}`);
  if (isExecutable(out)) return { path: out };

  fs.mkdirSync(opts.cacheDir, { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  const cc = run('gcc', [...UNPACKER_CFLAGS, '-o', tmp, source, ...UNPACKER_LIBS]);
  if (!cc.ok) {
    fs.rmSync(tmp, { force: true });
    return { path: null, reason: `gcc failed to build mkma-unpack: ${lastLine(cc.err) || 'no message'}` };
  }
  // A quick sanity run: the binary must start and know its usage.
  const probe = run(tmp, ['-h']);
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
