// Small helpers for the benchmark: child processes (timed), tmpfs/overlay mounts that are
// always unmounted (also on Ctrl-C), paths, and logging to stderr.
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MkmaError } from '../lib/errors.js';

/** The repository (bench/ is compiled to dist/bench/). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MKMA_BIN = path.join(REPO, 'bin', 'mkma.js');
export const TEST_CONFIG = path.join(REPO, 'test', 'fixtures', 'test-image.toml');
export const TEST_IMAGE = path.join(REPO, '.test-work', 'image');
/**
 * Everything the benchmark caches or scratches, under bench/cache/ (gitignored) but inside a
 * directory whose name starts with a dot: tsconfig.json includes "bench", and TypeScript's
 * include globs skip dot-directories. Without that, `tsc` would walk (and type-check the
 * .d.ts files of) the root filesystem copies kept here.
 */
export const CACHE = path.join(REPO, 'bench', 'cache', '.work');

export function log(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

export class HarnessError extends MkmaError {}

export interface RunResult {
  ms: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command to completion and times it (wall clock, from spawn to exit). Throws when it
 * exits non-zero, unless `okCodes` allows it.
 */
export function runTimed(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { okCodes?: number[]; input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => { if (stdout.length < 64 << 20) stdout += d; });
    child.stderr!.on('data', (d: string) => { if (stderr.length < 1 << 20) stderr += d; });
    child.stdin!.on('error', () => {});
    child.stdin!.end(opts.input ?? '');
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : undefined;
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new HarnessError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const ms = performance.now() - t0;
      const ok = opts.okCodes ?? [0];
      if (code === null || !ok.includes(code)) {
        const why = signal ? `killed by ${signal}` : `exit ${code}`;
        reject(new HarnessError(`${cmd} ${args.join(' ').slice(0, 300)} failed (${why}): ${stderr.trim().slice(-2000)}`));
        return;
      }
      resolve({ ms, code, stdout, stderr });
    });
  });
}

/** A bash command line (with pipefail), timed. */
export function bashTimed(script: string, opts: SpawnOptions & { okCodes?: number[]; timeoutMs?: number } = {}): Promise<RunResult> {
  return runTimed('bash', ['-c', `set -o pipefail; ${script}`], opts);
}

/** Synchronous command for setup work; throws with stderr on failure. */
export function sh(cmd: string, args: string[], opts: { cwd?: string; input?: string | Buffer } = {}): string {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, input: opts.input, encoding: 'utf8', maxBuffer: 256 << 20 });
  if (r.error) throw new HarnessError(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new HarnessError(`${cmd} ${args.join(' ').slice(0, 300)} failed (exit ${r.status}): ${(r.stderr ?? '').trim().slice(-2000)}`);
  return r.stdout;
}

/** First line of a tool's version output, or "unavailable". */
export function toolVersion(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return 'unavailable';
  const text = `${r.stdout ?? ''}\n${r.stderr ?? ''}`.split('\n').map((l) => l.trim()).find(Boolean);
  return text ?? 'unknown';
}

export const shQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

// --- mounts that never outlive the benchmark -------------------------------------------------

const mounted: string[] = [];
let hooked = false;

function unmountAll(): void {
  while (mounted.length) {
    const m = mounted.pop()!;
    spawnSync('umount', [m]);
    if (isMountPoint(m)) spawnSync('umount', ['-l', m]);
  }
}

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', unmountAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      unmountAll();
      process.exit(130);
    });
  }
}

export function isMountPoint(dir: string): boolean {
  const abs = path.resolve(dir);
  try {
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
    return mounts.split('\n').some((l) => l.split(' ')[1]?.replace(/\\040/g, ' ') === abs);
  } catch {
    return false;
  }
}

function mount(dir: string, args: string[]): () => void {
  hookExit();
  fs.mkdirSync(dir, { recursive: true });
  sh('mount', [...args, dir]);
  const abs = path.resolve(dir);
  mounted.push(abs);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const i = mounted.lastIndexOf(abs);
    if (i >= 0) mounted.splice(i, 1);
    const r = spawnSync('umount', [abs], { encoding: 'utf8' });
    if (r.status !== 0) {
      // busy (a child still in it): detach it rather than leave it behind
      spawnSync('umount', ['-l', abs]);
    }
  };
}

/** Mounts a fresh tmpfs on `dir`; returns the unmount function. */
export function mountTmpfs(dir: string, size = '16G'): () => void {
  return mount(dir, ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs']);
}

/** An overlay as mkma's init mounts it (redirect_dir and metacopy off). */
export function mountOverlay(dir: string, lower: string, upper: string, work: string): () => void {
  return mount(dir, [
    '-t', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${work},redirect_dir=off,metacopy=off`, 'overlay',
  ]);
}

/** A directory with a fresh tmpfs per call: `with(fn)` mounts, runs, unmounts. */
export async function withTmpfs<T>(dir: string, fn: (dir: string) => Promise<T>, size?: string): Promise<T> {
  const unmount = mountTmpfs(dir, size);
  try {
    return await fn(dir);
  } finally {
    unmount();
  }
}

/** Removes stale mounts under the cache left by a killed run (unmount deepest first). */
export function cleanStaleMounts(under: string): void {
  const abs = path.resolve(under) + '/';
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m): m is string => !!m && m.startsWith(abs))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    log(`unmounting ${m} (left by an earlier run)`);
    spawnSync('umount', ['-l', m]);
  }
}

export function rmrf(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
}

/** Size in bytes of a file. */
export function fileSize(p: string): number {
  return fs.statSync(p).size;
}

export function fmtMs(ms: number): string {
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`;
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** Count of entries under dir (find -mindepth 1), by find itself. */
export function countEntries(dir: string): number {
  const out = sh('sh', ['-c', `find ${shQuote(dir)} -xdev -mindepth 1 | wc -l`]);
  return Number(out.trim());
}
