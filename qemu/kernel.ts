// A Debian kernel for boot tests on hosts without one in /boot (containers, CI runners).
//
// Only the bzImage is needed (the tests' initramfs brings what it uses), so the package is
// fetched with `apt-get download` (no root, nothing installed) and only ./boot/vmlinuz-* is
// taken out of its data archive instead of `dpkg -x`-ing ~400 MB of modules. The result is
// cached; later calls are offline.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { MkmaError } from '../lib/errors.js';

const execFileAsync = promisify(execFile);

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
  const names = searchOutput.split('\n').map((l) => l.split(' ')[0]).filter((n) => KERNEL_PACKAGE_RE.test(n));
  return names.sort(compareVersions).pop() ?? null;
}

function cachedKernel(cacheDir: string): string | null {
  if (!fs.existsSync(cacheDir)) return null;
  const found = fs.readdirSync(cacheDir).filter((n) => /^vmlinuz-.*-amd64$/.test(n)).sort(compareVersions).pop();
  return found ? path.join(cacheDir, found) : null;
}

async function aptCacheSearch(): Promise<string> {
  const { stdout } = await execFileAsync('apt-cache', ['search', '--names-only', '^linux-image-[0-9.]+-[0-9]+-amd64$'], { maxBuffer: 16 << 20 });
  return stdout;
}

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  try {
    await execFileAsync(cmd, args, { cwd, maxBuffer: 16 << 20 });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    throw new KernelError(`${cmd} ${args.join(' ')} failed: ${(err.stderr ?? '').trim() || err.message}`);
  }
}

/** dpkg-deb --fsys-tarfile DEB | tar -x ./boot/vmlinuz-*: the kernel only. */
function extractVmlinuz(deb: string, dest: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const dpkg = spawn('dpkg-deb', ['--fsys-tarfile', deb], { stdio: ['ignore', 'pipe', 'pipe'] });
    const tar = spawn('tar', ['-x', '-C', dest, '--wildcards', './boot/vmlinuz-*'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    dpkg.stderr.on('data', (d) => (stderr += d));
    tar.stderr.on('data', (d) => (stderr += d));
    dpkg.stdout.pipe(tar.stdin);
    tar.stdin.on('error', () => {}); // reported through the exit statuses
    let left = 2;
    let failed = false;
    const done = (who: string) => (code: number | null) => {
      if (code !== 0 && !failed) {
        failed = true;
        reject(new KernelError(`${who} failed extracting ${deb}: ${stderr.trim()}`));
      }
      if (--left === 0 && !failed) resolve();
    };
    dpkg.on('error', (e) => reject(new KernelError(`cannot run dpkg-deb: ${e.message}`)));
    tar.on('error', (e) => reject(new KernelError(`cannot run tar: ${e.message}`)));
    dpkg.on('close', done('dpkg-deb'));
    tar.on('close', done('tar'));
  });
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
      await run('apt-get', ['update', '-qq'], '/');
      pkg = newestKernelPackage(await aptCacheSearch());
    }
  } catch (e) {
    throw new KernelError(`cannot look up a kernel package with apt: ${(e as Error).message}; ${hint}`);
  }
  if (!pkg) throw new KernelError(`apt knows no linux-image-*-amd64 package; ${hint}`);

  fs.mkdirSync(cacheDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(cacheDir, '.download-'));
  try {
    await run('apt-get', ['download', '-q', pkg], work).catch((e: Error) => {
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
