// A private tmpfs for work on unpacked trees (`mkma layers compact`, `mkma chroot`): the base
// and layers are unpacked there, and an overlay is mounted inside it. An overlay's upperdir
// cannot live on the root overlay of a booted mkma, and the trees must not fill the disk.
//
// Everything mounted is undone through lib/cleanup.ts (an exception, SIGINT, SIGTERM, SIGHUP).
// SIGKILL cannot be caught: then the tmpfs and whatever is mounted inside it stay. So a work
// area's name says whose it is, `mkma-work-<kind>-<pid>-<start time>-<random>`, and the next
// command that makes one (or the user) removes those whose process is gone, and says so.
// The start time (from /proc/PID/stat) tells a live owner from another process that got its pid.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { onCleanup } from '../lib/cleanup.js';
import { runSync } from '../lib/run.js';

export interface WorkArea {
  /** the tmpfs mount point (mode 0700) */
  dir: string;
  /** unmounts everything inside and the tmpfs, removes the directory */
  done(): void;
}

const NAME_RE = /^mkma-work-([a-z]+)-([0-9]+)-([0-9]+)-[A-Za-z0-9]{6}$/;

/** Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot; null when it is gone. */
function startTime(pid: number): string | null {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // pid (comm) state …: comm may hold spaces and parentheses
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
}

/** Mount points at `dir` or below, innermost last (/proc/self/mountinfo, octal escapes decoded). */
export function mountsAt(dir: string): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = mp.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (p === dir || p.startsWith(dir + '/')) out.push(p);
  }
  return out;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** /proc/PID/root of every process whose root directory is `root` or below it. */
export function processesRootedIn(root: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    let r: string;
    try {
      r = fs.readlinkSync(`/proc/${name}/root`);
    } catch {
      continue; // gone, or a kernel thread
    }
    if (r === root || r.startsWith(root + '/')) pids.push(Number(name));
  }
  return pids;
}

/**
 * Stops every process left running in the tree (a daemon a package started despite
 * policy-rc.d, a command's `… &`): they would keep changing the upperdir while it is scanned
 * and keep the overlay busy. SIGTERM, then SIGKILL after `graceMs`. Returns how many there were.
 */
export function stopProcessesIn(root: string, graceMs = 2000): number {
  const first = processesRootedIn(root);
  if (!first.length) return 0;
  const send = (pids: number[], sig: NodeJS.Signals) => {
    for (const p of pids) {
      try {
        process.kill(p, sig);
      } catch {
        /* gone */
      }
    }
  };
  send(first, 'SIGTERM');
  for (let waited = 0; waited < graceMs && processesRootedIn(root).length; waited += 50) sleepSync(50);
  for (let i = 0; i < 20; i++) {
    const left = processesRootedIn(root);
    if (!left.length) break;
    send(left, 'SIGKILL');
    sleepSync(50);
  }
  return first.length;
}

/** Unmounts everything at or below `dir`, innermost first, lazily (a busy mount is detached). */
function unmountAll(dir: string): void {
  for (let round = 0; round < 3; round++) {
    const mps = mountsAt(dir);
    if (!mps.length) return;
    for (const mp of mps.reverse()) runSync('umount', ['-l', mp], { allowFailure: true });
  }
}

function remove(dir: string): void {
  // what still runs in a tree mounted there (a killed mkma chroot's command) would keep it busy
  stopProcessesIn(dir, 500);
  unmountAll(dir);
  // only once nothing is mounted there: never delete into a mounted tree
  if (!mountsAt(dir).length) fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * Work areas under `base` whose owner is gone (killed with SIGKILL, or the machine lost
 * power while /tmp survived): what still runs in them stopped, unmounted and removed. Returns
 * their paths.
 */
export function removeStaleWorkAreas(base: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(base);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = NAME_RE.exec(name);
    if (!m) continue;
    const [, , pid, start] = m;
    if (startTime(Number(pid)) === start) continue; // its owner still runs
    const dir = path.join(base, name);
    if (!fs.lstatSync(dir, { throwIfNoEntry: false })?.isDirectory()) continue;
    remove(dir);
    removed.push(dir);
  }
  return removed;
}

/**
 * A new work area under `base` for `kind` (e.g. "compact"), with a tmpfs mounted on it.
 * `stale`: what earlier, killed runs left under `base` and this call removed first (paths).
 */
export function workArea(base: string, kind: string): WorkArea & { stale: string[] } {
  const stale = removeStaleWorkAreas(base);
  const dir = fs.mkdtempSync(path.join(base, `mkma-work-${kind}-${process.pid}-${startTime(process.pid)}-`));
  let release = () => {};
  const cleanup = () => remove(dir);
  try {
    release = onCleanup(`unmount ${dir}`, cleanup);
    runSync('mount', ['-t', 'tmpfs', '-o', 'mode=0700', 'tmpfs', dir]);
  } catch (e) {
    release();
    cleanup();
    throw e;
  }
  let finished = false;
  return {
    dir,
    stale,
    done: () => {
      if (finished) return;
      finished = true;
      release();
      cleanup();
    },
  };
}
