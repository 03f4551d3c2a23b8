// The one process runner. Every program mkma starts goes through here, so that each failure
// reads the same (command, exit status or signal, the last lines of stderr), a program that is
// not installed is named with its Debian package, `--debug` (MKMA_DEBUG=1) logs every command
// with its duration, and a child never outlives mkma (lib/cleanup.ts).
//
// Not zx, though the design card names it. Measured here (zx 8.8.5, Node 20):
//   - zx decodes a command's output as UTF-8 before handing it over: the bytes ff 41 through
//     `cat` came back as ef bf bd 41. mkma reads file names as raw bytes (find -print0,
//     getfattr dumps, cpio listings), and a Debian tree holds names that are not UTF-8;
//   - every command runs through bash (`set -euo pipefail;` + quoting): one more process per
//     call, and the argument vector mkma already has is turned into a string and back;
//   - importing zx/core costs 20 ms (100 ms on a busy machine), paid by every command.
// node:child_process already does what zx would add here (argument vectors, timeouts, input),
// so the runner is ~150 lines over it, and zx is not a dependency.
//
// Raw `spawn` stays only where a stream is piped through mkma itself (the archive writer into
// zstd, find and getfattr into the scanner); those children are started with `spawnTracked`
// so they are killed with mkma. A command that starts processes of its own (a chroot's
// maintainer scripts) runs as its own process group (`processGroup`), stopped whole.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import { onCleanup } from './cleanup.js';
import { EnvironmentError, MkmaError } from './errors.js';
import { packageFor } from './packages.js';

export interface RunOptions {
  cwd?: string;
  /** added to (or, with cleanEnv, instead of) mkma's own environment */
  env?: NodeJS.ProcessEnv;
  /** use `env` alone (a chroot's environment must not inherit the host's) */
  cleanEnv?: boolean;
  /** written to the command's stdin (default: no stdin) */
  input?: string | Buffer;
  /** kill the command (SIGTERM, SIGKILL 3 s later) after this many milliseconds */
  timeoutMs?: number;
  /** return the result of a failed command instead of throwing */
  allowFailure?: boolean;
  /** 'inherit': the command talks to the user's terminal (output is not collected) */
  stdio?: 'pipe' | 'inherit';
  /** output larger than this is an error (default 256 MiB) */
  maxBuffer?: number;
  /** run() only: every line of output (stdout and stderr, without the newline), as it comes */
  onLine?: (line: string) => void;
  /**
   * run() only: the command gets a process group of its own, and everything it started is
   * stopped with it (SIGTERM, SIGKILL 3 s later) on a timeout or when mkma ends first.
   */
  processGroup?: boolean;
  /** descriptors the command gets as 3, 4, … (runSync only; e.g. a file for flock(1) to lock) */
  fds?: number[];
}

export interface RunResult {
  /** the command as a person would type it, for messages */
  command: string;
  status: number | null;
  signal: NodeJS.Signals | null;
  /** output decoded as UTF-8; stdoutBytes has the exact bytes */
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
  ok: boolean;
  timedOut: boolean;
}

/** A command exited non-zero, was killed, or timed out. */
export class CommandError extends MkmaError {
  constructor(readonly result: RunResult) {
    super(describeFailure(result));
  }
  get status(): number | null {
    return this.result.status;
  }
}

/** The program is not installed: an environment problem (exit 3), named with its package. */
export class CommandNotFoundError extends EnvironmentError {
  constructor(readonly program: string) {
    const pkg = packageFor(program);
    super(`${program} is not installed${pkg ? ` (apt-get install ${pkg}, or run mkma with --install-deps)` : ''}`);
  }
}

const STDERR_LINES = 5;

/** "cmd a b failed (exit 2): <last lines of stderr>". */
export function describeFailure(r: RunResult): string {
  const how = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
  const tail = lastLines(r.stderr || r.stdout, STDERR_LINES);
  return `${r.command} failed (${how})${tail ? `: ${tail}` : ''}`;
}

export function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n').trim();
}

const quoteArg = (a: string) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);

export function commandLine(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map(quoteArg).join(' ');
}

let debug = process.env.MKMA_DEBUG === '1';

/** --debug: every command is logged to stderr with its duration and status. */
export function setDebug(on: boolean): void {
  debug = on;
}

export function isDebug(): boolean {
  return debug;
}

function logDebug(r: RunResult, ms: number): void {
  if (!debug) return;
  const how = r.timedOut ? 'timed out' : r.signal ? r.signal : `exit ${r.status}`;
  process.stderr.write(`[debug] ${r.command}  (${how}, ${ms.toFixed(0)} ms)\n`);
}

function environment(o: RunOptions): NodeJS.ProcessEnv {
  // LC_ALL=C: messages mkma shows or parses are the same on every host
  return o.cleanEnv ? { ...o.env } : { ...process.env, LC_ALL: 'C', ...o.env };
}

function finish(r: RunResult, o: RunOptions, started: number): RunResult {
  logDebug(r, performance.now() - started);
  if (!r.ok && !o.allowFailure) throw new CommandError(r);
  return r;
}

