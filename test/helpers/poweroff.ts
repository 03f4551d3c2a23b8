// Power loss while `mkma persist` writes (issue 10, "Faults"). The guest saves a large change
// with `mkma persist --yes`; at a random moment of that, QEMU is killed with SIGKILL — the
// machine loses power. Then:
//   - on the host, on a copy of the disk: e2fsck, after replaying the journal, has nothing to
//     fix; every layer under a final name is whole (its manifest reads, the sha256 of its data
//     is the manifest's); every layer that was there before is unchanged (sha256 of the file);
//     a layer that mkma persist had reported saved before the cut is there;
//   - the next boot, from the disk itself (the guest's kernel replays the journal), applies
//     every layer (no LAYER SKIPPED) and reaches multi-user — and saves the next change, which
//     the next kill interrupts. So N trials take N + 1 boots; the last one is not killed.
// The images directory has a space in its name and is given quoted on the kernel command line
// ("mkma_images_path=/my images"): the init and mkma persist must both read it right.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readManifest } from '../../format/reader.js';
import { BASE_NAME, INITRAMFS_NAME, KERNEL_NAME, layerId } from '../../format/names.js';
import { CMDLINE } from '../../lib/contract.js';
import { createReporter } from '../../lib/progress.js';
import { runSync } from '../../lib/run.js';
import { formatKernelParam } from '../../lib/cmdline.js';
import { listDiskEntries, makeDataDisk, makeImagesDisk, readDiskFile } from '../../qemu/disk.js';
import { bootQemu, TEST_DONE_MARKER, type Disk } from '../../qemu/run.js';
import { chooseAccel, DISK_LABEL, TEST_DATA_LABEL } from '../../qemu/smoke.js';
import { VolatileDisk, type VolatileDiskStats } from './volatile-disk.js';

export const IMAGES_PATH = '/my images';
/** Layers kept on the disk from boot to boot (the guest deletes older ones before it saves). */
const KEEP_LAYERS = 1;
/**
 * The change saved in each trial: random (incompressible) data, so that writing it takes a
 * good part of the persist (Node's start and the scan take ~10 s under TCG; 128 MiB took 41 s
 * in all through the volatile disk, 64 MiB about 25 s), plus many small files.
 */
const BLOBS = 8;
const BLOB_MIB = 8;
const SMALL_FILES = 500;
/**
 * How long a persist of that change takes in the guest under TCG, before one is measured
 * (then: the longest seen). Kill moments are drawn uniformly from 0 to 1.1× this after the
 * guest says it starts, so they hit start-up, scan, packing, fsync, rename — and a little after.
 */
const PERSIST_SEC_GUESS = 25;
const DISK_BYTES = 1 << 30;
/** RAM of the guest: the tmpfs (half of it) holds the base, a layer and the change. */
const MEMORY_MIB = 2048;

/**
 * The guest's disk. cache=writeback: QEMU shows the guest a disk with a volatile write cache,
 * so the guest's kernel sends the flushes it sends to real disks that have one (at fsync, at
 * journal commits). A SIGKILL of QEMU loses what a power cut loses inside the machine — the
 * page cache, requests not yet submitted, the journal not yet committed — but by itself
 * nothing the virtual disk acknowledged: QEMU writes through the host's page cache, which
 * outlives the emulator, and no cache= mode changes that (unsafe ignores flushes but still
 * writes through the host's page cache; none and directsync bypass it and lose nothing
 * either). So by default QEMU reaches the image through a VolatileDisk (an NBD server in this
 * process, test/helpers/volatile-disk.ts): what the guest did not flush stays in its memory,
 * and at the cut each such 4 KiB page reaches the image or is lost, at random — a real disk
 * whose cache holds writes in an order of its own. MKMA_POWEROFF_DISK=file: the image file
 * straight (only the guest's own volatile state is lost).
 */
export const DISK_CACHE: Disk['cache'] = 'writeback';
/** At a power cut, the chance of each page the volatile disk holds unflushed to be written anyway. */
const KEEP_AT_CUT = 0.5;

