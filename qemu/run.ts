// Boot a kernel + initramfs in QEMU and decide pass/fail from the serial console.
//
// Non-interactive boots read the console from QEMU's stdout (`-serial stdio`), copy it line by
// line to a log file and to onLine, and end as soon as the outcome is known: the success
// marker (the guest's mkma-test hook prints it), a failure marker (kernel panic, init FATAL),
// QEMU exiting, or the time limit. QEMU is always killed and reaped before the promise
// settles, and also when this process exits or is signalled (lib/cleanup.ts), so no emulator
// is ever left running (an orphaned TCG guest would eat a core until someone notices).
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Accel } from './accel.js';
import { MkmaError } from '../lib/errors.js';
import { packageFor } from '../lib/packages.js';
import { spawnTracked } from '../lib/run.js';

export const QEMU_BINARY = 'qemu-system-x86_64';

/** Printed by the guest's mkma-test hook (builder/configure.ts) once multi-user.target is up. */
export const MULTI_USER_MARKER = 'MKMA-TEST: multi-user reached';
/** Printed by the same hook after the optional run.sh, just before it powers off. */
export const TEST_DONE_MARKER = 'MKMA-TEST: done';
/** The init's fatal() prints `mkma[<uptime>]: FATAL <what>` (init/templates/lib.sh). */
export const INIT_FATAL_RE = /mkma(?:\[\s*[\d.]+\])?: FATAL/;
export const FAILURE_MARKERS: ReadonlyArray<string | RegExp> = ['Kernel panic', INIT_FATAL_RE];

export interface Disk {
  path: string;
  readonly?: boolean;
  /**
   * QEMU's cache mode (default: QEMU's, writeback). writeback shows the guest a volatile write
   * cache, so it flushes at fsync and at journal commits as on real disks with one.
   */
  cache?: 'writeback' | 'writethrough' | 'none' | 'directsync' | 'unsafe';
  /** QEMU reaches the disk (the image at `path`) through an NBD server on this unix socket */
  nbdSocket?: string;
}

/** UEFI firmware as two flash drives: the code (read-only) and a writable copy of the variables. */
export interface Firmware {
  code: string;
  vars: string;
}

export interface QemuArgsOptions {
  /** direct kernel boot; without it the firmware boots the first disk (an installed stick) */
  kernel?: string;
  initrd?: string;
  disks: Disk[];
  /** kernel command line (direct kernel boot); console=ttyS0 (or `console`) is appended */
  append?: string;
  /** UEFI firmware; without it QEMU's own BIOS (SeaBIOS on x86) */
  firmware?: Firmware;
  memoryMiB: number;
  cpus: number;
  accel: Accel;
  interactive: boolean;
  /** interactive only: where QEMU copies the console (chardev logfile=) */
  logPath?: string;
  /** default q35 (qemu/machine.ts has the machine of each architecture) */
  machine?: string;
  /** default: `host` under KVM, QEMU's default model under TCG (see cpuArgs) */
  cpu?: string;
  /** the kernel's serial console (default ttyS0; qemu/machine.ts has each machine's) */
  console?: string;
  /** more QEMU options, after mkma's own (e.g. a NIC with a host port forward) */
  extraArgs?: string[];
}

export interface BootOptions extends QemuArgsOptions {
  /** seconds before QEMU is killed; required (> 0) unless interactive, where 0 means none */
  timeoutSec: number;
  logPath: string;
  successMarker?: string | RegExp;
  failureMarkers?: ReadonlyArray<string | RegExp>;
  /**
   * Typed on the serial console, in order: each `send` once its `when` appeared after the
   * previous one was sent (a prompt need not end its line: a passphrase prompt, GRUB's menu).
   */
  respond?: ReadonlyArray<{ when: string | RegExp; send: string }>;
  onLine?: (line: string) => void;
  /** after the success marker, wait for the guest to power off (so its disk writes are complete) instead of killing QEMU */
  waitForPoweroff?: boolean;
  /** how long to keep reading after a failure marker, so the log has the panic's trace */
  failureGraceMs?: number;
  /** the emulator to run (tests substitute a script) */
  qemuBinary?: string;
  /** aborting it kills QEMU at once (SIGKILL: a power cut, for fault tests) */
  signal?: AbortSignal;
}

