// `mkma update TARGET [HOSTNAME]`: put a new build of a hostname on its stick, keeping its
// layers; the generation it replaces stays as "previous", with its own menu entry.
//
// The stick's two filesystems cannot change together, so no single rename switches a set of
// kernel, initramfs and base. Instead every generation has its own file names on both
// (ESP /mkma/<host>/g<N>/, data images/<host>/base.g<N>.cpio.zst), and the menu is the switch:
//   0. check the room, counting what the previous generation frees (nothing changed yet);
//   1. the previous generation (N-1) leaves the menu (menu rewritten: N alone), then its files
//      go: two generations fit on the stick, never three;
//   2. generation N+1 is written: its base on the data partition (synced, renamed into place),
//      its kernel and initramfs on the ESP, then its generation.json, then the ESP is flushed;
//   3. the menu is rewritten from the stick: N+1 normal and recovery, N previous;
//   4. base.cpio.zst (what tools and a plain mkma_storage_device= boot read) becomes a hard link
//      to base.g<N+1> by a rename on the data partition.
// A power cut during 0-1 leaves N and maybe N-1 in the menu, all present; during 2, N+1 is
// incomplete and in no menu (the next install or update removes it); during 3, menu.cfg is
// either the old or the new one (grub.cfg falls back to menu.cfg.new while the rename is
// incomplete), and both name complete generations; during 4, base.cpio.zst is N's or N+1's.
// So a power cut at any moment leaves at least one complete set that the menu boots.
//
// Layers written on another base than the new one are named in a warning (each layer's
// manifest records its base: base_data_sha256), and kept.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imageDataSha256 } from '../format/layer-info.js';
import { ManifestError } from '../format/manifest.js';
import { readManifest } from '../format/reader.js';
import { UsageError } from '../lib/errors.js';
import { INSTALL_TOOLS, requireTools } from '../lib/hosttools.js';
import { formatBytes, type Reporter } from '../lib/progress.js';
import { flushDevice, printPartitionTable, rereadPartitions } from './blockdev.js';
import { writeGeneration } from './generation.js';
import type { BuiltImages } from './images.js';
import { grubTools, refuseOtherArch } from './grub.js';
import { DATA_IMAGES_DIR, espGenerationDir, isMkmaTable, MiB, parsePartitionTable } from './layout.js';
import { checkAppend, type GenerationRecord } from './menu.js';
import { openDisk, openStick, type StickSession } from './session.js';
import { hostState, linkCurrentBase, readStick, removeLeftovers, writeMenu, type HostState, type StickState } from './stick.js';
import { checkTarget, gatherFacts, type SystemFacts } from './target.js';

export interface UpdateOptions {
  target: string;
  images: BuiltImages;
  /** the hostname to update (default: the build's); must be the build's */
  hostname?: string;
  /** new extra kernel command line words (default: the current generation's) */
  append?: string[];
  reporter: Reporter;
  system?: SystemFacts;
}

export interface UpdateResult {
  target: string;
  hostname: string;
  /** false: the build is the one already current on the stick; nothing was written */
  updated: boolean;
  generation: number;
  previous: number | null;
  /** the layers kept (all of the hostname's) */
  layers: string[];
  /** those written on another base than the new one (warned about; kept all the same) */
  layersOnOtherBase: string[];
  /** those whose base is not known (written by an older mkma, or unreadable) */
  layersOfUnknownBase: string[];
  durationSec: number;
}

/** Same base, kernel and initramfs (by the sha256s mkma.json and the stick record). */
function sameBuild(g: GenerationRecord, images: BuiltImages): boolean {
  return (
    !!images.baseSha256 &&
    g.base.sha256 === images.baseSha256 &&
    !!g.kernelSha256 &&
    g.kernelSha256 === images.kernelSha256 &&
    !!g.initramfsSha256 &&
    g.initramfsSha256 === images.initramfsSha256
  );
}

/** FAT allocates whole clusters, and a directory takes one: a MiB of slack per generation. */
const SLACK = MiB;

function checkRoom(s: StickSession, h: HostState, images: BuiltImages): void {
  const previous = h.generations[1];
  const espFree = s.esp.freeBytes() + (previous ? previous.kernelBytes + previous.initramfsBytes : 0);
  const espNeed = images.sizes.kernel + images.sizes.initramfs + SLACK;
  const st = fs.statfsSync(s.data.dir);
  const dataFree = st.bavail * st.bsize + (previous ? previous.base.bytes : 0);
  const dataNeed = images.sizes.base + SLACK;
  if (espFree < espNeed) {
    throw new UsageError(
      `update: the ESP of ${s.disk.given} has ${formatBytes(espFree)} for the new kernel and initramfs, which need ${formatBytes(espNeed)}`,
    );
  }
  if (dataFree < dataNeed) {
    throw new UsageError(
      `update: the data partition of ${s.disk.given} has ${formatBytes(dataFree)} for the new base, which needs ${formatBytes(dataNeed)}`,
    );
  }
}

/**
 * Which layers were written on another base than the new one (their manifests' base_data_sha256
 * against the new base's data_sha256): a warning naming them, as their changes were made
 * against files the new base may have changed. They are kept all the same: the user decides.
 * Layers without the field (older mkma) get one line, not a warning each.
 */
