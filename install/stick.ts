// An mkma stick as it is: which partitions, which hostnames with which complete generations,
// and what is left over from an interrupted run. Read from the stick every time (the menu is
// made from this, never from memory), and written through here: generations, the menu, the
// base link.
//
// A generation is complete when its generation.json is on the ESP (written last, after its
// kernel and initramfs, and after its base is on the data partition and synced) and its base
// is on the data partition with the recorded size. Anything else under a hostname's
// directories (a g<N> without generation.json, a base.g<N> no complete generation names, a
// `.tmp` file) is what an interrupted install or update left, and is removed by the next one.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { MkmaError } from '../lib/errors.js';
import type { Stage } from '../lib/progress.js';
import { fsyncDir } from '../format/writer.js';
import type { Disk } from './blockdev.js';
import { probe } from './blockdev.js';
import { Esp } from './esp.js';
import {
  baseFileName,
  DATA_IMAGES_DIR,
  ESP_PATHS,
  espGenerationDir,
  espHostDir,
  GENERATION_FILE,
  generationOfBase,
  generationOfDir,
  HOSTNAME_RE,
  PARTITIONS,
  type PartitionSpec,
} from './layout.js';
import { APPEND_WORD_RE, grubCfg, menuCfg, MENU_TIMEOUT_SEC, type GenerationRecord, type HostMenu } from './menu.js';

export class StickError extends MkmaError {}

/** Which of the disk's partitions are mkma's, by GPT name and type (blkid's probe). */
export function isMkmaPartition(node: string, spec: PartitionSpec): boolean {
  const p = probe(node);
  return p.PART_ENTRY_NAME === spec.name && p.PART_ENTRY_TYPE?.toLowerCase() === spec.typeGuid;
}

/** True when the disk carries mkma's three partitions (install adds to it instead of repartitioning). */
export function hasMkmaLayout(disk: Disk): boolean {
  return (Object.values(PARTITIONS) as PartitionSpec[]).every(
    (s) => fs.existsSync(disk.partition(s.number)) && isMkmaPartition(disk.partition(s.number), s),
  );
}

function parseRecord(text: string, where: string): GenerationRecord {
  let r: GenerationRecord;
  try {
    r = JSON.parse(text) as GenerationRecord;
  } catch (e) {
    throw new StickError(`${where} is not JSON: ${(e as Error).message}`);
  }
  const ok =
    typeof r === 'object' &&
    r !== null &&
    typeof r.hostname === 'string' &&
    HOSTNAME_RE.test(r.hostname) &&
    Number.isInteger(r.generation) &&
    r.generation > 0 &&
    typeof r.base?.file === 'string' &&
    r.base.file === baseFileName(r.generation) &&
    Number.isInteger(r.base.bytes) &&
    Array.isArray(r.append) &&
    r.append.every((w) => typeof w === 'string' && APPEND_WORD_RE.test(w)) &&
    typeof r.installedAt === 'string' &&
    /^[0-9A-Za-z.+~_-]*$/.test(String(r.kernelVersion ?? ''));
  if (!ok) throw new StickError(`${where} is not a generation record mkma wrote`);
  return r;
}

export interface HostState extends HostMenu {
  /** ESP directories and data files to remove: incomplete or superseded generations, temporary files */
  leftovers: { esp: string[]; data: string[] };
  /** the layers in the host's images directory */
  layers: string[];
}

export interface StickState {
  espVolumeId: string;
  dataUuid: string;
  luksUuid?: string;
  hosts: HostState[];
}

/** Reads every hostname's generations from the ESP and the mounted data partition. */
export function readStick(esp: Esp, dataDir: string, ids: { dataUuid: string; luksUuid?: string }): StickState {
  const hosts = new Map<string, HostState>();
  const host = (name: string) => {
    let h = hosts.get(name);
    if (!h) hosts.set(name, (h = { hostname: name, generations: [], leftovers: { esp: [], data: [] }, layers: [] }));
    return h;
  };
  for (const e of esp.list(ESP_PATHS.images) ?? []) {
    if (!e.dir || !HOSTNAME_RE.test(e.name)) continue;
    const h = host(e.name);
    for (const g of esp.list(espHostDir(e.name)) ?? []) {
      const gen = generationOfDir(g.name);
      if (!g.dir || gen === null) continue;
      const dir = espGenerationDir(e.name, gen);
      const files = new Set((esp.list(dir) ?? []).map((f) => f.name.toLowerCase()));
      const text = files.has(GENERATION_FILE) ? esp.readText(`${dir}/${GENERATION_FILE}`) : null;
      const record = text === null ? null : parseRecord(text, `ESP ${dir}/${GENERATION_FILE}`);
      const base = path.join(dataDir, DATA_IMAGES_DIR, e.name, baseFileName(gen));
      const complete =
        record !== null &&
        record.hostname === e.name &&
        record.generation === gen &&
        files.has(FILES.kernel) &&
        files.has(FILES.initramfs) &&
        fs.statSync(base, { throwIfNoEntry: false })?.size === record.base.bytes;
      if (complete) h.generations.push(record);
      else h.leftovers.esp.push(dir);
    }
  }
  const imagesRoot = path.join(dataDir, DATA_IMAGES_DIR);
  for (const name of fs.existsSync(imagesRoot) ? fs.readdirSync(imagesRoot) : []) {
    if (!HOSTNAME_RE.test(name) || !fs.statSync(path.join(imagesRoot, name)).isDirectory()) continue;
    const h = host(name);
    for (const f of fs.readdirSync(path.join(imagesRoot, name))) {
      if (f.startsWith(FILES.layerPrefix) && f.endsWith(FILES.layerSuffix)) h.layers.push(f);
      const gen = generationOfBase(f);
      if ((gen !== null && !h.generations.some((g) => g.generation === gen)) || f.endsWith('.tmp')) h.leftovers.data.push(f);
    }
  }
  for (const h of hosts.values()) {
    h.generations.sort((a, b) => b.generation - a.generation);
    // only two are kept; older complete ones are what an interrupted update had not removed yet
    for (const old of h.generations.splice(2)) {
      h.leftovers.esp.push(espGenerationDir(h.hostname, old.generation));
      h.leftovers.data.push(old.base.file);
    }
  }
  return { espVolumeId: esp.volumeId(), ...ids, hosts: [...hosts.values()].sort((a, b) => (a.hostname < b.hostname ? -1 : 1)) };
}