export interface BootResult {
  ok: boolean;
  reason: string;
  exitCode: number | null;
  timedOut: boolean;
  durationSec: number;
  log: string;
}

export class QemuError extends MkmaError {}

/** QEMU's option parser splits on commas; a literal comma is written twice. */
export function escapeOptionValue(v: string): string {
  return v.replace(/,/g, ',,');
}

/**
 * CPU model. KVM: `host` (no emulation cost, every feature). TCG: QEMU's default qemu64,
 * measured here (2 vCPU host, decompress + cpio-extract 125 MB in the guest, 3 runs each)
 * as fast as or faster than `-cpu max`, whose extra instructions (AVX2, SHA…) the guest
 * kernel and zstd then use through slower emulation. crc32c-intel needing SSE4.2 is covered
 * by crc32c_generic in the initramfs module list.
 */
export function cpuArgs(accel: Accel, cpu?: string): string[] {
  if (cpu) return ['-cpu', cpu];
  return accel === 'kvm' ? ['-cpu', 'host'] : [];
}

/**
 * `-accel tcg,thread=multi` gives each vCPU its own host thread (QEMU ≥ 2.9 for x86 guests
 * on x86 hosts); with -smp 2 the init's `zstd -dc | cpio -i` pipeline then really runs on two
 * cores (measured ~30% faster than one vCPU).
 */
export function accelArg(accel: Accel, cpus: number): string {
  return accel === 'tcg' && cpus > 1 ? 'tcg,thread=multi' : accel;
}

export function kernelCommandLine(append: string, console = 'ttyS0'): string {
  // The last console= is /dev/console, so the init's and systemd's output reach the serial port.
  return `${append.trim()} console=${console}`.trim();
}

export function qemuArgs(o: QemuArgsOptions): string[] {
  if (!Number.isInteger(o.cpus) || o.cpus < 1) throw new QemuError(`cpus must be a positive integer, got ${o.cpus}`);
  if (!Number.isInteger(o.memoryMiB) || o.memoryMiB < 64) throw new QemuError(`memoryMiB must be an integer ≥ 64, got ${o.memoryMiB}`);
  // option and value on one line
  // prettier-ignore
  const args = [
    '-machine', o.machine ?? 'q35',
    '-accel', accelArg(o.accel, o.cpus),
    ...cpuArgs(o.accel, o.cpu),
    '-m', String(o.memoryMiB),
    '-smp', String(o.cpus),
    // No default NIC, VGA, floppy or CD-ROM: nothing to probe or wait for, and no option ROMs.
    '-nodefaults',
    '-nographic',
    // A guest reboot ends QEMU like a poweroff does: a test never boots twice.
    '-no-reboot',
  ];
  if (o.kernel)
    args.push('-kernel', o.kernel, ...(o.initrd ? ['-initrd', o.initrd] : []), '-append', kernelCommandLine(o.append ?? '', o.console));
  if (o.firmware) {
    args.push(
      '-drive',
      `if=pflash,format=raw,unit=0,readonly=on,file=${escapeOptionValue(o.firmware.code)}`,
      '-drive',
      `if=pflash,format=raw,unit=1,file=${escapeOptionValue(o.firmware.vars)}`,
    );
  }
  for (const d of o.disks) {
    const file = d.nbdSocket ? `nbd+unix:///?socket=${d.nbdSocket}` : d.path;
    args.push(
      '-drive',
      `file=${escapeOptionValue(file)},format=raw,if=virtio${d.readonly ? ',readonly=on' : ''}${d.cache ? `,cache=${d.cache}` : ''}`,
    );
  }
  if (o.interactive) {
    // One stdio chardev shared by the serial port and the monitor (Ctrl-A c switches, Ctrl-A x
    // quits); signal=off hands Ctrl-C to the guest instead of killing QEMU; logfile= keeps a
    // copy of the console even though the terminal owns stdio.
    const log = o.logPath ? `,logfile=${escapeOptionValue(o.logPath)}` : '';
    args.push('-chardev', `stdio,id=con0,mux=on,signal=off${log}`, '-serial', 'chardev:con0', '-mon', 'chardev=con0');
  } else {
    args.push('-serial', 'stdio');
  }
  // No monitor of its own: it would otherwise take stdio under -nographic.
  args.push('-monitor', 'none', ...(o.extraArgs ?? []));
  return args;
}