export function compareLayerBases(
  hostDir: string,
  layers: string[],
  newBase: string,
  reporter: Pick<Reporter, 'info' | 'warn'>,
): { layersOnOtherBase: string[]; layersOfUnknownBase: string[] } {
  const target = imageDataSha256(newBase);
  const unknown: string[] = [];
  const other: string[] = [];
  for (const name of layers) {
    let written: string | undefined;
    try {
      written = readManifest(path.join(hostDir, name)).baseDataSha256;
    } catch (e) {
      if (!(e instanceof ManifestError)) throw e;
    }
    if (!written || !target) unknown.push(name);
    else if (written !== target) other.push(name);
  }
  if (!target && layers.length) {
    reporter.info(`the new base has no readable manifest: whether the ${layers.length} layer(s) were written on it is not known`);
  } else if (unknown.length) {
    reporter.info(`${unknown.length} layer(s) of unknown base (written by an older mkma): ${unknown.join(', ')}`);
  }
  if (other.length) {
    reporter.warn(
      `${other.length} layer(s) were written on another base than the new one: ${other.join(', ')}. They are kept and ` +
        "applied on the new base; check that what they change still fits it (mkma layers shows each one's base)",
    );
  }
  return { layersOnOtherBase: other, layersOfUnknownBase: unknown };
}

/** The state without a hostname's previous generation (what the menu shows while it is removed). */
function withoutPrevious(state: StickState, hostname: string): StickState {
  return { ...state, hosts: state.hosts.map((h) => (h.hostname === hostname ? { ...h, generations: h.generations.slice(0, 1) } : h)) };
}

export async function update(o: UpdateOptions): Promise<UpdateResult> {
  const started = performance.now();
  requireTools(grubTools(o.images.architecture, INSTALL_TOOLS));
  const hostname = o.hostname ?? o.images.hostname;
  if (hostname !== o.images.hostname) {
    throw new UsageError(
      `update: the build in ${o.images.dir} is for ${o.images.hostname}, not ${hostname} (mkma build ${hostname} makes one)`,
    );
  }
  if (o.append) checkAppend(o.append);
  const facts = gatherFacts(o.target, o.system);
  checkTarget(facts, 'update');
  if (!isMkmaTable(parsePartitionTable(printPartitionTable(o.target)))) {
    throw new UsageError(
      `update: ${o.target} is not an mkma stick (no mkma-bios, mkma-esp, mkma-data partitions): mkma install writes one`,
    );
  }
  const disk = openDisk(o.target);
  let s: StickSession | null = null;
  try {
    rereadPartitions(disk.node, 3);
    s = openStick(disk, { readOnly: true });
    refuseOtherArch(s.esp, o.images.architecture, o.target, 'update');
    const state = readStick(s.esp, s.data.dir, { dataUuid: s.dataUuid, luksUuid: s.luksUuid });
    const h = hostState(state, hostname);
    const current = h?.generations[0];
    if (!h || !current) {
      const others = state.hosts.filter((x) => x.generations.length).map((x) => x.hostname);
      throw new UsageError(
        `update: ${hostname} is not on ${o.target} (it holds: ${others.join(', ') || 'nothing'}); mkma install ${o.target} adds it`,
      );
    }
    if (sameBuild(current, o.images)) {
      o.reporter.info(`${hostname} on ${o.target} already is this build (generation ${current.generation}): nothing to do`);
      return {
        target: o.target,
        hostname,
        updated: false,
        generation: current.generation,
        previous: h.generations[1]?.generation ?? null,
        layers: h.layers,
        layersOnOtherBase: [],
        layersOfUnknownBase: [],
        durationSec: (performance.now() - started) / 1000,
      };
    }
    checkRoom(s, h, o.images);
    const bases = compareLayerBases(path.join(s.data.dir, DATA_IMAGES_DIR, hostname), h.layers, o.images.base, o.reporter);
    s.writable();

    const previous = h.generations[1];
    if (previous) {
      const drop = o.reporter.stage('previous', `generation ${previous.generation} leaves the menu and the stick`);
      writeMenu(s.esp, withoutPrevious(state, hostname));
      flushDevice(s.esp.node);
      h.leftovers.esp.push(espGenerationDir(hostname, previous.generation));
      h.leftovers.data.push(previous.base.file);
      drop.done();
    }
    removeLeftovers(s.esp, s.data.dir, h);

    const next = current.generation + 1;
    const record = writeGeneration(s, o.images, next, o.append ?? current.append, o.reporter);

    const menu = o.reporter.stage('menu', `generation ${next} normal, ${current.generation} previous`);
    const after = readStick(s.esp, s.data.dir, { dataUuid: s.dataUuid, luksUuid: s.luksUuid });
    writeMenu(s.esp, after);
    flushDevice(s.esp.node);
    menu.done();
    linkCurrentBase(path.join(s.data.dir, DATA_IMAGES_DIR, hostname), record.base.file);

    s.close();
    s = null;
    disk.release();
    return {
      target: o.target,
      hostname,
      updated: true,
      generation: next,
      previous: current.generation,
      layers: h.layers,
      ...bases,
      durationSec: (performance.now() - started) / 1000,
    };
  } finally {
    s?.close();
    disk.release();
  }
}
