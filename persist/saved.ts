// Persisting twice in one boot: what earlier saves of this boot wrote, as a virtual layer
// between the lower tree and the upperdir.
//
// The upperdir keeps everything changed since boot, saved or not. Scanned against the lower
// tree alone, a second persist would offer the first save's changes again, and would miss what
// the first save wrote and the owner removed since: a file added, saved, then deleted leaves
// nothing in the upperdir (no whiteout: there is nothing below to hide), yet the next boot
// would bring it back from the first layer. So after each save we record, in /run (a tmpfs:
// this boot only), every path the layer wrote with a stat signature taken before it was read,
// and every path it deleted. The next scan is corrected by that record (applySaved):
//   - an entry whose signature is unchanged is not offered again (a directory stays as the
//     parent of what is below it);
//   - an entry changed since is offered, as modified (or properties only) of the saved one;
//   - a directory recreated since (another inode) is a replaced directory: its whole current
//     contents are saved again under an `opaque` (what was saved below it is gone);
//   - a saved path that is gone from the upperdir becomes a deletion;
//   - a deletion saved and still a whiteout is not offered again.
// Signatures use the inode and ctime (any write, chmod, chown or xattr change moves ctime), so
// nothing that changed is taken as saved. A crash between the layer and the record only makes
// the next persist save too much again, never too little.
//
// The record names the layers it describes, and they are matched by id (format/names.ts), so a
// change of state that the next boot still applies (`mkma layers bless`: trial → active, pin,
// disable then enable) keeps the record valid. A layer the next boot does not apply counts as
// gone: removed, disabled (`mkma layers rollback`), failed, or on trial with no tries left. A
// layer compacted since counts as present in the compacted layer that covers its id. If they are all gone, the record is dropped and
// everything since boot is offered; if only some are, it is refused (a layer saving only what
// changed since on top of the others would miss what the gone ones held, and a layer saving
// everything since boot could bring back what the owner deleted).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RUNTIME } from '../lib/contract.js';
import { MkmaError } from '../lib/errors.js';
import { listImages } from '../format/images.js';
import { layerRange } from '../format/compacted.js';
import { appliedAtBoot, layerId, naturalKey, parseLayerName } from '../format/names.js';
import type { ChangeEntry, EntryType, ScanResult } from './model.js';
import type { LayerPlan } from './write.js';

/** A path as the saved layers left it: ['d'] deleted, or written with its signature. */
type SavedEntry = ['d'] | ['x', EntryType, string];

export interface SavedRecord {
  version: 1;
  /** /proc/sys/kernel/random/boot_id when it was written: a record of another boot is void */
  bootId: string;
  upper: string;
  /** the layers whose changes the record holds, oldest first */
  layers: string[];
  /** raw path (latin1) → what the saved layers have there */
  entries: Record<string, SavedEntry>;
}

export class SavedRecordError extends MkmaError {}

function bootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** The record's file for an upperdir: keyed by its device and inode (one overlay, one record). */
export function savedRecordPath(upper: string, dir: string = RUNTIME.savedThisBoot): string {
  const st = fs.statSync(upper);
  return path.join(dir, `upper-${st.dev}-${st.ino}.json`);
}

/** Reads the record of `upper`, or null when there is none (or it is of another boot or upperdir). */
export function readSavedRecord(upper: string, dir?: string): SavedRecord | null {
  let text: string;
  try {
    text = fs.readFileSync(savedRecordPath(upper, dir), 'latin1');
  } catch {
    return null;
  }
  try {
    const r = JSON.parse(text) as SavedRecord;
    if (r.version !== 1 || r.bootId !== bootId() || r.upper !== fs.realpathSync(upper)) return null;
    return r;
  } catch {
    return null; // a damaged record: as if none (the next persist saves everything since boot)
  }
}

/** Whether two lists name the same layers (by id: a state change renames, the layer stays). */
export function sameLayers(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((n, i) => (layerId(n) ?? n) === (layerId(b[i]) ?? b[i]));
}

/**
 * The record, checked against the images directory it will be saved to: its layers matched by
 * id among those the next boot applies (see the top of this file), and named by their current
 * file names; null (and removed) when none of them is applied any more; an error when only
 * some are.
 */
