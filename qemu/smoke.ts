// The smoke boot behind `mkma qemu` and MKMA_QEMU_TEST=1: images on a virtual disk, boot,
// read the console, pass/fail with the boot phase timings.
import { FILES } from '../lib/contract.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Reporter } from '../lib/progress.js';
import { BASE_NAME, BUILD_INFO_NAME, INITRAMFS_NAME, KERNEL_NAME, layerId } from '../format/names.js';
import { hostArch } from '../lib/arch.js';
import { QEMU_TOOLS, requireTools, type HostTool } from '../lib/hosttools.js';
import { ACCEL_ENV, pickAccel, type Accel } from './accel.js';
import { makeDataDisk, makeImagesDisk } from './disk.js';
import { machineFor, MACHINES, type Arch, type MachineProfile } from './machine.js';
import { bootQemu, formatTimings, MULTI_USER_MARKER, phaseTimings, TEST_DONE_MARKER, type BootResult, type PhaseTimings } from './run.js';

export const DISK_LABEL = 'MKMA';
export const IMAGES_PATH = '/mkma';
export const TEST_DATA_LABEL = 'MKMA-TEST';
/** a boot's time limit on amd64, scaled per architecture (qemu/machine.ts timeoutScale) */
export const SMOKE_TIMEOUT_SEC = 600;

export interface SmokeOptions {
  out: string;
  reporter: Reporter;
  env: NodeJS.ProcessEnv;
  /** where the images come from (default: out); every base + persistence.* file there goes on the disk */
  imagesDir?: string;
  timeoutSec?: number;
  memoryMiB?: number;
  cpus?: number;
  fresh?: boolean;
  interactive?: boolean;
  /** a directory with run.sh: put on a disk labelled MKMA-TEST, run by the guest after multi-user */
  testDataDir?: string;
  /** extra kernel command line */
  append?: string;
  /** where the console log goes (default OUT/qemu/console.log) */
  logPath?: string;
  /** the image's architecture (default: mkma.json's, else amd64) */
  arch?: Arch;
  /** more QEMU options (qemu/run.ts QemuArgsOptions.extraArgs) */
  extraArgs?: string[];
}

export interface SmokeResult {
  ok: boolean;
  reason: string;
  accel: Accel;
  logPath: string;
  diskPath: string;
  durationSec: number;
  timings: PhaseTimings;
  log: string;
}

let kvmVerdict: boolean | null = null;

/**
 * KVM can be present and still hang (nested virtualisation): unless MKMA_QEMU_ACCEL forces a
 * choice, a KVM pick is confirmed by booting the kernel to a deliberate panic (1-2 s under
 * KVM), and TCG is used if that does not finish in time.
 */
export async function chooseAccel(
  env: NodeJS.ProcessEnv,
  kernel: string,
  initrd: string,
  workDir: string,
  reporter: Reporter,
  arch: Arch = 'amd64',
): Promise<Accel> {
  // another architecture than the host's is emulated, whatever /dev/kvm offers
  if (arch !== hostArch()) {
    if (env[ACCEL_ENV]?.trim() === 'kvm') reporter.warn(`${ACCEL_ENV}=kvm: a ${arch} guest on this ${hostArch()} host runs under TCG`);
    return 'tcg';
  }
  const picked = pickAccel(env);
  if (picked === 'tcg' || env[ACCEL_ENV]?.trim()) return picked;
  if (kvmVerdict === null) {
    const r = await bootQemu({
      kernel,
      initrd,
      disks: [],
      append: 'panic=-1 rdinit=/mkma-kvm-probe',
      memoryMiB: 256,
      cpus: 1,
      accel: 'kvm',
      interactive: false,
      timeoutSec: 20,
      logPath: path.join(workDir, 'kvm-probe.log'),
      successMarker: 'Kernel panic',
      failureMarkers: [],
    });
    kvmVerdict = r.ok;
    if (!r.ok) reporter.warn(`KVM at /dev/kvm did not boot a kernel within 20 s (${r.reason}); using TCG. Set ${ACCEL_ENV}=kvm to insist.`);
  }
  return kvmVerdict ? 'kvm' : 'tcg';
}

function imageFiles(dir: string): string[] {
  return (
    fs
      .readdirSync(dir)
      // base.erofs / base.squashfs: a build with base_format erofs / squashfs boots from it
      .filter((n) => n === BASE_NAME || n === FILES.baseErofs || n === FILES.baseSquashfs || layerId(n) !== null)
      .sort()
  );
}