const GUEST_SCRIPT = `set -u
images='${IMAGES_PATH}'
dev=$(blkid -L ${DISK_LABEL})
mkdir -p /run/poweroff
# keep the newest ${KEEP_LAYERS} layers: every boot applies them all, so boot times stay flat
if mount "$dev" /run/poweroff; then
	ls "/run/poweroff$images" | grep -E '^persistence\\..*\\.cpio\\.zst$' | sort | head -n -${KEEP_LAYERS} |
		while IFS= read -r f; do rm -f "/run/poweroff$images/$f" && echo "deleted $f"; done
	umount /run/poweroff
else
	echo "cannot mount $dev"
fi
mkdir -p /srv/poweroff/small
i=0
while [ $i -lt ${BLOBS} ]; do head -c ${BLOB_MIB}M /dev/urandom >/srv/poweroff/blob$i; i=$((i + 1)); done
i=0
while [ $i -lt ${SMALL_FILES} ]; do echo "$i" >/srv/poweroff/small/f$i; i=$((i + 1)); done
read -r up _ </proc/uptime
echo "persist-start uptime=$up"
mkma persist --yes --message "power-off trial" >/run/persist.log 2>&1
status=$?
read -r up _ </proc/uptime
echo "persist exit: $status uptime=$up"
tail -n 4 /run/persist.log
`;

const OUT_PREFIX = 'MKMA-TEST-OUT: ';
const isLayer = (n: string) => /^persistence\..+\.cpio\.zst$/.test(n);
/**
 * A layer by its id: its file name changes with its state (a new layer is on trial, each boot
 * renames it to one try fewer, mkma-boot-good.service to active; docs/FORMAT.md), its bytes do not.
 */
const layerKey = (n: string) => layerId(n) ?? n;
const isTemporary = (n: string) => /^\.persistence\..+\.tmp-/.test(n);

export interface TrialResult {
  trial: number;
  /** seconds after the guest said "persist-start" when QEMU was killed; null: not killed */
  killAtSec: number | null;
  /** seconds the persist took, when it finished before the kill */
  persistSec: number | null;
  /** where the kill landed, as the disk shows it (a file nothing fsynced yet leaves no trace) */
  outcome: 'no trace on the disk' | 'temporary file left' | 'layer complete' | 'persist finished' | 'not killed';
  /** this boot, from the disk the previous kill left: layers applied, multi-user reached */
  boot: { applied: string[]; skipped: string[]; multiUserSec: number | null };
  /** after the kill, on the disk: layers (all verified whole), temporary files, e2fsck */
  disk: { layers: string[]; temporaries: string[]; fsck: string };
  /** the volatile disk's cache at the cut (null: MKMA_POWEROFF_DISK=file) */
  cache: VolatileDiskStats | null;
  bootSec: number;
  problems: string[];
}

export interface PowerOffOptions {
  /** the built test image (vmlinuz, initramfs, base) */
  out: string;
  work: string;
  trials: number;
  seed?: number;
  /** volatile (default): through a VolatileDisk; file: QEMU on the image file */
  disk?: 'volatile' | 'file';
  log: (line: string) => void;
}

export interface PowerOffResult {
  seed: number;
  trials: TrialResult[];
  problems: string[];
}

/** mulberry32: reproducible kill moments for a seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sha256(file: string, bytes?: number): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    for (let pos = 0; bytes === undefined || pos < bytes;) {
      const n = fs.readSync(fd, buf, 0, bytes === undefined ? buf.length : Math.min(buf.length, bytes - pos), pos);
      if (!n) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Why a layer file is not whole, or null: its manifest reads and its data has the manifest's sha256. */
export function layerProblem(file: string): string | null {
  try {
    const m = readManifest(file);
    const got = sha256(file, m.dataBytes);
    return got === m.dataSha256 ? null : `data sha256 ${got} is not the manifest's ${m.dataSha256}`;
  } catch (e) {
    return (e as Error).message;
  }
}

interface DiskState {
  fsck: string;
  fsckClean: boolean;
  names: string[];
  /** layer id (layerKey) → sha256 of the file, for the whole ones */
  layers: Map<string, string>;
  broken: Map<string, string>;
}

/**
 * What the disk holds after a power cut, seen as the next boot will see it: on a copy, the
 * journal replayed (e2fsck -E journal_only), then a full check that must change nothing
 * (e2fsck -fn), then every file of the images directory read out with debugfs.
 */
async function inspectDisk(disk: string, work: string): Promise<DiskState> {
  const copy = path.join(work, 'inspect.img');
  runSync('cp', ['--sparse=always', disk, copy]);
  try {
    const replay = runSync('e2fsck', ['-y', '-E', 'journal_only', copy], { allowFailure: true });
    const check = runSync('e2fsck', ['-fn', copy], { allowFailure: true });
    const fsckClean = (replay.status ?? 8) <= 1 && check.status === 0;
    const fsck = fsckClean
      ? 'clean after the journal replay'
      : `e2fsck: replay exit ${replay.status}, check exit ${check.status}: ${(check.stdout + check.stderr).trim().split('\n').slice(-6).join(' | ')}`;
    const names = (await listDiskEntries(copy, IMAGES_PATH)).map((e) => e.name);
    const layers = new Map<string, string>();
    const broken = new Map<string, string>();
    const tmp = path.join(work, 'layer.tmp');
    for (const name of names.filter(isLayer)) {
      await readDiskFile(copy, `${IMAGES_PATH}/${name}`, tmp);
      const problem = layerProblem(tmp);
      if (problem) broken.set(name, problem);
      else layers.set(layerKey(name), sha256(tmp));
    }
    fs.rmSync(tmp, { force: true });
    return { fsck, fsckClean, names, layers, broken };
  } finally {
    fs.rmSync(copy, { force: true });
  }
}