export function hostState(s: StickState, hostname: string): HostState | undefined {
  return s.hosts.find((h) => h.hostname === hostname);
}

// --- writing ------------------------------------------------------------------------------

function fsyncFile(p: string): void {
  const fd = fs.openSync(p, 'r+');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Copies `src` to `dest` on the data partition: under a `.tmp` name, synced, renamed, the
 * directory synced: `dest` exists complete or not at all. Returns the copy's sha256.
 */
export function copyDurably(src: string, dest: string, stage?: Stage): string {
  const tmp = `${dest}.tmp`;
  const total = fs.statSync(src).size;
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(4 << 20);
  const rfd = fs.openSync(src, 'r');
  const wfd = fs.openSync(tmp, 'w', 0o644);
  try {
    let done = 0;
    for (;;) {
      const n = fs.readSync(rfd, buf, 0, buf.length, null);
      if (!n) break;
      hash.update(buf.subarray(0, n));
      for (let off = 0; off < n;) off += fs.writeSync(wfd, buf, off, n - off);
      done += n;
      stage?.progress(`${path.basename(dest)}: ${Math.floor((done * 100) / Math.max(total, 1))}%`);
    }
    fs.fsyncSync(wfd);
  } finally {
    fs.closeSync(rfd);
    fs.closeSync(wfd);
  }
  fs.renameSync(tmp, dest);
  fsyncDir(path.dirname(dest));
  return hash.digest('hex');
}

/** Points base.cpio.zst (what tools and a plain `mkma_storage_device=` boot read) at a generation's base: a hard link, renamed into place. */
export function linkCurrentBase(hostDir: string, baseFile: string): void {
  const tmp = path.join(hostDir, `${FILES.base}.tmp`);
  fs.rmSync(tmp, { force: true });
  fs.linkSync(path.join(hostDir, baseFile), tmp);
  fsyncFile(tmp);
  fs.renameSync(tmp, path.join(hostDir, FILES.base));
  fsyncDir(hostDir);
}

/** Writes grub.cfg when it is missing or not the one this mkma writes. */
export function ensureGrubCfg(esp: Esp): void {
  if (esp.readText(ESP_PATHS.grubCfg) !== grubCfg()) esp.writeText(ESP_PATHS.grubCfg, grubCfg());
}

/**
 * Rewrites the menu from the stick's state: menu.cfg.new complete first, then menu.cfg
 * deleted and menu.cfg.new renamed (grub.cfg reads whichever exists). The caller flushes the
 * ESP's device afterwards.
 */
export function writeMenu(esp: Esp, state: StickState): string {
  const text = menuCfg({ dataUuid: state.dataUuid, luksUuid: state.luksUuid, hosts: state.hosts, timeoutSec: MENU_TIMEOUT_SEC });
  esp.mkdirs(ESP_PATHS.grubDir);
  esp.writeText(ESP_PATHS.menuCfgNew, text);
  esp.remove(ESP_PATHS.menuCfg);
  esp.rename(ESP_PATHS.menuCfgNew, ESP_PATHS.menuCfg);
  return text;
}

/** Removes what an interrupted run left (never a layer, never a complete current or previous generation). */
export function removeLeftovers(esp: Esp, dataDir: string, h: HostState): void {
  for (const dir of h.leftovers.esp) esp.remove(dir);
  const hostDir = path.join(dataDir, DATA_IMAGES_DIR, h.hostname);
  for (const f of h.leftovers.data) fs.rmSync(path.join(hostDir, f), { force: true });
  if (h.leftovers.data.length) fsyncDir(hostDir);
}
