// `mkma install TARGET`: put a built image on a disk that boots with BIOS and UEFI.
//
// A target without mkma's layout (or with --wipe) is partitioned anew (install/layout.ts),
// after the user confirmed it by typing its name; a stick that already carries mkma's layout
// gets the new hostname added next to the others, whose files, layers and menu entries stay
// as they are. Nothing is written before every check passed (install/target.ts); a failure
// later leaves a clear error, never a "done", and every mount and loop device is undone.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { onCleanup } from '../lib/cleanup.js';
import { UsageError } from '../lib/errors.js';
import { INSTALL_TOOLS, requireTools } from '../lib/hosttools.js';
import { formatBytes, type Reporter } from '../lib/progress.js';
import { runSync } from '../lib/run.js';
import { printPartitionTable, rereadPartitions, type Disk } from './blockdev.js';
import { Esp } from './esp.js';
import { writeGeneration } from './generation.js';
import { efiBootPath, efiGrubFor, grubTools, installGrub, refuseOtherArch } from './grub.js';
import type { BuiltImages } from './images.js';
import {
  DATA_IMAGES_DIR,
  dataBytesNeeded,
  describeNeed,
  diskBytesNeeded,
  espBytesNeeded,
  espHostDir,
  isMkmaTable,
  MIN_ESP_BYTES,
  parsePartitionTable,
  PARTITIONS,
  planDisk,
  sgdiskArgs,
  type PartitionRow,
} from './layout.js';
import { checkAppend, kernelCommandLine, MENU_TIMEOUT_SEC } from './menu.js';
import { openDisk, openStick, type StickSession } from './session.js';
import { ensureGrubCfg, hostState, linkCurrentBase, readStick, removeLeftovers, writeMenu } from './stick.js';
import { checkTarget, describeTarget, gatherFacts, type SystemFacts, type TargetFacts } from './target.js';

export interface InstallOptions {
  target: string;
  images: BuiltImages;
  /** create the target as a disk image file of this size (it must not exist) */
  createBytes?: number;
  espBytes: number;
  /** ext4 label of the data partition */
  label: string;
  /** extra kernel command line words for this hostname's entries */
  append: string[];
  /** repartition even a disk that carries mkma's layout */
  wipe: boolean;
  /** asked after every check passed and before anything is written; throws to stop */
  confirm(what: ConfirmRequest): Promise<void>;
  reporter: Reporter;
  /** the running system's facts (tests give their own) */
  system?: SystemFacts;
}

export interface ConfirmRequest {
  facts: TargetFacts;
  /** "/dev/sdb: SanDisk Cruzer Blade, 14.3 GiB" */
  description: string;
  /** true: everything on the target is erased; false: a hostname is added to an mkma stick */
  erases: boolean;
  /** the hostnames already on the stick (adding) */
  others: string[];
}

export interface InstallResult {
  target: string;
  hostname: string;
  /** a new layout was written (else the hostname was added to an existing stick) */
  partitioned: boolean;
  generation: number;
  espVolumeId: string;
  dataUuid: string;
  /** the normal entry's kernel command line */
  cmdline: string;
  /** the stick's partition table as `sgdisk --print` shows it */
  layout: string;
  /** every hostname on the stick now */
  hosts: string[];
  durationSec: number;
}