export function checkSavedRecord(upper: string, imagesDir: string, dir?: string): SavedRecord | null {
  const r = readSavedRecord(upper, dir);
  if (!r) return null;
  // id → current file name, of the layers the next boot applies
  const appliedNames = listImages(imagesDir).layers.filter((n) => appliedAtBoot(parseLayerName(n)!));
  const applied = new Map(appliedNames.map((n) => [layerId(n)!, n]));
  const compacted = appliedNames.map((n) => ({ n, r: layerRange(n)! })).filter((c) => c.r.compacted);
  // A layer compacted since (mkma layers compact) lives on in the layer that replaced it, which
  // gives the same tree: the record still describes what the images hold. Counting it as gone
  // would drop the record, and a file saved and then deleted in this boot would come back from
  // the compacted layer (nothing below it for a deletion to hide, so none would be saved).
  const now = (l: string) => {
    const id = layerId(l) ?? l;
    const k = naturalKey(id);
    return applied.get(id) ?? compacted.find((c) => naturalKey(c.r.first) <= k && k <= naturalKey(c.r.last))?.n;
  };
  const here = r.layers.filter((l) => now(l) !== undefined);
  if (here.length === r.layers.length) return { ...r, layers: [...new Set(r.layers.map((l) => now(l)!))] };
  if (here.length === 0) {
    fs.rmSync(savedRecordPath(upper, dir), { force: true });
    return null;
  }
  const gone = r.layers.filter((l) => now(l) === undefined);
  throw new SavedRecordError(
    `layer(s) saved earlier in this boot are no longer applied at boot from ${imagesDir} (removed, disabled or failed): ${gone.join(', ')} (while ` +
      `${here.join(', ')} still is). A new layer cannot tell what they held; save after a reboot, or remove ` +
      `${savedRecordPath(upper, dir)} to save everything changed since boot again.`,
  );
}