// --- console processing ------------------------------------------------------------------------

/** SeaBIOS and the kernel emit terminal control sequences (ESC c, ESC [2J …); logs want text. */
export function cleanConsoleLine(raw: string): string {
  // eslint-disable-next-line no-control-regex -- ESC sequences are what is removed here
  return raw.replace(/\r/g, '').replace(/\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-~])/g, '');
}

export function matchesMarker(line: string, marker: string | RegExp): boolean {
  return typeof marker === 'string' ? line.includes(marker) : marker.test(line);
}

function checkInputs(o: BootOptions): void {
  const files: Array<[string, string | undefined]> = [
    ['kernel', o.kernel],
    ['initrd', o.initrd],
    ['firmware', o.firmware?.code],
    ['firmware variables', o.firmware?.vars],
    ...o.disks.map((d): [string, string] => ['disk', d.path]),
  ];
  for (const [what, p] of files) {
    if (p === undefined) continue;
    if (!fs.statSync(p, { throwIfNoEntry: false })?.isFile()) throw new QemuError(`${what} ${p} does not exist or is not a file`);
  }
  if (!o.interactive && !(o.timeoutSec > 0)) throw new QemuError('a non-interactive boot needs timeoutSec > 0');
}

/**
 * QEMU as a tracked child (lib/run.ts): its console is read line by line as it comes (a raw
 * stream, not a command run to its end), and lib/cleanup.ts kills it if mkma exits or is
 * signalled first.
 */
function spawnQemu(o: BootOptions, stdio: 'inherit' | 'pipe'): ChildProcess {
  const bin = o.qemuBinary ?? QEMU_BINARY;
  const stdin = o.respond?.length ? 'pipe' : 'ignore';
  return spawnTracked(bin, qemuArgs(o), { stdio: stdio === 'inherit' ? 'inherit' : [stdin, 'pipe', 'pipe'] });
}

function spawnFailure(bin: string, e: NodeJS.ErrnoException): QemuError {
  return new QemuError(
    e.code === 'ENOENT' ? `${bin} not found (apt-get install ${packageFor(bin) ?? 'qemu-system'})` : `cannot start ${bin}: ${e.message}`,
  );
}

export async function bootQemu(o: BootOptions): Promise<BootResult> {
  checkInputs(o);
  fs.mkdirSync(path.dirname(path.resolve(o.logPath)), { recursive: true });
  if (o.interactive) return bootInteractive(o);
  const first = await bootCaptured(o);
  if (first.ok || o.accel !== 'tcg' || o.signal?.aborted || !emulatorFault(first.log)) return first;
  // Nothing of the guest's own ran yet (the kernel died before the init's first phase line):
  // the same boot again is the same test. The first console log is kept beside the new one.
  fs.renameSync(o.logPath, `${o.logPath}.emulator-fault`);
  const again = await bootCaptured(o);
  return { ...again, reason: `${again.reason} (a first boot hit QEMU's TCG fault and was retried: ${o.logPath}.emulator-fault)` };
}

