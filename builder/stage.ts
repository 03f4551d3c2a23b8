// The one mechanism behind every stage of `mkma build` (mkosi's config → stages flow, with the
// reasons dracut and mkosi users expect from an incremental build): a stage declares its
// inputs; `decide` compares them with the inputs recorded for its current result and checks
// that this result is still there; the stage runs or reuses it; what it made is recorded.
// Every stage says why it ran or was reused, in its progress line and in `--json`'s `stages`.
//
// The record is OUT/.cache/stages.json, one file for the whole build:
//   tree     OUT/chroot, the working tree:
//              state    which result of the tree stages (bootstrap, presets) it holds, as a
//                       chain key (builder/snapshots.ts); null while one of them changes it
//              lineage  a random stamp, new whenever a tree stage made or restored it: the
//                       configure steps, which edit the tree in place, hold for one lineage
//              stamp    a random stamp, new whenever mkma finished changing the tree; null
//                       while it changes (an interrupted build leaves null: nothing made from
//                       an unknown tree is reused). Outputs made from the tree have it as input.
//              steps    the configure steps applied to it, with their inputs
//   stages   per stage, the inputs of its current result; for a stage that makes a file, the
//            file as written (size, mtime, inode, sha256) and what the build result says of it
//
// Why stamps instead of hashing the tree: OUT/chroot is mkma's private working tree (it lives
// in the output directory next to the cache; the image's users never touch it, and every
// program that writes to it — mmdebstrap, presets, the kernel and configure steps — is started
// by mkma, which sets the stamp to null before and to a new one after). So "the stamp is
// unchanged" implies "the tree is unchanged", at the cost of a JSON read instead of hashing
// ~10 000 files (about 250 MB) on every build. Someone editing OUT/chroot by hand must build
// with --rebuild (or delete OUT/.cache/stages.json).
//
// Outputs are verified by size, mtime (ns) and inode against the record instead of rehashing:
// rehashing the ~90 MB base costs about 0.3 s, a tenth of a whole unchanged rebuild, and any
// write, truncation or replacement (cp, mv, an editor, a new build) changes one of the three.
// The recorded sha256 is the one computed when the file was written and goes into mkma.json.
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** What a stage depends on, by name: each value a digest or a short literal. */
export type StageInputs = Record<string, string>;

export type StageStatus = 'ran' | 'reused' | 'skipped';

export interface StageReport {
  /** "bootstrap", "configure", "preset <name>", "pack base", "initramfs", "kernel" */
  stage: string;
  status: StageStatus;
  /** why it ran or was reused */
  reason?: string;
}

export interface Decision {
  run: boolean;
  reason: string;
}

/** A file as it is on disk: any rewrite, truncation or replacement changes one of these. */
export interface FileStamp {
  bytes: number;
  /** stat mtime in nanoseconds, as a decimal string (exact) */
  mtimeNs: string;
  ino: number;
}

export interface StageRecord {
  inputs: StageInputs;
  /** the file the stage made, as written */
  file?: FileStamp & { sha256: string };
  /** what the build result reports about the result (entries, modules…), kept for a reuse */
  details?: Record<string, unknown>;
}

export interface TreeRecord {
  state: string | null;
  lineage: string | null;
  stamp: string | null;
  steps: Record<string, StageInputs>;
}

export interface BuildRecord {
  version: 2;
  tree: TreeRecord;
  stages: Record<string, StageRecord>;
}

const EMPTY: BuildRecord = { version: 2, tree: { state: null, lineage: null, stamp: null, steps: {} }, stages: {} };

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

export interface DecideOptions {
  rebuild: boolean;
  /** why no recorded result can be used, whatever the inputs (the tree was replaced…) */
  invalid?: string;
  /** with the inputs unchanged: why the recorded result is gone (a file changed…), or null */
  verify?: (rec: StageRecord) => string | null;
  /** said of a reused result after "inputs unchanged" ("base.cpio.zst as recorded") */
  reusedAs?: string;
}

/**
 * Whether a stage must run, and why: after --rebuild, when its recorded result cannot hold
 * (`invalid`), when nothing is recorded, when an input changed, or when the result recorded is
 * no longer there (`verify`). Otherwise its result is reused.
 */