/** The architecture OUT's image was built for: mkma.json's configuration (amd64 when it does not say). */
export function imageArch(out: string): Arch {
  let info: { config?: { architecture?: unknown } };
  try {
    info = JSON.parse(fs.readFileSync(path.join(out, BUILD_INFO_NAME), 'utf8'));
  } catch {
    return 'amd64';
  }
  return machineFor(String(info.config?.architecture ?? 'amd64')).arch;
}

/** QEMU_TOOLS with the emulator of `m` in place of the x86 one. */
export function smokeTools(m: MachineProfile): HostTool[] {
  return [
    { command: m.qemuBinary, pkg: m.qemuPackage, why: 'boots the image for the smoke test' },
    ...QEMU_TOOLS.filter((t) => !t.command.startsWith('qemu-system-')),
  ];
}

export async function smokeBoot(o: SmokeOptions): Promise<SmokeResult> {
  const out = path.resolve(o.out);
  const machine = MACHINES[o.arch ?? imageArch(out)];
  requireTools(smokeTools(machine));
  const kernel = path.join(out, KERNEL_NAME);
  const initrd = path.join(out, INITRAMFS_NAME);
  for (const f of [kernel, initrd, path.join(o.imagesDir ?? out, BASE_NAME)]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run mkma build --out ${o.out} first`);
  }
  // root's only: its disks hold the base (/etc/shadow) and the layers the guest saves
  const work = path.join(out, 'qemu');
  fs.mkdirSync(work, { recursive: true, mode: 0o700 });
  const accel = await chooseAccel(o.env, kernel, initrd, work, o.reporter, machine.arch);

  const diskPath = path.join(work, 'disk.img');
  const imagesDir = path.resolve(o.imagesDir ?? out);
  const disk = await makeImagesDisk({
    diskPath,
    imagesDir,
    label: DISK_LABEL,
    fresh: !!o.fresh,
    files: imageFiles(imagesDir),
    imagesPath: IMAGES_PATH,
  });
  if (disk.carried.length)
    o.reporter.info(`keeping ${disk.carried.length} layer(s) saved on the disk in earlier runs (--fresh drops them)`);
  const disks = [{ path: diskPath }];
  if (o.testDataDir) {
    const dataDisk = path.join(work, 'test-data.img');
    await makeDataDisk(o.testDataDir, dataDisk, TEST_DATA_LABEL);
    disks.push({ path: dataDisk });
  }

  const logPath = o.logPath ?? path.join(work, 'console.log');
  const append = [
    `mkma_storage_device=LABEL=${DISK_LABEL}`,
    `mkma_images_path=${IMAGES_PATH}`,
    o.interactive ? '' : 'mkma_test',
    o.append ?? '',
  ]
    .filter(Boolean)
    .join(' ');
  const stage = o.reporter.stage(
    'qemu',
    `${machine.arch} ${machine.machine}, ${accel.toUpperCase()}, ${o.memoryMiB ?? 2048} MiB, ${o.cpus ?? 2} CPUs, console log ${logPath}`,
  );
  let r: BootResult;
  try {
    r = await bootQemu({
      kernel,
      initrd,
      disks,
      append,
      memoryMiB: o.memoryMiB ?? 2048,
      cpus: o.cpus ?? 2,
      accel,
      machine: machine.machine,
      qemuBinary: machine.qemuBinary,
      console: machine.console,
      cpu: accel === 'tcg' ? machine.tcgCpu : undefined,
      extraArgs: o.extraArgs,
      interactive: !!o.interactive,
      timeoutSec: o.timeoutSec ?? (o.interactive ? 0 : SMOKE_TIMEOUT_SEC * machine.timeoutScale),
      logPath,
      // with a test script, wait until it is done and the guest has powered off (its writes are on the disk)
      successMarker: o.interactive ? undefined : o.testDataDir ? TEST_DONE_MARKER : MULTI_USER_MARKER,
      waitForPoweroff: !!o.testDataDir,
      onLine: (line) => {
        if (/mkma\[[\d. ]+\]: phase |LAYER SKIPPED|FATAL/.test(line)) stage.progress(line.replace(/^.*?(mkma\[)/, '$1'));
      },
    });
  } finally {
    stage.done();
  }
  const timings = phaseTimings(r.log);
  return { ok: r.ok, reason: r.reason, accel, logPath, diskPath, durationSec: r.durationSec, timings, log: r.log };
}

export function describeSmoke(r: SmokeResult): string {
  return [
    `boot test ${r.ok ? 'PASSED' : 'FAILED'} (${r.accel.toUpperCase()}, ${r.durationSec.toFixed(1)} s)${r.ok ? '' : `: ${r.reason}`}`,
    formatTimings(r.timings),
    `console log: ${r.logPath}`,
  ].join('\n');
}