/** Signature of an upperdir entry: what changes whenever the entry does. */
function signatureOf(st: fs.BigIntStats, xattrs: Array<[string, string]>): string {
  if (st.isDirectory()) return `${st.ino}:${st.mode}:${st.uid}:${st.gid}:${JSON.stringify(xattrs)}`;
  return `${st.ino}:${st.mode}:${st.uid}:${st.gid}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

function lstatBig(p: Buffer): fs.BigIntStats | undefined {
  try {
    return fs.lstatSync(p, { bigint: true, throwIfNoEntry: false }) ?? undefined;
  } catch {
    return undefined;
  }
}

const abs = (upper: string, rel: string) => Buffer.concat([Buffer.from(upper), Buffer.from('/' + rel, 'latin1')]);
const parentOf = (p: string) => {
  const slash = p.lastIndexOf('/');
  return slash < 0 ? '' : p.slice(0, slash);
};
const isBelow = (p: string, dir: string) => p.startsWith(dir + '/');
/** preorder, siblings by bytes: "/" sorts before any other byte of a name */
const preorderKey = (p: string) => p.replace(/\//g, '\0');

function deletion(p: string, lowerType: EntryType | undefined): ChangeEntry {
  const e: ChangeEntry = {
    path: p,
    kind: 'deleted',
    type: 'whiteout',
    size: 0,
    totalSize: 0,
    mode: 0o20000,
    uid: 0,
    gid: 0,
    mtime: 0,
    xattrs: [],
    hardlinks: [],
  };
  if (lowerType) e.lowerType = lowerType;
  return e;
}

/**
 * The scan, corrected by what earlier saves of this boot wrote (see the top of this file). The
 * result is what a layer on top of those saves needs; `lower` is looked at only for a saved
 * path that vanished from the upperdir behind overlayfs' back (then reported, not deleted).
 */
export function applySaved(scan: ScanResult, record: SavedRecord | null): ScanResult {
  if (!record || !Object.keys(record.entries).length) return scan;
  const upper = scan.upper;
  const saved = record.entries;
  const kept: ChangeEntry[] = [];
  const dropped = new Set<string>();
  // directories recreated since they were saved: everything below is saved again (opaque)
  let fresh: string | null = null;
  const inUpper = new Set<string>();
  for (const e of scan.entries) {
    inUpper.add(e.path);
    if (fresh !== null && isBelow(e.path, fresh)) {
      kept.push(e);
      continue;
    }
    fresh = null;
    const rec = saved[e.path];
    if (!rec) {
      kept.push(e);
      continue;
    }
    if (e.type === 'whiteout') {
      if (rec[0] === 'd') dropped.add(e.path);
      else kept.push(e);
      continue;
    }
    if (rec[0] === 'd') {
      kept.push(e);
      continue;
    }
    const st = lstatBig(abs(upper, e.path));
    const now = st ? signatureOf(st, e.xattrs) : '';
    const [, type, sig] = rec;
    const ino = sig.slice(0, sig.indexOf(':'));
    if (e.type === 'dir') {
      if (type === 'dir' && st && String(st.ino) === ino) {
        kept.push({ ...e, kind: now === sig ? 'container' : 'metadata' });
      } else {
        kept.push({ ...e, kind: 'replaced', lowerType: type });
        fresh = e.path;
      }
      continue;
    }
    if (now === sig) {
      dropped.add(e.path);
      continue;
    }
    // changed since it was saved: relative to the saved entry, properties only when type,
    // size and mtime are as saved (ino:mode:uid:gid:size:mtime:ctime)
    const [, , , , size, mtime] = sig.split(':');
    const sameData = type === e.type && st && String(st.size) === size && String(st.mtimeNs) === mtime && String(st.ino) === ino;
    kept.push({ ...e, kind: sameData ? 'metadata' : 'modified', lowerType: type });
  }

  // saved paths gone from the upperdir: deletions (the highest one of a subtree that went)
  const skipped = [...scan.skipped];
  const recreated = new Set(kept.filter((e) => e.kind === 'replaced').map((e) => e.path));
  for (const [p, rec] of Object.entries(saved)) {
    if (rec[0] !== 'x' || inUpper.has(p)) continue;
    // only the highest path of a subtree that went: a parent gone too has its own deletion
    const parent = parentOf(p);
    if (parent !== '' && !inUpper.has(parent)) continue;
    // below a directory recreated since: its opaque removes what was saved there
    let a = p;
    let underFresh = false;
    while (a !== '' && !underFresh) {
      underFresh = recreated.has(a);
      a = parentOf(a);
    }
    if (underFresh) continue;
    const pst = parent === '' ? lstatBig(Buffer.from(upper)) : lstatBig(abs(upper, parent));
    if (!pst?.isDirectory()) continue;
    if (lstatBig(abs(upper, p))) continue; // there after all (appeared since the scan)
    if (scan.lower !== null && lstatBig(abs(scan.lower, p))) {
      skipped.push({
        path: p,
        reason: 'saved earlier in this boot, then removed from the upperdir behind overlayfs (the lower file shows again); not saved',
      });
      continue;
    }
    kept.push(deletion(p, rec[1]));
  }

  kept.sort((a, b) => {
    const ka = preorderKey(a.path);
    const kb = preorderKey(b.path);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  // hardlinks to entries no longer offered, and subtree sizes, follow the new entry list
  const index = new Map<string, number>();
  kept.forEach((e, i) => index.set(e.path, i));
  const entries = kept.map((e) => {
    const links = e.hardlinks.length ? e.hardlinks.filter((h) => !dropped.has(h)) : e.hardlinks;
    return { ...e, hardlinks: links, totalSize: e.size };
  });
  let bytes = 0;
  for (let i = entries.length - 1; i >= 0; i--) {
    bytes += entries[i].size;
    const p = index.get(parentOf(entries[i].path));
    if (p !== undefined && parentOf(entries[i].path) !== entries[i].path) entries[p].totalSize += entries[i].totalSize;
  }
  return { ...scan, entries, skipped, stats: { ...scan.stats, entries: entries.length, bytes } };
}

/**
 * Signatures of what a plan is about to write, taken before the writer reads anything: a file
 * changed while it is written is then offered again by the next persist (never taken as saved).
 */
export function signaturesBefore(upper: string, plan: LayerPlan): Map<string, SavedEntry> {
  const out = new Map<string, SavedEntry>();
  for (const e of plan.write) {
    const st = lstatBig(abs(upper, e.path));
    if (st) out.set(e.path, ['x', e.type, signatureOf(st, e.xattrs)]);
  }
  return out;
}

/**
 * After `layer` was written: the record with its deletions, replaced directories and written
 * entries, written atomically (a temporary file renamed over the old record).
 */
export function recordSave(
  upper: string,
  previous: SavedRecord | null,
  layer: string,
  plan: LayerPlan,
  written: Map<string, SavedEntry>,
  dir: string = RUNTIME.savedThisBoot,
): SavedRecord {
  const entries: Record<string, SavedEntry> = { ...(previous?.entries ?? {}) };
  const removeBelow = (d: string) => {
    for (const p of Object.keys(entries)) if (isBelow(p, d)) delete entries[p];
  };
  for (const d of plan.opaque) removeBelow(d);
  for (const d of plan.deleted) {
    removeBelow(d);
    entries[d] = ['d'];
  }
  for (const [p, s] of written) entries[p] = s;
  const record: SavedRecord = {
    version: 1,
    bootId: bootId(),
    upper: fs.realpathSync(upper),
    layers: [...(previous?.layers ?? []), layer],
    entries,
  };
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = savedRecordPath(upper, dir);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(record), { encoding: 'latin1', mode: 0o600 });
  fs.renameSync(tmp, file);
  return record;
}