/** Runs a command to its end, synchronously. */
export function runSync(cmd: string, args: readonly string[], o: RunOptions = {}): RunResult {
  const started = performance.now();
  const r = spawnSync(cmd, args, {
    cwd: o.cwd,
    env: environment(o),
    input: o.input,
    stdio: [
      ...(o.stdio === 'inherit' ? (['inherit', 'inherit', 'inherit'] as const) : (['pipe', 'pipe', 'pipe'] as const)),
      ...(o.fds ?? []),
    ],
    timeout: o.timeoutMs,
    killSignal: 'SIGKILL',
    maxBuffer: o.maxBuffer ?? 256 << 20,
  });
  const err = r.error as NodeJS.ErrnoException | undefined;
  if (err?.code === 'ENOENT') throw new CommandNotFoundError(cmd);
  const stdoutBytes = r.stdout ?? Buffer.alloc(0);
  const result: RunResult = {
    command: commandLine(cmd, args),
    status: r.status,
    signal: r.signal,
    stdout: stdoutBytes.toString('utf8'),
    stderr: (r.stderr ?? Buffer.alloc(0)).toString('utf8'),
    stdoutBytes,
    timedOut: err?.code === 'ETIMEDOUT',
    ok: r.status === 0 && !err,
  };
  if (err && err.code !== 'ETIMEDOUT' && !result.stderr) result.stderr = err.message;
  return finish(result, o, started);
}

/** Runs a command to its end without blocking the event loop (progress, UIs, parallel work). */
export function run(cmd: string, args: readonly string[], o: RunOptions = {}): Promise<RunResult> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawnTracked(cmd, args, {
      cwd: o.cwd,
      env: environment(o),
      stdio: o.stdio === 'inherit' ? 'inherit' : [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      detached: !!o.processGroup,
    });
    const signal = (sig: NodeJS.Signals) => (o.processGroup ? signalGroup(child, sig) : child.kill(sig));
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let size = 0;
    let timedOut = false;
    let overflow = false;
    const limit = o.maxBuffer ?? 256 << 20;
    const lines = o.onLine ? [new LineSplitter(o.onLine), new LineSplitter(o.onLine)] : null;
    const collect = (into: Buffer[], stream: number) => (d: Buffer) => {
      size += d.length;
      if (size > limit) {
        overflow = true;
        signal('SIGKILL');
        return;
      }
      into.push(d);
      lines?.[stream].push(d);
    };
    child.stdout?.on('data', collect(out, 0));
    child.stderr?.on('data', collect(err, 1));
    if (o.input !== undefined && child.stdin) {
      child.stdin.on('error', () => {}); // EPIPE: the exit status tells
      child.stdin.end(o.input);
    }
    let killTimer: NodeJS.Timeout | undefined;
    const timer = o.timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          signal('SIGTERM');
          killTimer = setTimeout(() => signal('SIGKILL'), 3000);
        }, o.timeoutMs)
      : undefined;
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      reject(e.code === 'ENOENT' ? new CommandNotFoundError(cmd) : new MkmaError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (status, endSignal) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      for (const l of lines ?? []) l.end();
      const stdoutBytes = Buffer.concat(out);
      const result: RunResult = {
        command: commandLine(cmd, args),
        status,
        signal: endSignal,
        stdout: stdoutBytes.toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (overflow ? `\n(output over ${limit} bytes)` : ''),
        stdoutBytes,
        timedOut,
        ok: status === 0 && !overflow,
      };
      try {
        resolve(finish(result, o, started));
      } catch (e) {
        reject(e);
      }
    });
  });
}

/** Calls `onLine` with each complete line of a byte stream; `end` flushes an unterminated last line. */
class LineSplitter {
  private partial = '';
  // a character split between two chunks is decoded whole
  private readonly decoder = new StringDecoder('utf8');
  constructor(private readonly onLine: (line: string) => void) {}
  push(d: Buffer): void {
    const parts = (this.partial + this.decoder.write(d)).split('\n');
    this.partial = parts.pop()!;
    for (const p of parts) this.onLine(p);
  }
  end(): void {
    this.partial += this.decoder.end();
    if (this.partial) this.onLine(this.partial);
    this.partial = '';
  }
}

/**
 * spawn() for a child whose streams mkma handles itself; it is killed if mkma ends first
 * (SIGKILL, or with `detached`, its whole process group: see stopProcessGroup). The
 * registration goes when the child exits.
 */
export function spawnTracked(cmd: string, args: readonly string[], opts: SpawnOptions): ChildProcess {
  if (debug) process.stderr.write(`[debug] ${commandLine(cmd, args)}  (started)\n`);
  const child = spawn(cmd, args, opts);
  const release = onCleanup(`kill ${cmd}`, () => {
    if (opts.detached) stopProcessGroup(child);
    else if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  child.once('exit', release);
  child.once('error', release);
  return child;
}

/** Sends `sig` to the child's process group (it must lead one: spawned `detached`), else to the child. */
function signalGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  try {
    if (child.pid) process.kill(-child.pid, sig);
  } catch {
    child.kill(sig);
  }
}

/**
 * Stops a process group led by `child` (spawned `detached`) synchronously, so that it can run
 * from a cleanup: SIGTERM to the group, up to `graceMs` for its members to go, then SIGKILL.
 * Daemons a maintainer script started, and a build's own children, go with it. A child that
 * does not lead a group (spawned without `detached`) is killed alone.
 */
export function stopProcessGroup(child: ChildProcess, graceMs = 3000): void {
  const pid = child.pid;
  if (!pid || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-pid, 'SIGTERM');
  } catch {
    child.kill('SIGKILL'); // not a group leader
    return;
  }
  // our own child stays a zombie until the event loop reaps it: only live members count
  for (let waited = 0; waited < graceMs && processGroupAlive(pid); waited += 50) sleepSync(50);
  if (!processGroupAlive(pid)) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  for (let i = 0; i < 20 && processGroupAlive(pid); i++) sleepSync(50);
}

/** Whether a process group has a member that is not a zombie (from /proc/PID/stat). */
export function processGroupAlive(pgid: number): boolean {
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((n) => /^[0-9]+$/.test(n));
  } catch {
    return false;
  }
  for (const p of pids) {
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid pgrp …: comm may hold spaces and parentheses
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(f[2]) === pgid && f[0] !== 'Z' && f[0] !== 'X') return true;
  }
  return false;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
