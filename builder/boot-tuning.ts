// systemd settings for a system that boots from RAM (mkma.toml `boot_tuning`, on by default).
// Each one removes boot work that a RAM system's root cannot need; docs/perf-research.md has
// the measurements (bench figure 3, systemd-analyze blame/critical-chain in the guest).
//
// - The needs-update stamps: /etc/.updated and /var/.updated, as systemd-update-done writes
//   them, carrying /usr's mtime. ConditionNeedsUpdate= is then false at boot, so ldconfig,
//   systemd-journal-catalog-update, systemd-sysusers, systemd-hwdb-update and
//   systemd-update-done do not run at every boot to redo the build's work (every boot of a
//   RAM system starts from the image, so every boot was an "update"). When a package is
//   installed after boot, dpkg's trigger touches /usr and they run once again, as on a disk.
// - /etc/machine-id empty, not absent: an absent file (or "uninitialized") makes every boot
//   a first boot (ConditionFirstBoot: systemd-firstboot, preset-all of every unit). An empty
//   file is "initialised": systemd generates an id at each boot. Not a fixed id: the same
//   image boots many machines, and two machines with one id break DHCP client ids and
//   journals. A machine that should keep its id saves it with `mkma persist` (the default
//   rules keep /etc/machine-id). An id a preset wrote is the image's owner's choice and kept.
// - Generators that have nothing to find: GPT partition auto-discovery (the root is an
//   overlay, not a partition), hibernation resume (no swap to resume from), the TPM2 target
//   and the offline-update check.
// - journald keeps the journal in /run only (Storage=volatile): /var/log/journal is RAM too,
//   so systemd-journal-flush would copy the journal into the same RAM a second time, and
//   `mkma persist` leaves /var/log/journal out by default anyway.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runSync } from '../lib/run.js';

export const MASKED_GENERATORS = [
  'systemd-gpt-auto-generator',
  'systemd-hibernate-resume-generator',
  'systemd-tpm2-generator',
  'systemd-system-update-generator',
];

export const JOURNALD_DROPIN = 'etc/systemd/journald.conf.d/50-mkma-ram.conf';
export const JOURNALD_CONF =
  '# mkma (boot_tuning): the journal in RAM once, in /run, not copied to /var/log/journal\n[Journal]\nStorage=volatile\n';

/** The stamp systemd-update-done writes, for a /usr with this mtime. */
export function updatedStamp(usrMtimeNs: bigint): string {
  return (
    '# This file was created by systemd-update-done. The timestamp below is the\n' +
    '# modification time of /usr/ for which the most recent updates of /etc/ and\n' +
    '# /var/ have been applied. See man:systemd-update-done.service(8) for details.\n' +
    `TIMESTAMP_NSEC=${usrMtimeNs}\n`
  );
}

/** What applyBootTuning writes, for the configure step's inputs (new contents rerun it). */
export const BOOT_TUNING_CONTENTS = [MASKED_GENERATORS.join(','), JOURNALD_CONF, updatedStamp(0n)].join('\0');

function writeIfChanged(file: string, content: string): void {
  try {
    if (fs.readFileSync(file, 'utf8') === content) return;
  } catch {
    /* absent */
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
}

function symlinkIfChanged(target: string, link: string): void {
  try {
    if (fs.readlinkSync(link) === target) return;
  } catch {
    /* absent or not a link */
  }
  fs.mkdirSync(path.dirname(link), { recursive: true });
  fs.rmSync(link, { force: true });
  fs.symlinkSync(target, link);
}

/**
 * The needs-update stamps, with /usr's mtime to the nanosecond both in the file and as its
 * own mtime (`touch -r`: Node's utimes goes through a double and loses nanoseconds).
 * systemd compares seconds first, then the file's nanoseconds, then the TIMESTAMP_NSEC line;
 * a cpio base (whole seconds) and an erofs base (nanoseconds) both compare equal: "no update
 * needed". Run after everything that may change /usr (configureSystem runs after presets).
 */
export function stampNeedsUpdate(chroot: string): void {
  const usr = path.join(chroot, 'usr');
  const mtimeNs = fs.statSync(usr, { bigint: true }).mtimeNs;
  for (const d of ['etc', 'var']) {
    const f = path.join(chroot, d, '.updated');
    writeIfChanged(f, updatedStamp(mtimeNs));
    if (fs.statSync(f, { bigint: true }).mtimeNs !== mtimeNs) runSync('touch', ['-m', '-r', usr, f]);
  }
}

/** Everything above, on the tree; idempotent (unchanged files keep their mtimes). */
export function applyBootTuning(chroot: string): void {
  const machineId = path.join(chroot, 'etc/machine-id');
  let id: string | null = null;
  try {
    id = fs.readFileSync(machineId, 'utf8');
  } catch {
    /* absent */
  }
  if (id === null || id.trim() === 'uninitialized') fs.writeFileSync(machineId, '', { mode: 0o444 });
  for (const g of MASKED_GENERATORS) symlinkIfChanged('/dev/null', path.join(chroot, 'etc/systemd/system-generators', g));
  writeIfChanged(path.join(chroot, JOURNALD_DROPIN), JOURNALD_CONF);
  stampNeedsUpdate(chroot);
}

/**
 * boot_tuning = false on a tree tuned by an earlier build (the setting does not make the
 * bootstrap run again): what applyBootTuning added goes. The machine-id stays as it is (empty
 * is also what Debian's mmdebstrap leaves).
 */
export function removeBootTuning(chroot: string): void {
  for (const g of MASKED_GENERATORS) {
    const link = path.join(chroot, 'etc/systemd/system-generators', g);
    try {
      if (fs.readlinkSync(link) === '/dev/null') fs.rmSync(link);
    } catch {
      /* absent or not ours */
    }
  }
  const dropin = path.join(chroot, JOURNALD_DROPIN);
  if (fs.existsSync(dropin) && fs.readFileSync(dropin, 'utf8') === JOURNALD_CONF) fs.rmSync(dropin);
  // the stamps: systemd-update-done writes them at the first boot, never a build
  for (const d of ['etc', 'var']) fs.rmSync(path.join(chroot, d, '.updated'), { force: true });
}
