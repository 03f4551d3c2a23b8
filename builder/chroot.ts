// Running programs inside the image's root directory, as Debian's maintainer scripts expect:
// /proc, /sys, /dev, /dev/pts and a /run tmpfs mounted, daemons kept from starting
// (/usr/sbin/policy-rc.d exits 101), DEBIAN_FRONTEND=noninteractive, the host's resolv.conf
// for apt. Every mount is undone when the session ends — normally, by an exception, or by
// SIGINT/SIGTERM/SIGHUP — in reverse order, lazily when busy, so a failed or interrupted build
// never leaves the host's /dev or /proc mounted inside a tree that is later deleted or copied.
// The session is one entry in lib/cleanup.ts's registry; while the rescue shell runs, Ctrl-C
// belongs to the shell.
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import * as path from 'node:path';
import { interceptSignals, killProcessGroup, onCleanup } from '../lib/cleanup.js';
import { MkmaError } from '../lib/errors.js';
import { runSync, spawnTracked } from '../lib/run.js';
import { hostPathInRoot } from './root-path.js';

export const CHROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface RunOptions {
  /** added to the session's environment */
  env?: Record<string, string>;
  /** every line of output (stdout and stderr), as it comes */
  onLine?: (line: string) => void;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** the last lines of output (at most 200) */
  tail: string[];
}

export interface Chroot {
  /** the root directory (real path) */
  readonly root: string;
  /** the environment every command gets */
  readonly env: Record<string, string>;
  /** runs argv inside the root, stdin from /dev/null, output collected */
  run(argv: string[], opts?: RunOptions): Promise<RunResult>;
  /** bind-mounts a host directory read-only at `inside` (created, and removed afterwards) */
  bindReadOnly(hostDir: string, inside: string): void;
  /** bind-mounts a host directory read-write at `inside`, which must exist in the root */
  bindWritable(hostDir: string, inside: string): void;
  /** an interactive bash in the root on this terminal; resolves with its exit status */
  shell(env?: Record<string, string>): Promise<number>;
  /**
   * argv inside the root on mkma's own stdin, stdout and stderr (stdout onto stderr with
   * `stdoutToStderr`); resolves with its exit status, 128+n when killed by signal n. On a
   * terminal it is in mkma's process group and Ctrl-C belongs to it; elsewhere it leads a group
   * of its own, stopped whole when mkma is interrupted.
   */
  attached(argv: string[], opts?: { env?: Record<string, string>; stdoutToStderr?: boolean }): Promise<number>;
}

export class ChrootError extends MkmaError {}

/** Mount points at or below `dir` (not `dir` itself), innermost last, from /proc/self/mountinfo. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  const out: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = mp.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (p.startsWith(prefix)) out.push(p);
  }
  return out;
}

/**
 * Unmounts everything below `dir`, innermost first (reverse mountinfo order); a busy mount is
 * detached lazily (umount -l). Returns what is still mounted (nothing, normally).
 */
export function unmountUnder(dir: string): string[] {
  let real: string;
  try {
    real = fs.realpathSync(dir);
  } catch {
    return [];
  }
  for (let round = 0; round < 5; round++) {
    const mps = mountsUnder(real);
    if (!mps.length) return [];
    for (const mp of mps.reverse()) {
      if (!runSync('umount', [mp], { allowFailure: true }).ok) runSync('umount', ['-l', mp], { allowFailure: true });
    }
  }
  return mountsUnder(real);
}

/** Stops a command and everything it started (its process group), SIGTERM first. */
function stopCommand(child: ChildProcess): void {
  if (!child.pid || child.exitCode !== null || child.signalCode !== null) return;
  // not a group leader (the rescue shell): the process alone
  if (!killProcessGroup(child.pid)) child.kill('SIGKILL');
}

function mount(args: string[]): void {
  const r = runSync('mount', args, { allowFailure: true });
  if (!r.ok) throw new ChrootError(`mount ${args.join(' ')} failed: ${r.stderr.trim()}`);
}

/** The environment of every command in the chroot; nothing of mkma's own leaks in. */
export function chrootEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: CHROOT_PATH,
    HOME: '/root',
    LANG: 'C.UTF-8',
    TERM: process.env.TERM || 'dumb',
    DEBIAN_FRONTEND: 'noninteractive',
    DEBCONF_NONINTERACTIVE_SEEN: 'true',
    ...extra,
  };
}

const POLICY_RC_D = '#!/bin/sh\n# mkma: no daemons start while the image is built\nexit 101\n';

/**
 * Runs `fn` with the root prepared for chroot commands, and undoes every change to the root
 * afterwards (mounts, mount points it made, policy-rc.d, resolv.conf), whatever happens.
 */