/**
 * QEMU's multi-threaded TCG and the kernel's live code patching (text_poke_bp: an int3 is
 * written, the other CPU is synced by IPI, the int3 removed) race now and then: a vCPU runs a
 * stale translation that still holds the int3 after the patch is done, and the kernel dies of
 * "Oops: int3" early in boot (seen here about once in a few hundred boots, e.g. in
 * sched_clock_cpu). It is a fault of the emulator, not of the image: recognised only when the
 * oops comes before the init's first phase line, i.e. before anything mkma made has run.
 */
export function emulatorFault(log: string): boolean {
  const oops = log.search(/Oops: int3\b/);
  if (oops < 0) return false;
  const phase = log.search(/mkma\[\s*\d+(?:\.\d+)?\]: phase /);
  return phase < 0 || phase > oops;
}

async function bootInteractive(o: BootOptions): Promise<BootResult> {
  const started = Date.now();
  fs.rmSync(o.logPath, { force: true });
  const child = spawnQemu(o, 'inherit');
  let timedOut = false;
  let killTimer: NodeJS.Timeout | undefined;
  // SIGTERM first: QEMU then restores the terminal it put in raw mode; SIGKILL if it hangs.
  const timer =
    o.timeoutSec > 0
      ? setTimeout(() => {
          timedOut = true;
          child.kill('SIGTERM');
          killTimer = setTimeout(() => child.kill('SIGKILL'), 3000);
        }, o.timeoutSec * 1000)
      : undefined;
  try {
    const exitCode = await new Promise<number | null>((resolve, reject) => {
      child.on('error', (e) => reject(spawnFailure(o.qemuBinary ?? QEMU_BINARY, e)));
      child.on('close', (code) => resolve(code));
    });
    const log = fs.existsSync(o.logPath) ? fs.readFileSync(o.logPath, 'utf8').split('\n').map(cleanConsoleLine).join('\n') : '';
    const reason = timedOut ? `timed out after ${o.timeoutSec}s (log: ${o.logPath})` : `QEMU exited with ${exitCode ?? 'a signal'}`;
    return { ok: !timedOut && exitCode === 0, reason, exitCode, timedOut, durationSec: (Date.now() - started) / 1000, log };
  } finally {
    clearTimeout(timer);
    clearTimeout(killTimer);
    child.kill('SIGKILL');
  }
}

