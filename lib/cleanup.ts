// One registry for what must not outlive mkma: mounts, child processes, temporary files.
//
// Code that creates such a thing registers how to undo it (`onCleanup`) and releases the
// registration when it undid it itself. When mkma is ended by SIGINT, SIGTERM or SIGHUP, or
// exits with registrations still held (an exception nobody caught), every registered
// cleanup runs, newest first, and a signal then ends the process as it would have without
// handlers (exit status 128+n). Cleanups are synchronous: after a signal nothing else runs.
//
// A command that wants to end gracefully on a signal instead (persist: remove the partial
// layer, then report; the preset rescue shell: Ctrl-C belongs to the shell) holds
// `interceptSignals` while it runs.
//
// The process-level handlers exist only while something is registered, so an idle mkma
// reacts to signals exactly like any other program.
import { readdirSync, readFileSync } from 'node:fs';

type Cleanup = () => void;
type Interceptor = (signal: NodeJS.Signals) => boolean;

interface Entry {
  label: string;
  fn: Cleanup;
}

const entries: Entry[] = [];
const interceptors: Interceptor[] = [];
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let installed = false;

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', runCleanups);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function uninstallIfIdle(): void {
  if (!installed || entries.length || interceptors.length) return;
  installed = false;
  process.off('exit', runCleanups);
  for (const s of SIGNALS) process.off(s, onSignal);
}

function onSignal(signal: NodeJS.Signals): void {
  // the newest interceptor decides first; true means "handled, keep running"
  for (let i = interceptors.length - 1; i >= 0; i--) if (interceptors[i](signal)) return;
  runCleanups();
  installed = false;
  process.off('exit', runCleanups);
  for (const s of SIGNALS) process.off(s, onSignal);
  // die of the signal, as if unhandled, unless someone else listens for it
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

/** Registers `fn` to run if mkma ends before it is released; returns the release function. */
export function onCleanup(label: string, fn: Cleanup): () => void {
  const entry: Entry = { label, fn };
  entries.push(entry);
  install();
  return () => {
    const i = entries.indexOf(entry);
    if (i >= 0) entries.splice(i, 1);
    uninstallIfIdle();
  };
}

/** Runs every registered cleanup, newest first, and forgets them. A failing one is reported. */
export function runCleanups(): void {
  while (entries.length) {
    const e = entries.pop()!;
    try {
      e.fn();
    } catch (err) {
      process.stderr.write(`mkma: cleanup "${e.label}" failed: ${(err as Error).message}\n`);
    }
  }
}

/** Labels of what is registered now (tests, --debug). */
export function pendingCleanups(): string[] {
  return entries.map((e) => e.label);
}

/**
 * While held, a signal first goes to `handler`: returning true keeps mkma running (the
 * handler arranged a graceful end); false lets the cleanups run and the signal end mkma.
 */
export function interceptSignals(handler: Interceptor): () => void {
  interceptors.push(handler);
  install();
  return () => {
    const i = interceptors.indexOf(handler);
    if (i >= 0) interceptors.splice(i, 1);
    uninstallIfIdle();
  };
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Whether a process group has a member that is not a zombie (from /proc/PID/stat). */
function groupAlive(pgid: number): boolean {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((n) => /^[0-9]+$/.test(n));
  } catch {
    return false;
  }
  for (const p of pids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${p}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid pgrp …: comm may hold spaces and parentheses
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(f[2]) === pgid && f[0] !== 'Z' && f[0] !== 'X') return true;
  }
  return false;
}

/**
 * Stops a whole process group (a child started with `detached: true` leads its own): SIGTERM,
 * then SIGKILL for what is still alive after `graceMs`. Synchronous, so it can run as a cleanup
 * after a signal. Returns false when `pgid` leads no group (nothing was sent).
 */
export function killProcessGroup(pgid: number, graceMs = 3000): boolean {
  try {
    process.kill(-pgid, 'SIGTERM');
  } catch {
    return false;
  }
  // our own child stays a zombie until the event loop reaps it: only live members count
  for (let waited = 0; waited < graceMs && groupAlive(pgid); waited += 50) sleepSync(50);
  if (groupAlive(pgid)) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      /* gone */
    }
    for (let i = 0; i < 20 && groupAlive(pgid); i++) sleepSync(50);
  }
  return true;
}