export async function withChroot<T>(
  rootDir: string,
  fn: (c: Chroot) => Promise<T>,
  opts: { env?: Record<string, string> } = {},
): Promise<T> {
  const root = fs.realpathSync(rootDir);
  if (root === '/') throw new ChrootError('refusing to use / as an image root');
  const left = unmountUnder(root); // leftovers of a build that was killed
  if (left.length) throw new ChrootError(`cannot unmount ${left.join(', ')}: unmount them by hand`);

  const children = new Set<ChildProcess>();
  /** directories this session made (mount points), removed afterwards, innermost first */
  const made: string[] = [];
  const restores: Array<() => void> = [];
  let cleaned = false;
  const cleanup = () => {
    if (cleaned) return;
    cleaned = true;
    for (const c of children) stopCommand(c);
    const still = unmountUnder(root);
    if (still.length) process.stderr.write(`mkma: warning: could not unmount ${still.join(', ')}\n`);
    else {
      for (const d of made.reverse()) {
        try {
          fs.rmdirSync(d);
        } catch {
          /* not empty (a script put something there): leave it */
        }
      }
    }
    for (const r of restores.reverse()) {
      try {
        r();
      } catch (e) {
        process.stderr.write(`mkma: warning: ${(e as Error).message}\n`);
      }
    }
  };
  // an interrupted build (SIGINT, SIGTERM, SIGHUP) undoes the session too
  const release = onCleanup(`chroot session in ${root}`, cleanup);

  /** a real directory at `rel` inside the root (made if missing; never a symlink) */
  const mountPoint = (rel: string): string => {
    let cur = root;
    for (const name of rel.split('/').filter(Boolean)) {
      cur = path.join(cur, name);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(cur);
      } catch {
        fs.mkdirSync(cur, { mode: 0o755 });
        made.push(cur);
        continue;
      }
      if (!st.isDirectory())
        throw new ChrootError(
          `/${rel} in the image is not a directory (${st.isSymbolicLink() ? 'a symbolic link' : 'a file'}): cannot mount there`,
        );
    }
    return cur;
  };

  try {
    mount(['-t', 'proc', 'proc', mountPoint('proc')]);
    mount(['-t', 'sysfs', '-o', 'ro', 'sysfs', mountPoint('sys')]);
    mount(['--bind', '/dev', mountPoint('dev')]);
    if (fs.existsSync('/dev/pts/ptmx')) mount(['--bind', '/dev/pts', mountPoint('dev/pts')]);
    mount(['-t', 'tmpfs', '-o', 'mode=755,nosuid,nodev', 'tmpfs', mountPoint('run')]);

    // daemons must not start: invoke-rc.d and deb-systemd-invoke ask policy-rc.d
    const sbin = mountPoint('usr/sbin');
    const policy = path.join(sbin, 'policy-rc.d');
    const saved = path.join(sbin, 'policy-rc.d.mkma-saved');
    if (fs.existsSync(policy) || isSymlink(policy)) fs.renameSync(policy, saved);
    fs.writeFileSync(policy, POLICY_RC_D, { mode: 0o755 });
    restores.push(() => {
      fs.rmSync(policy, { force: true });
      if (fs.existsSync(saved) || isSymlink(saved)) fs.renameSync(saved, policy);
    });

    // name resolution for apt: the host's resolv.conf for the session
    const etc = mountPoint('etc');
    const resolv = path.join(etc, 'resolv.conf');
    const resolvSaved = path.join(etc, 'resolv.conf.mkma-saved');
    let hostResolv: string | null = null;
    try {
      hostResolv = fs.readFileSync('/etc/resolv.conf', 'utf8');
    } catch {
      /* none on the host */
    }
    if (hostResolv !== null) {
      const had = fs.existsSync(resolv) || isSymlink(resolv);
      if (had) fs.renameSync(resolv, resolvSaved);
      fs.writeFileSync(resolv, hostResolv, { mode: 0o644 });
      restores.push(() => {
        let ours = false;
        try {
          ours = !isSymlink(resolv) && fs.readFileSync(resolv, 'utf8') === hostResolv;
        } catch {
          /* removed by a script */
        }
        if (ours || !(fs.existsSync(resolv) || isSymlink(resolv))) {
          fs.rmSync(resolv, { force: true });
          if (had) fs.renameSync(resolvSaved, resolv);
        } else if (had) {
          // a script or package replaced it on purpose: keep theirs
          fs.rmSync(resolvSaved, { force: true });
        }
      });
    }

    const env = chrootEnv(opts.env);
    const c: Chroot = {
      root,
      env,
      run(argv, ro = {}) {
        return new Promise<RunResult>((resolve, reject) => {
          // not runSync/run: every line of output goes to onLine as it comes
          const child = spawnTracked('chroot', [root, ...argv], {
            env: { ...env, ...ro.env },
            stdio: ['ignore', 'pipe', 'pipe'],
            detached: true, // its own process group: stopped whole on interruption
          });
          children.add(child);
          // newer than spawnTracked's SIGKILL of the command alone: the group gets SIGTERM first
          const releaseGroup = onCleanup(`stop chroot ${argv[0]}`, () => stopCommand(child));
          const tail: string[] = [];
          const partial = { out: '', err: '' };
          const feed = (which: 'out' | 'err', d: Buffer | null) => {
            const text = partial[which] + (d ? d.toString() : '');
            const lines = text.split('\n');
            partial[which] = d ? lines.pop()! : '';
            for (const l of lines) {
              if (!d && l === '') continue;
              tail.push(l);
              if (tail.length > 200) tail.shift();
              ro.onLine?.(l);
            }
          };
          child.stdout!.on('data', (d: Buffer) => feed('out', d));
          child.stderr!.on('data', (d: Buffer) => feed('err', d));
          child.on('error', (e) => {
            children.delete(child);
            releaseGroup();
            reject(new ChrootError(`cannot run chroot: ${e.message}`));
          });
          child.on('close', (code, signal) => {
            children.delete(child);
            releaseGroup();
            feed('out', null);
            feed('err', null);
            resolve({ code, signal, tail });
          });
        });
      },
      bindReadOnly(hostDir, inside) {
        const mp = mountPoint(inside);
        mount(['--bind', hostDir, mp]);
        mount(['-o', 'remount,bind,ro', mp]);
      },
      bindWritable(hostDir, inside) {
        mount(['--bind', hostDir, mountPoint(inside)]);
      },
      shell(extra = {}) {
        return c.attached(['/bin/bash', '-i'], { env: { ...extra, PS1: '(mkma chroot) \\w# ' } });
      },
      attached(argv, ao = {}) {
        return new Promise<number>((resolve) => {
          const tty = !!process.stdin.isTTY;
          // on a terminal Ctrl-C belongs to the command; SIGTERM and SIGHUP still end mkma
          const releaseSignals = tty ? interceptSignals((sig) => sig === 'SIGINT') : () => {};
          const child = spawnTracked('chroot', [root, ...argv], {
            env: { ...env, ...ao.env },
            stdio: ['inherit', ao.stdoutToStderr ? process.stderr : 'inherit', 'inherit'],
            // no terminal: its own group, stopped whole by the cleanup (see stopCommand)
            detached: !tty,
          });
          children.add(child);
          const releaseGroup = tty ? () => {} : onCleanup(`stop chroot ${argv[0]}`, () => stopCommand(child));
          const done = (code: number) => {
            releaseSignals();
            releaseGroup();
            children.delete(child);
            resolve(code);
          };
          child.on('error', () => done(127));
          child.on('close', (code, signal) => done(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 1)));
        });
      },
    };
    return await fn(c);
  } finally {
    cleanup();
    release();
  }
}