export async function install(o: InstallOptions): Promise<InstallResult> {
  const started = performance.now();
  requireTools(grubTools(o.images.architecture, INSTALL_TOOLS));
  checkAppend(o.append);
  if (o.espBytes < MIN_ESP_BYTES) throw new UsageError(`install: --esp-size must be at least ${formatBytes(MIN_ESP_BYTES)} (FAT32)`);
  const need = diskBytesNeeded(o.images.sizes, o.espBytes);
  const needText = describeNeed(o.images.sizes, o.espBytes);

  let facts: TargetFacts;
  let existingTable: PartitionRow[] = [];
  if (o.createBytes !== undefined) {
    if (fs.existsSync(o.target))
      throw new UsageError(
        `install: ${o.target} exists; --size only creates a new disk image file (leave it out to use the file as it is)`,
      );
    if (o.createBytes < need)
      throw new UsageError(`install: --size ${formatBytes(o.createBytes)} is too small: the images need at least ${needText}`);
    facts = { ...gatherFacts(o.target, o.system), kind: 'file', sizeBytes: o.createBytes, model: 'new disk image file' };
  } else {
    facts = gatherFacts(o.target, o.system);
    checkTarget(facts, 'install');
    existingTable = parsePartitionTable(printPartitionTable(o.target));
  }
  const adding = !o.wipe && isMkmaTable(existingTable);
  // a fresh layout needs the whole size; adding is checked against the free space once the stick is open
  if (!adding) checkTarget(facts, 'install', need, needText);

  await o.confirm({ facts, description: describeTarget(facts), erases: !adding, others: [] });

  let keepCreated: (() => void) | null = null;
  if (o.createBytes !== undefined) {
    fs.mkdirSync(path.dirname(path.resolve(o.target)), { recursive: true });
    fs.writeFileSync(o.target, '', { flag: 'wx' });
    fs.truncateSync(o.target, o.createBytes);
    keepCreated = onCleanup(`remove ${o.target} (install did not finish)`, () => fs.rmSync(o.target, { force: true }));
  }
  const disk = openDisk(o.target);
  let session: StickSession | null = null;
  try {
    if (adding) {
      rereadPartitions(disk.node, 3);
      refuseKnownHostname(new Esp(disk.partition(PARTITIONS.esp.number)), o.images.hostname, disk.given);
      refuseOtherArch(new Esp(disk.partition(PARTITIONS.esp.number)), o.images.architecture, disk.given, 'install');
    } else {
      partitionAndFormat(disk, o);
    }
    session = openStick(disk);
    const s = session;

    if (adding) checkRoomToAdd(s, o.images);
    else {
      const g = efiGrubFor(o.images.architecture);
      const grub = o.reporter.stage(
        'bootloader',
        `GRUB for ${g.bios ? 'BIOS (i386-pc) and ' : ''}UEFI (${g.platform}, ${efiBootPath(o.images.architecture)})`,
      );
      const work = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-grub-'));
      try {
        installGrub({ esp: s.esp, diskNode: disk.node, scratchOnDisk: s.data.dir, workDir: work, arch: o.images.architecture });
      } finally {
        fs.rmSync(work, { recursive: true, force: true });
      }
      grub.done();
    }
    ensureGrubCfg(s.esp);

    const record = writeGeneration(s, o.images, 1, o.append, o.reporter);
    linkCurrentBase(path.join(s.data.dir, DATA_IMAGES_DIR, o.images.hostname), record.base.file);

    const menu = o.reporter.stage('menu', 'made from what is on the stick');
    const state = readStick(s.esp, s.data.dir, { dataUuid: s.dataUuid, luksUuid: s.luksUuid });
    const mine = hostState(state, o.images.hostname);
    if (mine) removeLeftovers(s.esp, s.data.dir, mine);
    writeMenu(s.esp, state);
    menu.done(`${state.hosts.length} hostname(s): ${state.hosts.map((h) => h.hostname).join(', ')}`);

    s.close();
    session = null;
    disk.release();
    keepCreated?.();
    return {
      target: o.target,
      hostname: o.images.hostname,
      partitioned: !adding,
      generation: record.generation,
      espVolumeId: state.espVolumeId,
      dataUuid: state.dataUuid,
      cmdline: kernelCommandLine({ dataUuid: state.dataUuid, luksUuid: state.luksUuid, hosts: [], timeoutSec: MENU_TIMEOUT_SEC }, record),
      layout: printPartitionTable(o.target),
      hosts: state.hosts.map((h) => h.hostname),
      durationSec: (performance.now() - started) / 1000,
    };
  } catch (e) {
    session?.close();
    disk.release();
    // a disk image file this run created is half-made: it goes
    if (keepCreated) {
      keepCreated();
      fs.rmSync(o.target, { force: true });
    }
    throw e;
  }
}

function partitionAndFormat(disk: Disk, o: InstallOptions): void {
  const size = Number(runSync('blockdev', ['--getsize64', disk.node]).stdout.trim());
  const plan = planDisk(size, o.espBytes);
  const part = o.reporter.stage(
    'partition',
    `GPT on ${disk.node}: BIOS boot 1 MiB, ESP ${formatBytes(plan.esp.size)}, data ${formatBytes(plan.data.size)}`,
  );
  // the old table and every filesystem signature at its start and end go first
  runSync('wipefs', ['--all', '--force', disk.node]);
  runSync('sgdisk', ['--zap-all', disk.node]);
  runSync('sgdisk', sgdiskArgs(plan, disk.node));
  rereadPartitions(disk.node, 3);
  part.done();
  const fmt = o.reporter.stage('filesystems', `FAT32 ESP, ext4 "${o.label}"`);
  Esp.format(disk.partition(PARTITIONS.esp.number));
  // -m 0: a data partition, nothing reserved for root; the root directory readable by all
  runSync('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', o.label, '-E', 'root_owner=0:0', disk.partition(PARTITIONS.data.number)]);
  fmt.done();
}

function refuseKnownHostname(esp: Esp, hostname: string, given: string): void {
  if (esp.list(espHostDir(hostname))?.some((e) => e.dir)) {
    throw new UsageError(
      `install: ${hostname} is already on ${given}: use mkma update ${given} to put a new build of it there (its layers are kept)`,
    );
  }
}

function checkRoomToAdd(s: StickSession, images: BuiltImages): void {
  const espFree = s.esp.freeBytes();
  const espNeed = espBytesNeeded(images.sizes);
  const st = fs.statfsSync(s.data.dir);
  const dataFree = st.bavail * st.bsize;
  const dataNeed = dataBytesNeeded(images.sizes);
  if (espFree < espNeed || dataFree < dataNeed) {
    throw new UsageError(
      `install: ${s.disk.given} has too little room for ${images.hostname}: the ESP has ${formatBytes(espFree)} free (needs ${formatBytes(espNeed)}), ` +
        `the data partition ${formatBytes(dataFree)} (needs ${formatBytes(dataNeed)}); use another stick, or --wipe to start this one anew`,
    );
  }
}