function bootCaptured(o: BootOptions): Promise<BootResult> {
  const bin = o.qemuBinary ?? QEMU_BINARY;
  const failureMarkers = o.failureMarkers ?? FAILURE_MARKERS;
  const started = Date.now();
  const logFile = fs.createWriteStream(o.logPath);
  const lines: string[] = [];
  const stderrTail: string[] = [];
  const child = spawnQemu(o, 'pipe');

  return new Promise<BootResult>((resolve, reject) => {
    let outcome: Omit<BootResult, 'exitCode' | 'log'> | null = null;
    let sawSuccess = false;
    let failure: string | null = null;
    let pending = '';
    let graceTimer: NodeJS.Timeout | undefined;

    const elapsed = () => (Date.now() - started) / 1000;
    // Decide once; the promise settles when QEMU is gone ('close'), so nothing outlives it.
    const decide = (ok: boolean, reason: string, timedOut = false) => {
      if (outcome) return;
      outcome = { ok, reason, timedOut, durationSec: elapsed() };
      child.kill('SIGKILL');
    };
    logFile.on('error', (e) => decide(false, `cannot write the console log ${o.logPath}: ${e.message}`));

    const onLine = (raw: string) => {
      const line = cleanConsoleLine(raw);
      lines.push(line);
      logFile.write(line + '\n');
      try {
        o.onLine?.(line);
      } catch (e) {
        decide(false, `onLine threw: ${(e as Error).message}`);
      }
      if (outcome || failure) return;
      const bad = failureMarkers.find((m) => matchesMarker(line, m));
      if (bad !== undefined) {
        failure = `failure marker "${String(bad)}" on the console: ${line.trim()} (log: ${o.logPath})`;
        // Keep reading a moment: a panic's trace and the init's hint follow the marker.
        graceTimer = setTimeout(() => decide(false, failure!), o.failureGraceMs ?? 2000);
      } else if (o.successMarker && !sawSuccess && matchesMarker(line, o.successMarker)) {
        sawSuccess = true;
        if (!o.waitForPoweroff) decide(true, `"${o.successMarker}" after ${elapsed().toFixed(1)}s`);
      }
    };

    const onAbort = () => decide(false, `killed on request after ${elapsed().toFixed(1)}s (log: ${o.logPath})`);
    if (o.signal?.aborted) onAbort();
    else o.signal?.addEventListener('abort', onAbort, { once: true });

    const timer = setTimeout(() => {
      const why = sawSuccess
        ? `"${o.successMarker}" seen, but the guest did not power off; timed out after ${o.timeoutSec}s (log: ${o.logPath})`
        : `timed out after ${o.timeoutSec}s (log: ${o.logPath})`;
      decide(false, why, true);
    }, o.timeoutSec * 1000);

    // what the console showed since the last answer was typed, for `respond`
    const answers = [...(o.respond ?? [])];
    let screen = '';
    child.stdin?.on('error', () => {}); // QEMU gone: its exit tells
    const answer = (chunk: string) => {
      if (!answers.length) return;
      screen = (screen + cleanConsoleLine(chunk)).slice(-8192);
      if (!matchesMarker(screen, answers[0].when)) return;
      child.stdin?.write(answers.shift()!.send);
      screen = '';
    };

    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      answer(chunk);
      const parts = (pending + chunk).split('\n');
      pending = parts.pop()!;
      for (const p of parts) onLine(p);
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      for (const l of chunk.split('\n').filter((x) => x.trim())) {
        stderrTail.push(l);
        if (stderrTail.length > 10) stderrTail.shift();
        // In the log (marked) for the post-mortem, but never matched as console output.
        logFile.write(`[qemu stderr] ${l}\n`);
      }
    });

    let spawnFailed = false;
    child.on('error', (e) => {
      // spawn failed: there is no process to wait for.
      spawnFailed = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      logFile.end();
      reject(spawnFailure(bin, e));
    });

    child.on('close', (code, signal) => {
      if (spawnFailed) return;
      o.signal?.removeEventListener('abort', onAbort);
      if (pending) onLine(pending);
      // After the last line: it may have started a grace timer that must not keep us waiting.
      clearTimeout(timer);
      clearTimeout(graceTimer);
      if (!outcome) {
        const stderr = stderrTail.length ? `; QEMU said: ${stderrTail.join(' | ')}` : '';
        if (failure) outcome = { ok: false, reason: failure, timedOut: false, durationSec: elapsed() };
        else if (sawSuccess || (!o.successMarker && code === 0)) {
          outcome = { ok: true, reason: `guest powered off after ${elapsed().toFixed(1)}s`, timedOut: false, durationSec: elapsed() };
        } else {
          const how = signal ? `was killed by ${signal}` : `exited with ${code}`;
          const before = o.successMarker ? ` before "${o.successMarker}" appeared` : '';
          outcome = { ok: false, reason: `QEMU ${how}${before} (log: ${o.logPath})${stderr}`, timedOut: false, durationSec: elapsed() };
        }
      }
      const result: BootResult = { ...outcome, exitCode: code, log: lines.join('\n') };
      if (logFile.destroyed) resolve(result);
      else logFile.end(() => resolve(result));
    });
  });
}

// --- boot timings from the console ----------------------------------------------------------

/**
 * The init's phase lines: `mkma[ 12.345]: phase <name> <free text>`, the number being
 * /proc/uptime seconds (init/templates/lib.sh `phase`). Not anchored at the start: a copy
 * that went through the kernel log carries a `[    4.012345] ` prefix, and the first line
 * after the firmware is sometimes glued to SeaBIOS's last one (the kernel resets the UART
 * while its FIFO still holds "…ROM...\r\n": seen here as `Booting from ROM..mkma[3.79]: …`).
 */
