// Small helpers for the benchmark: child processes (timed; through lib/run.ts like every
// program mkma runs), tmpfs/overlay mounts that are always unmounted (also on Ctrl-C: the
// cleanup registry of lib/cleanup.ts), paths, and logging to stderr.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onCleanup } from '../lib/cleanup.js';
import { MkmaError } from '../lib/errors.js';
import { CommandNotFoundError, run, runSync } from '../lib/run.js';

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

export interface TimedResult {
  ms: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface TimedOptions {
  cwd?: string;
  /** the command's whole environment (default: the harness's own, unchanged) */
  env?: NodeJS.ProcessEnv;
  input?: string;
  /** exit statuses that are not a failure (default [0]) */
  okCodes?: number[];
  timeoutMs?: number;
}

/**
 * Runs a command to completion and times it (wall clock, from spawn to exit). Throws when it
 * exits non-zero, unless `okCodes` allows it. The environment is exactly the one given (or the
 * harness's): lib/run.ts's LC_ALL=C would change what the references measure.
 */
export async function runTimed(cmd: string, args: string[], opts: TimedOptions = {}): Promise<TimedResult> {
  const t0 = performance.now();
  const r = await run(cmd, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    cleanEnv: true,
    input: opts.input,
    timeoutMs: opts.timeoutMs,
    allowFailure: true,
  });
  const ms = performance.now() - t0;
  if (r.status === null || !(opts.okCodes ?? [0]).includes(r.status)) {
    const why = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
    throw new HarnessError(`${cmd} ${args.join(' ').slice(0, 300)} failed (${why}): ${r.stderr.trim().slice(-2000)}`);
  }
  return { ms, code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A bash command line (with pipefail), timed. */
export function bashTimed(script: string, opts: TimedOptions = {}): Promise<TimedResult> {
  return runTimed('bash', ['-c', `set -o pipefail; ${script}`], opts);
}

/** Synchronous command for setup work; throws with the end of stderr on failure. */
export function sh(cmd: string, args: string[], opts: { cwd?: string; input?: string | Buffer } = {}): string {
  return runSync(cmd, args, { cwd: opts.cwd, input: opts.input }).stdout;
}

/** First line of a tool's version output, or "unavailable". */
export function toolVersion(cmd: string, args: string[]): string {
  let r;
  try {
    r = runSync(cmd, args, { allowFailure: true });
  } catch (e) {
    if (e instanceof CommandNotFoundError) return 'unavailable';
    throw e;
  }
  const text = `${r.stdout}\n${r.stderr}`
    .split('\n')
    .map((l) => l.trim())
    .find(Boolean);
  return text ?? 'unknown';
}

export const shQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

// --- mounts that never outlive the benchmark -------------------------------------------------

/** umount, lazily (detached) when busy: a mount is never left behind. */
function unmount(dir: string): void {
  if (!runSync('umount', [dir], { allowFailure: true }).ok && isMountPoint(dir)) runSync('umount', ['-l', dir], { allowFailure: true });
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
  fs.mkdirSync(dir, { recursive: true });
  sh('mount', [...args, dir]);
  const abs = path.resolve(dir);
  const release = onCleanup(`unmount ${abs}`, () => unmount(abs));
  let done = false;
  return () => {
    if (done) return;
    done = true;
    release();
    unmount(abs);
  };
}

/** Mounts a fresh tmpfs on `dir`; returns the unmount function. */
export function mountTmpfs(dir: string, size = '16G'): () => void {
  return mount(dir, ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs']);
}

/** An overlay as mkma's init mounts it (redirect_dir and metacopy off). */
export function mountOverlay(dir: string, lower: string, upper: string, work: string): () => void {
  return mount(dir, [
    '-t',
    'overlay',
    '-o',
    `lowerdir=${lower},upperdir=${upper},workdir=${work},redirect_dir=off,metacopy=off`,
    'overlay',
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
  const mounts = fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m): m is string => !!m && m.startsWith(abs))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    log(`unmounting ${m} (left by an earlier run)`);
    runSync('umount', ['-l', m], { allowFailure: true });
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