function isSymlink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/**
 * Copies the tree `src` into the image at `root` as `cp` would, but resolving directories the
 * way the image sees them (/lib → usr/lib, absolute links inside the image): an existing
 * directory is entered, an existing file or link is replaced. Files belong to the user mkma
 * runs as (root); modes and modification times are kept.
 */
export function copyTreeInto(src: string, root: string): number {
  let n = 0;
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(src, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const from = path.join(src, r);
      const st = fs.lstatSync(from);
      const parent = hostPathInRoot(root, rel);
      const to = path.join(parent, e.name);
      if (st.isDirectory()) {
        const dest = hostPathInRoot(root, r);
        if (!fs.existsSync(dest)) {
          fs.mkdirSync(dest, { mode: st.mode & 0o7777 });
          fs.chmodSync(dest, st.mode & 0o7777);
        } else if (!fs.statSync(dest).isDirectory()) {
          throw new ChrootError(`files: /${r} is a directory in the preset but not in the image`);
        }
        walk(r);
        continue;
      }
      if (fs.existsSync(to) || isSymlink(to)) {
        if (fs.lstatSync(to).isDirectory()) throw new ChrootError(`files: /${r} is a directory in the image but not in the preset`);
        fs.rmSync(to);
      }
      if (st.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(from), to);
      else if (st.isFile()) {
        fs.copyFileSync(from, to);
        fs.chmodSync(to, st.mode & 0o7777);
        fs.utimesSync(to, st.atime, st.mtime);
      } else throw new ChrootError(`files: ${from} is neither a file, a directory nor a symbolic link`);
      n++;
    }
  };
  walk('');
  return n;
}