export const PHASE_LINE_RE = /mkma\[\s*(\d+(?:\.\d+)?)\]: phase (\S+)(?: (.*))?$/;
/** Kernel printk lines: `[    4.012345] ...` */
export const KERNEL_LINE_RE = /^\[\s*(\d+\.\d+)\]/;
/** The multi-user marker line: `MKMA-TEST: multi-user reached uptime=<secs>` */
export const MULTI_USER_RE = /MKMA-TEST: multi-user reached uptime=(\d+(?:\.\d+)?)/;
/** Phase names the timings single out (init/templates/main.sh). */
export const PHASE_START = 'start';
export const PHASE_SWITCH_ROOT = 'switch-root';

/** One phase line, as the init prints it (for tests and other emitters). */
export function phaseLine(uptime: number, name: string, text = ''): string {
  return `mkma[${uptime.toFixed(2)}]: phase ${name}${text ? ` ${text}` : ''}`;
}

export interface Phase {
  name: string;
  /** uptime in seconds */
  at: number;
  text: string;
}

export interface PhaseTimings {
  /** uptime when the init started (its `start` phase): kernel and firmware-independent boot cost */
  kernelToInit?: number;
  phases: Phase[];
  /** uptime of the `switch-root` phase */
  switchRoot?: number;
  /** uptime in the multi-user marker line */
  multiUser?: number;
  /** the last kernel timestamp seen: how far a boot got when nothing else says */
  lastKernelTimestamp?: number;
}

export function phaseTimings(log: string): PhaseTimings {
  const t: PhaseTimings = { phases: [] };
  const seen = new Set<string>();
  for (const raw of log.split('\n')) {
    const line = raw.replace(/\r$/, '');
    const k = KERNEL_LINE_RE.exec(line);
    if (k) t.lastKernelTimestamp = Number(k[1]);
    const p = PHASE_LINE_RE.exec(line);
    if (p) {
      const phase = { name: p[2], at: Number(p[1]), text: (p[3] ?? '').trim() };
      // With a verbose loglevel the kernel-log copy reaches the console too: count it once.
      const key = `${phase.at} ${phase.name} ${phase.text}`;
      if (!seen.has(key)) {
        seen.add(key);
        t.phases.push(phase);
        if (phase.name === PHASE_START && t.kernelToInit === undefined) t.kernelToInit = phase.at;
        if (phase.name === PHASE_SWITCH_ROOT) t.switchRoot = phase.at;
      }
    }
    const m = MULTI_USER_RE.exec(line);
    if (m && t.multiUser === undefined) t.multiUser = Number(m[1]);
  }
  return t;
}

/** A short table: phase, uptime, time since the previous row, and the phase's text. */
export function formatTimings(t: PhaseTimings): string {
  const rows: Array<[string, number, string]> = t.phases.map((p) => [p.name, p.at, p.text]);
  if (t.multiUser !== undefined) rows.push(['multi-user', t.multiUser, '']);
  if (rows.length === 0) return 'no phase lines in the console log';
  const width = Math.max(5, ...rows.map((r) => r[0].length));
  const out = [`${'phase'.padEnd(width)}  ${'at (s)'.padStart(8)}  ${'delta'.padStart(8)}`];
  let prev = 0;
  for (const [name, at, text] of rows) {
    const delta = `+${(at - prev).toFixed(2)}`;
    const note = text.length > 50 ? `${text.slice(0, 49)}…` : text;
    out.push(`${name.padEnd(width)}  ${at.toFixed(2).padStart(8)}  ${delta.padStart(8)}${note ? `  ${note}` : ''}`.trimEnd());
    prev = at;
  }
  return out.join('\n');
}
