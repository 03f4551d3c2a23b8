// A Debian kernel for boot tests on hosts without one in /boot (containers, CI runners). Test
// code only: it lives under test/ so that it is not compiled into dist/ nor shipped.
//
// Only the bzImage is needed (the tests' initramfs brings what it uses), so the package is
// fetched with `apt-get download` (no root, nothing installed) and only ./boot/vmlinuz-* is
// taken out of its data archive instead of `dpkg -x`-ing ~400 MB of modules. The result is
// cached; later calls are offline.
import fs from 'node:fs';
import path from 'node:path';
import { MkmaError } from '../../lib/errors.js';
import { run } from '../../lib/run.js';

/** Overrides the download: a kernel the user already has. */
export const TEST_KERNEL_ENV = 'MKMA_TEST_KERNEL';

export class KernelError extends MkmaError {}

/** Versioned kernel image packages: linux-image-6.1.0-56-amd64 (not -dbg, -unsigned, -cloud, -rt). */
export const KERNEL_PACKAGE_RE = /^linux-image-(\d+)\.(\d+)\.(\d+)-(\d+)-amd64$/;

/** Numeric version parts of a name, compared element-wise: 6.1.0-56 > 6.1.0-9. */
function versionKey(name: string): number[] {
  return (name.match(/\d+/g) ?? []).map(Number);
}

function compareVersions(a: string, b: string): number {
  const ka = versionKey(a);
  const kb = versionKey(b);
  for (let i = 0; i < Math.max(ka.length, kb.length); i++) {
    const d = (ka[i] ?? -1) - (kb[i] ?? -1);
    if (d !== 0) return d;
  }
  return 0;
}

/** The newest kernel package among `apt-cache search` output lines. */
export function newestKernelPackage(searchOutput: string): string | null {
  const names = searchOutput
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => KERNEL_PACKAGE_RE.test(n));
  return names.sort(compareVersions).pop() ?? null;
}

function cachedKernel(cacheDir: string): string | null {
  if (!fs.existsSync(cacheDir)) return null;
  const found = fs
    .readdirSync(cacheDir)
    .filter((n) => /^vmlinuz-.*-amd64$/.test(n))
    .sort(compareVersions)
    .pop();
  return found ? path.join(cacheDir, found) : null;
}

async function aptCacheSearch(): Promise<string> {
  return (await run('apt-cache', ['search', '--names-only', '^linux-image-[0-9.]+-[0-9]+-amd64$'])).stdout;
}

/** dpkg-deb --fsys-tarfile DEB | tar -x ./boot/vmlinuz-*: the kernel only (pipefail: either failing fails). */
async function extractVmlinuz(deb: string, dest: string): Promise<void> {
  await run('bash', [
    '-o',
    'pipefail',
    '-c',
    'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./boot/vmlinuz-*"',
    'bash',
    deb,
    dest,
  ]);
}

/**
 * Path of a vmlinuz to boot tests with: $MKMA_TEST_KERNEL, else the newest cached in
 * cacheDir, else the newest linux-image-X.Y.Z-N-amd64 from the host's apt sources.
 * Fails with what to do; never returns without a kernel.
 */
export async function ensureTestKernel(cacheDir: string): Promise<string> {
  const given = process.env[TEST_KERNEL_ENV];
  if (given) {
    if (!fs.statSync(given, { throwIfNoEntry: false })?.isFile()) throw new KernelError(`${TEST_KERNEL_ENV}=${given} is not a file`);
    return given;
  }
  const cached = cachedKernel(cacheDir);
  if (cached) return cached;

  const hint = `set ${TEST_KERNEL_ENV}=/path/to/vmlinuz, or make a Debian amd64 kernel package reachable through apt`;
  let pkg: string | null;
  try {
    pkg = newestKernelPackage(await aptCacheSearch());
    if (!pkg) {
      // A fresh container has no package lists yet; apt-get update needs root.
      await run('apt-get', ['update', '-qq']);
      pkg = newestKernelPackage(await aptCacheSearch());
    }
  } catch (e) {
    throw new KernelError(`cannot look up a kernel package with apt: ${(e as Error).message}; ${hint}`);
  }
  if (!pkg) throw new KernelError(`apt knows no linux-image-*-amd64 package; ${hint}`);

  fs.mkdirSync(cacheDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(cacheDir, '.download-'));
  try {
    await run('apt-get', ['download', '-q', pkg], { cwd: work }).catch((e: Error) => {
      throw new KernelError(`${e.message}; ${hint}`);
    });
    const deb = fs.readdirSync(work).find((n) => n.endsWith('.deb'));
    if (!deb) throw new KernelError(`apt-get download ${pkg} left no .deb in ${work}; ${hint}`);
    await extractVmlinuz(path.join(work, deb), work);
    const boot = path.join(work, 'boot');
    const image = fs.existsSync(boot) ? fs.readdirSync(boot).find((n) => n.startsWith('vmlinuz-')) : undefined;
    if (!image) throw new KernelError(`${deb} contains no boot/vmlinuz-*; ${hint}`);
    const dest = path.join(cacheDir, image);
    fs.renameSync(path.join(boot, image), dest); // same directory tree: atomic
    return dest;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