export function decide(inputs: StageInputs, rec: StageRecord | undefined, o: DecideOptions): Decision {
  if (o.rebuild) return { run: true, reason: '--rebuild' };
  if (o.invalid) return { run: true, reason: o.invalid };
  if (!rec) return { run: true, reason: 'no record of an earlier run' };
  const changed = changedInputs(inputs, rec.inputs);
  if (changed.length) return { run: true, reason: `${changed.join(', ')} changed` };
  const gone = o.verify?.(rec);
  if (gone) return { run: true, reason: gone };
  return { run: false, reason: o.reusedAs ? `inputs unchanged, ${o.reusedAs}` : 'inputs unchanged' };
}

/** stat of an output file, or null when it is missing (or not a regular file). */
export function statOutput(file: string): FileStamp | null {
  try {
    const st = fs.statSync(file, { bigint: true });
    if (!st.isFile()) return null;
    return { bytes: Number(st.size), mtimeNs: String(st.mtimeNs), ino: Number(st.ino) };
  } catch {
    return null;
  }
}

/** decide's options for a stage that makes `file`: reused only while it is the file recorded. */
export function fileOptions(file: string, rebuild: boolean): DecideOptions {
  const name = path.basename(file);
  return {
    rebuild,
    verify: (rec) => {
      const st = statOutput(file);
      if (!st) return `${name} is missing`;
      const was = rec.file;
      if (!was || st.bytes !== was.bytes || st.mtimeNs !== was.mtimeNs || st.ino !== was.ino) {
        return `${name} is not the file recorded (changed since it was built)`;
      }
      return null;
    },
    reusedAs: `${name} as recorded`,
  };
}

/** OUT/.cache/stages.json: read once per build, written whenever the tree or a result changes. */
export class StageRecords {
  readonly file: string;
  record: BuildRecord;
  /** false when there was no (readable) record: a first build, or one by an older mkma */
  existed: boolean;

  constructor(cacheDir: string) {
    this.file = path.join(cacheDir, 'stages.json');
    const r = StageRecords.read(this.file);
    this.existed = r !== null;
    this.record = r ?? structuredClone(EMPTY);
  }

  static read(file: string): BuildRecord | null {
    try {
      const r = JSON.parse(fs.readFileSync(file, 'utf8')) as BuildRecord;
      if (r.version !== 2 || typeof r.tree !== 'object' || typeof r.tree.steps !== 'object' || typeof r.stages !== 'object') return null;
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

  get tree(): Readonly<TreeRecord> {
    return this.record.tree;
  }

  /** Whether the tree is in the state the record describes (not left half-changed by an interrupted build). */
  get treeKnown(): boolean {
    return !this.existed || (this.record.tree.stamp !== null && this.record.tree.lineage !== null);
  }

  stage(name: string): StageRecord | undefined {
    return this.record.stages[name];
  }

  /**
   * Before mkma changes OUT/chroot: nothing recorded about its content holds until
   * `treeChanged`. `replacing`: a tree stage replaces it, so it holds no state of the chain
   * either until `treeHolds` (an edit in place keeps the state: the steps track it).
   */
  treeChanging(replacing = false): void {
    const t = this.record.tree;
    if (t.stamp === null && t.lineage === null && (!replacing || t.state === null)) return;
    this.record.tree = { ...t, lineage: null, stamp: null, ...(replacing ? { state: null } : {}) };
    this.save();
  }

  /** After a tree stage: OUT/chroot holds chain state `state`; the stage that made it is recorded with it. */
  treeHolds(state: string, stage?: { name: string } & StageRecord): void {
    this.record.tree.state = state;
    if (stage) {
      const { name, ...rec } = stage;
      this.record.stages[name] = rec;
    }
    this.save();
  }

  /** After mkma changed OUT/chroot: a new stamp, its lineage, and the steps now applied. */
  treeChanged(lineage: string, steps: Record<string, StageInputs>): void {
    this.record.tree = { ...this.record.tree, lineage, stamp: newStamp(), steps };
    this.save();
  }

  /** Records a stage's result (written with the next save). */
  setStage(name: string, rec: StageRecord): void {
    this.record.stages[name] = rec;
  }

  save(): void {
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(this.record, null, 2) + '\n');
    fs.renameSync(tmp, this.file);
  }
}
