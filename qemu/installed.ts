// `mkma qemu --disk IMG [--uefi]`: boot a disk `mkma install` wrote, through its firmware and
// GRUB, as a machine would: SeaBIOS (QEMU's own) or UEFI (OVMF, with the variables in a
// writable copy next to the disk). The same console log, timeout and pass/fail report as the
// smoke boot (qemu/smoke.ts).
//
// The guest's serial console shows the boot only when the menu entry's kernel command line
// says so: install with --append "console=ttyS0" (and "mkma_test" for the test hook's marker).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Reporter } from '../lib/progress.js';
import { hostArch } from '../lib/arch.js';
import { requireTools } from '../lib/hosttools.js';
import { pickAccel } from './accel.js';
import { makeDataDisk } from './disk.js';
import { diskArch, diskBootTools, MACHINES, uefiFirmwareFor, type Arch } from './machine.js';
import { bootQemu, MULTI_USER_MARKER, phaseTimings, TEST_DONE_MARKER, type BootResult, type Disk } from './run.js';
import { TEST_DATA_LABEL, type SmokeResult } from './smoke.js';

/** Without the test hook (no mkma_test on the command line) systemd's own status line says it. */
export const MULTI_USER_RE = new RegExp(`${MULTI_USER_MARKER}|Reached target .*Multi-User System`);

export interface DiskBootOptions {
  disk: string;
  uefi: boolean;
  reporter: Reporter;
  env: NodeJS.ProcessEnv;
  arch?: Arch;
  timeoutSec?: number;
  memoryMiB?: number;
  cpus?: number;
  interactive?: boolean;
  /** a directory with run.sh for the guest's test hook (a disk labelled MKMA-TEST) */
  testDataDir?: string;
  /** where the console log goes (default <disk>.console.log) */
  logPath?: string;
  /** typed on the console as prompts appear (GRUB's menu, a passphrase) */
  respond?: ReadonlyArray<{ when: string | RegExp; send: string }>;
  /** every console line as it comes (a test timing the boot on the host's clock) */
  onLine?: (line: string) => void;
}

export async function bootInstalledDisk(o: DiskBootOptions): Promise<SmokeResult> {
  const disk = path.resolve(o.disk);
  if (!fs.statSync(disk, { throwIfNoEntry: false })?.isFile())
    throw new Error(`${o.disk} is not a disk image file (mkma install ${o.disk} --size 4G makes one)`);
  // the architecture of the GRUB mkma install put on it
  const arch = o.arch ?? diskArch(disk);
  const machine = MACHINES[arch];
  requireTools(diskBootTools(arch, o.uefi));
  if (!o.uefi && !machine.bios) throw new Error(`${arch} has no BIOS: boot it with --uefi`);
  // another architecture than the host's is emulated
  const accel = arch === hostArch() ? pickAccel(o.env) : 'tcg';
  const disks: Disk[] = [{ path: disk }];
  if (o.testDataDir) {
    const dataDisk = `${disk}.test-data.img`;
    await makeDataDisk(o.testDataDir, dataDisk, TEST_DATA_LABEL);
    disks.push({ path: dataDisk, readonly: true });
  }
  const firmware = o.uefi ? uefiFirmwareFor(arch, disk) : undefined;
  const logPath = o.logPath ?? `${disk}.console.log`;
  const memoryMiB = o.memoryMiB ?? 2048;
  const cpus = o.cpus ?? 2;
  const how = o.uefi ? `UEFI (${machine.uefi.name})` : `BIOS (${machine.bios})`;
  const stage = o.reporter.stage(
    'qemu',
    `${disk} with ${how}, ${accel.toUpperCase()}, ${memoryMiB} MiB, ${cpus} CPUs, console log ${logPath}`,
  );
  let r: BootResult;
  try {
    r = await bootQemu({
      disks,
      firmware,
      machine: machine.machine,
      qemuBinary: machine.qemuBinary,
      cpu: accel === 'tcg' ? machine.tcgCpu : undefined,
      memoryMiB,
      cpus,
      accel,
      interactive: !!o.interactive,
      timeoutSec: o.timeoutSec ?? (o.interactive ? 0 : 600 * machine.timeoutScale),
      logPath,
      successMarker: o.interactive ? undefined : o.testDataDir ? TEST_DONE_MARKER : MULTI_USER_RE,
      waitForPoweroff: !!o.testDataDir,
      respond: o.respond,
      onLine: (line) => {
        o.onLine?.(line);
        if (/mkma\[[\d. ]+\]: phase |LAYER SKIPPED|FATAL|mkma: loading/.test(line)) stage.progress(line.replace(/^.*?(mkma[[:])/, '$1'));
      },
    });
  } finally {
    stage.done();
  }
  return {
    ok: r.ok,
    reason: r.reason,
    accel,
    logPath,
    diskPath: disk,
    durationSec: r.durationSec,
    timings: phaseTimings(r.log),
    log: r.log,
  };
}
