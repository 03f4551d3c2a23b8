// Stage skipping for `mkma build`: every stage after the bootstrap runs only when a content
// hash of exactly its inputs differs from what was recorded when its current result was made
// (as mkosi and dracut users expect from an incremental build), and says why it ran or not.
//
// The record is OUT/.cache/stages.json:
//   tree      a stamp for the content of OUT/chroot: a fresh random id each time mkma finished
//             changing the tree, null while mkma is changing it (an interrupted build leaves
//             null: nothing is reused from an unknown tree). Outputs made from the tree (base,
//             initramfs) have the stamp among their inputs.
//   lineage   the same for the tree as the bootstrap and the presets left it (the chain of
//             builder/cache.ts): steps that edit the tree in place (kernel modules, configure,
//             mkma's own files) are valid for one lineage. A bootstrap, a snapshot restored or a
//             preset run starts a new lineage, so all of them run again.
//   steps     per tree step, the inputs it was last applied with
//   outputs   per output file, its inputs and what was written: size, mtime, inode, sha256
//
// Why a stamp instead of hashing the tree: OUT/chroot is mkma's private working tree (it lives
// in the output directory next to the cache; the image's users never touch it, and every
// program that writes to it — mmdebstrap, presets, the kernel and configure steps — is started
// by mkma, which sets the stamp to null before and to a new id after). So "the stamp is
// unchanged" implies "the tree is unchanged", at the cost of a JSON read instead of hashing
// ~10 000 files (about 250 MB) on every build. Someone editing OUT/chroot by hand must build
// with --rebuild (or delete OUT/.cache/stages.json).
//
// Outputs are verified by size, mtime (ns) and inode against the record instead of rehashing:
// rehashing the ~90 MB base costs about 0.3 s, a tenth of a whole unchanged rebuild, and any
// write, truncation or replacement (cp, mv, an editor, a new build) changes one of the three.
// The recorded sha256 is the one computed when the file was written and goes into mkma.json.
import { randomBytes, createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** What a stage depends on, by name: each value a digest or a short literal. */
export type StageInputs = Record<string, string>;

export interface OutputRecord {
  inputs: StageInputs;
  bytes: number;
  sha256: string;
  /** stat mtime in nanoseconds, as a decimal string (exact) */
  mtimeNs: string;
  ino: number;
  /** what the build result reports about the output (entries, modules…), kept for a reuse */
  details?: Record<string, unknown>;
}

export interface StagesRecord {
  version: 1;
  tree: string | null;
  lineage: string | null;
  steps: Record<string, StageInputs>;
  outputs: Record<string, OutputRecord>;
}

export type Decision =
  | { run: true; reason: string }
  | { run: false; reason: string };

const EMPTY: StagesRecord = { version: 1, tree: null, lineage: null, steps: {}, outputs: {} };

/** A new random stamp (tree or lineage). */
export function newStamp(): string {
  return randomBytes(12).toString('hex');
}

/** sha256 of a canonical encoding of the parts (order matters). */
export function digest(...parts: Array<string | Buffer>): string {
  const h = createHash('sha256');
  for (const p of parts) {
    h.update(String(Buffer.byteLength(p)));
    h.update(':');
    h.update(p);
  }
  return h.digest('hex');
}

/** The names of the inputs that differ (added, removed or changed), sorted. */
export function changedInputs(now: StageInputs, before: StageInputs): string[] {
  const keys = new Set([...Object.keys(now), ...Object.keys(before)]);
  return [...keys].filter((k) => now[k] !== before[k]).sort();
}

function describeChange(names: string[]): string {
  return `${names.join(', ')} changed`;
}

/**
 * Whether a step that edits the tree in place must run: not when it was applied with the same
 * inputs (the tree lineage among them) and the tree is in a known state.
 */
export function decideStep(
  inputs: StageInputs,
  before: StageInputs | undefined,
  o: { rebuild: boolean; treeKnown: boolean; /** why the tree is not the one the steps were applied to */ replaced?: string },
): Decision {
  if (o.rebuild) return { run: true, reason: '--rebuild' };
  if (o.replaced) return { run: true, reason: o.replaced };
  if (!o.treeKnown) return { run: true, reason: 'the tree was left unfinished by an interrupted build' };
  if (!before) return { run: true, reason: 'no record of an earlier run' };
  const changed = changedInputs(inputs, before);
  if (changed.length) return { run: true, reason: describeChange(changed) };
  return { run: false, reason: 'inputs unchanged' };
}

/** stat of an output file, or null when it is missing (or not a regular file). */
export function statOutput(file: string): { bytes: number; mtimeNs: string; ino: number } | null {
  try {
    const st = fs.statSync(file, { bigint: true });
    if (!st.isFile()) return null;
    return { bytes: Number(st.size), mtimeNs: String(st.mtimeNs), ino: Number(st.ino) };
  } catch {
    return null;
  }
}

/**
 * Whether an output must be made again: yes when its inputs changed, or when the file is not
 * exactly the one recorded (missing, or another size, mtime or inode: rewritten or replaced).
 */
export function decideOutput(inputs: StageInputs, before: OutputRecord | undefined, file: string, o: { rebuild: boolean }): Decision {
  if (o.rebuild) return { run: true, reason: '--rebuild' };
  if (!before) return { run: true, reason: 'no record of an earlier run' };
  const changed = changedInputs(inputs, before.inputs);
  if (changed.length) return { run: true, reason: describeChange(changed) };
  const st = statOutput(file);
  if (!st) return { run: true, reason: `${path.basename(file)} is missing` };
  if (st.bytes !== before.bytes || st.mtimeNs !== before.mtimeNs || st.ino !== before.ino) {
    return { run: true, reason: `${path.basename(file)} is not the file recorded (changed since it was built)` };
  }
  return { run: false, reason: `inputs unchanged, ${path.basename(file)} as recorded` };
}

/** OUT/.cache/stages.json: read once per build, written whenever the tree or an output changes. */
export class StageStore {
  readonly file: string;
  record: StagesRecord;
  /** false when there was no (readable) record: a first build, or one by an older mkma */
  existed: boolean;

  constructor(cacheDir: string) {
    this.file = path.join(cacheDir, 'stages.json');
    const r = StageStore.read(this.file);
    this.existed = r !== null;
    this.record = r ?? structuredClone(EMPTY);
  }

  static read(file: string): StagesRecord | null {
    try {
      const r = JSON.parse(fs.readFileSync(file, 'utf8')) as StagesRecord;
      if (r.version !== 1 || typeof r.steps !== 'object' || typeof r.outputs !== 'object') return null;
      return r;
    } catch {
      return null;
    }
  }

  /** Forget everything (--rebuild). */
  reset(): void {
    this.record = structuredClone(EMPTY);
    this.existed = false;
  }

  /** Whether the tree is in the state the record describes (not left half-changed by an interrupted build). */
  get treeKnown(): boolean {
    return !this.existed || (this.record.tree !== null && this.record.lineage !== null);
  }

  /** Before mkma changes OUT/chroot: nothing recorded about the tree holds until `treeChanged`. */
  treeChanging(): void {
    if (this.record.tree === null && this.record.lineage === null) return;
    this.record.tree = null;
    this.record.lineage = null;
    this.save();
  }

  /** After mkma changed OUT/chroot: a new tree stamp (and lineage), and the steps now applied. */
  treeChanged(o: { lineage: string; steps: Record<string, StageInputs> }): void {
    this.record.tree = newStamp();
    this.record.lineage = o.lineage;
    this.record.steps = o.steps;
    this.save();
  }

  setOutput(name: string, rec: OutputRecord): void {
    this.record.outputs[name] = rec;
  }

  save(): void {
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(this.record, null, 2) + '\n');
    fs.renameSync(tmp, this.file);
  }
}