export async function runPowerOffTrials(o: PowerOffOptions): Promise<PowerOffResult> {
  const seed = o.seed ?? Date.now() % 1_000_000;
  const next = random(seed);
  fs.rmSync(o.work, { recursive: true, force: true });
  fs.mkdirSync(o.work, { recursive: true, mode: 0o700 });
  const disk = path.join(o.work, 'disk.img');
  const data = path.join(o.work, 'test-data.img');
  await makeImagesDisk({
    diskPath: disk,
    imagesDir: o.out,
    label: DISK_LABEL,
    fresh: true,
    files: [BASE_NAME],
    imagesPath: IMAGES_PATH,
    sizeBytes: DISK_BYTES,
  });
  const dataDir = path.join(o.work, 'data');
  fs.mkdirSync(dataDir);
  fs.writeFileSync(path.join(dataDir, 'run.sh'), GUEST_SCRIPT);
  await makeDataDisk(dataDir, data, TEST_DATA_LABEL);
  const kernel = path.join(o.out, KERNEL_NAME);
  const initrd = path.join(o.out, INITRAMFS_NAME);
  const accel = await chooseAccel(process.env, kernel, initrd, o.work, createReporter({ quiet: true }));
  const append = [`${CMDLINE.storageDevice}=LABEL=${DISK_LABEL}`, formatKernelParam(CMDLINE.imagesPath, IMAGES_PATH), 'mkma_test'].join(
    ' ',
  );

  const volatile = (o.disk ?? 'volatile') === 'volatile';
  o.log(
    `power-off trials: ${o.trials}, seed ${seed}, ${accel.toUpperCase()}, disk cache=${DISK_CACHE}` +
      `${volatile ? `, volatile write cache (each unflushed page kept at the cut with p=${KEEP_AT_CUT})` : ', the image file'}, ` +
      `change ${BLOBS}×${BLOB_MIB} MiB random + ${SMALL_FILES} small files, kernel command line: ${append}`,
  );
  /** layer name → sha256 of its file, as last seen whole on the disk */
  const known = new Map<string, string>();
  let persistSec = PERSIST_SEC_GUESS;
  const results: TrialResult[] = [];
  for (let trial = 1; trial <= o.trials + 1; trial++) {
    const last = trial > o.trials;
    const ac = new AbortController();
    let started: number | null = null;
    let killAt: number | null = null;
    let finishedSec: number | null = null;
    let timer: NodeJS.Timeout | undefined;
    const cache = volatile ? new VolatileDisk(disk, path.join(o.work, 'disk.sock'), KEEP_AT_CUT, next) : null;
    await cache?.start();
    const booting = bootQemu({
      kernel,
      initrd,
      accel,
      memoryMiB: MEMORY_MIB,
      cpus: 2,
      interactive: false,
      timeoutSec: 900,
      append,
      disks: [
        { path: disk, cache: DISK_CACHE, nbdSocket: cache?.socket },
        { path: data, readonly: true },
      ],
      logPath: path.join(o.work, `boot${trial}.log`),
      successMarker: TEST_DONE_MARKER,
      waitForPoweroff: true,
      signal: ac.signal,
      onLine: (line) => {
        if (line.includes(`${OUT_PREFIX}persist-start`) && started === null) {
          started = Date.now();
          if (!last) {
            killAt = next() * 1.1 * persistSec;
            timer = setTimeout(() => ac.abort(), killAt * 1000);
          }
        }
        if (line.includes(`${OUT_PREFIX}persist exit: 0`) && started !== null) finishedSec = (Date.now() - started) / 1000;
      },
    });
    // the power cut's draws happen when QEMU's connection drops: wait for them
    const boot = await booting.finally(async () => {
      await cache?.stop();
    });
    const cacheStats = cache ? { ...cache.stats } : null;
    clearTimeout(timer);
    const killed = boot.reason.startsWith('killed on request');
    const problems: string[] = [];
    const outLines = boot.log
      .split('\n')
      .filter((l) => l.includes(OUT_PREFIX))
      .map((l) => l.slice(l.indexOf(OUT_PREFIX) + OUT_PREFIX.length));

    // 1. this boot, from the disk as the previous kill left it
    const applied = [...boot.log.matchAll(/phase layer-applied (\S+)/g)].map((m) => layerKey(m[1]));
    const skipped = [...boot.log.matchAll(/LAYER SKIPPED ([^:\s]+)/g)].map((m) => m[1]);
    const multiUser = /MKMA-TEST: multi-user reached uptime=([\d.]+)/.exec(boot.log);
    if (!multiUser) problems.push(`boot ${trial} did not reach multi-user (${boot.reason})`);
    if (skipped.length) problems.push(`boot ${trial} skipped layers: ${skipped.join(', ')}`);
    const expected = [...known.keys()].sort();
    if (JSON.stringify([...new Set(applied)].sort()) !== JSON.stringify(expected)) {
      problems.push(`boot ${trial} applied [${applied.join(', ')}], the disk holds [${expected.join(', ')}]`);
    }
    for (const l of outLines) if (l.startsWith('deleted ')) known.delete(layerKey(l.slice('deleted '.length)));
    if (started === null) problems.push(`boot ${trial}: the guest never started its persist (${boot.reason})`);
    if (!killed && !boot.ok) problems.push(`boot ${trial} failed: ${boot.reason}`);
    if (finishedSec !== null) persistSec = Math.max(persistSec, finishedSec);

    // 2. the disk after the power cut (or the clean power-off of the last boot)
    const state = await inspectDisk(disk, o.work);
    if (!state.fsckClean) problems.push(`trial ${trial}: ${state.fsck}`);
    for (const [name, why] of state.broken) problems.push(`trial ${trial}: ${name} is under its final name but not whole: ${why}`);
    for (const [name, sha] of known) {
      if (!state.layers.has(name)) problems.push(`trial ${trial}: the earlier layer ${name} is gone`);
      else if (state.layers.get(name) !== sha)
        problems.push(`trial ${trial}: the earlier layer ${name} changed (sha256 ${state.layers.get(name)}, was ${sha})`);
    }
    const fresh = [...state.layers.keys()].filter((n) => !known.has(n));
    if (fresh.length > 1) problems.push(`trial ${trial}: ${fresh.length} new layers from one persist: ${fresh.join(', ')}`);
    // a layer mkma persist reported saved must survive the power cut (fsync, rename, fsync
    // of the directory: a missing one loses it here)
    if (finishedSec !== null && !fresh.length)
      problems.push(`trial ${trial}: mkma persist reported its layer saved, but after the power cut it is not on the disk`);
    const temporaries = state.names.filter(isTemporary);
    if (last && (temporaries.length || !fresh.length))
      problems.push(`the last boot (not killed) left ${temporaries.length} temporary file(s) and ${fresh.length} new layer(s)`);
    for (const [name, sha] of state.layers) known.set(name, sha);

    const outcome: TrialResult['outcome'] = !killed
      ? last
        ? 'not killed'
        : 'persist finished'
      : fresh.length
        ? 'layer complete'
        : temporaries.length
          ? 'temporary file left'
          : 'no trace on the disk';
    const r: TrialResult = {
      trial,
      killAtSec: killed ? killAt : null,
      persistSec: finishedSec,
      outcome,
      boot: { applied, skipped, multiUserSec: multiUser ? Number(multiUser[1]) : null },
      disk: { layers: [...state.layers.keys()].sort(), temporaries, fsck: state.fsck },
      cache: cacheStats,
      bootSec: boot.durationSec,
      problems,
    };
    results.push(r);
    o.log(describeTrial(r, last));
  }
  return { seed, trials: results, problems: results.flatMap((r) => r.problems) };
}

export function describeTrial(r: TrialResult, last = false): string {
  const kill =
    r.killAtSec === null
      ? last
        ? 'final boot, not killed'
        : 'not killed: persist finished first'
      : `killed ${r.killAtSec.toFixed(1)} s into the persist`;
  const took = r.persistSec === null ? '' : ` (the persist took ${r.persistSec.toFixed(1)} s)`;
  return (
    `${last ? 'final' : `trial ${r.trial}`}: ${kill}${took} → ${r.outcome}; booted with ${r.boot.applied.length} layer(s) applied, ` +
    `multi-user at ${r.boot.multiUserSec ?? '—'} s; ` +
    `${r.cache && !r.cache.clean ? `cut: ${r.cache.lostAtCut} unflushed page(s) lost, ${r.cache.keptAtCut} kept; ` : ''}` +
    `disk: ${r.disk.layers.length} whole layer(s), ${r.disk.temporaries.length} temporary, ` +
    `${r.disk.fsck}; ${r.bootSec.toFixed(0)} s${r.problems.length ? `; PROBLEMS: ${r.problems.join('; ')}` : ''}`
  );
}
