// What the stages of one `mkma build` share: the configuration, OUT and its staging directory,
// the build record (builder/stage.ts), the chain of tree states (builder/snapshots.ts), the
// working tree's lineage, and the stages reported so far. `openBuild` makes it before anything
// is touched, and refuses early when OUT cannot take the build.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { configHash } from '../../config/load.js';
import type { Preset } from '../../config/preset.js';
import type { Config } from '../../config/types.js';
import { BASE_NAME, BUILD_INFO_NAME } from '../../format/names.js';
import { MkmaError } from '../../lib/errors.js';
import { formatBytes, type Reporter, type Stage } from '../../lib/progress.js';
import { configureInputs, mkmaFingerprint, mkmaVersion } from '../configure.js';
import { presetHash } from '../presets.js';
import { chainKeys, presetInputs, Snapshots, type CachePlan } from '../snapshots.js';
import { digest, newStamp, StageRecords, type Decision, type StageInputs, type StageReport } from '../stage.js';

export interface BuildOptions {
  config: Config;
  out: string;
  rebuild: boolean;
  /** false: no tree snapshots between presets (--no-snapshots; default true) */
  snapshots?: boolean;
  hostKernel: boolean;
  reporter: Reporter;
  /** applied in order after configure (config/preset.ts loadPresets) */
  presets?: Preset[];
  /** offer retry / skip / shell / abort when a preset fails (stdin and stdout are a terminal) */
  interactive?: boolean;
}

export class BuildError extends MkmaError {}

/** The tree stages (the bootstrap, then each preset) and where the build starts among them. */
export interface TreeChain extends CachePlan {
  /** keys[0] the bootstrapped tree, keys[i] the tree after preset i */
  keys: string[];
  /** each tree stage's inputs, in the same order */
  inputs: StageInputs[];
}

/** OUT/chroot during this build: the lineage its configure steps hold for, and whether it changed. */
export class WorkingTree {
  /** why no configure step recorded before holds for it (bootstrapped, restored, presets run) */
  replaced?: string;
  lineage = '';
  /** changed by this build: it gets a new stamp when the presets are done */
  touched = false;
  /** the configure steps applied to it, with their inputs */
  steps: Record<string, StageInputs> = {};

  constructor(
    private readonly records: StageRecords,
    /** read before anything marks the tree as being changed */
    readonly known: boolean,
  ) {}

  /** After the bootstrap stage: what it did to the tree decides the lineage. */
  settle(o: { replaced?: string; touched: boolean }): void {
    this.replaced = o.replaced;
    const was = this.records.tree.lineage;
    this.lineage = o.replaced || !this.known || !was ? newStamp() : was;
    this.touched = o.touched;
  }

  /** Why no configure step recorded before holds, whatever its inputs (undefined: they may). */
  get stale(): string | undefined {
    return this.replaced ?? (this.known ? undefined : 'the tree was left unfinished by an interrupted build');
  }

  /** Before an edit of the tree: the stamp goes until `commit`. */
  touch(): void {
    if (!this.touched) this.records.treeChanging();
    this.touched = true;
  }

  /** The tree is final for this build: a new stamp when it changed. */
  commit(): void {
    if (this.touched) this.records.treeChanged(this.lineage, this.steps);
  }

  /** The stamp of the final tree: an input of everything made from it. */
  get stamp(): string {
    return this.records.tree.stamp!;
  }
}

export interface BuildContext {
  options: BuildOptions;
  config: Config;
  presets: Preset[];
  rebuild: boolean;
  out: string;
  chroot: string;
  /** outputs are made here and renamed into OUT when every stage succeeded */
  staging: string;
  reporter: Reporter;
  records: StageRecords;
  snapshots: Snapshots;
  chain: TreeChain;
  tree: WorkingTree;
  version: string;
  /** mkma's version and the fingerprint of its files: an input of every stage mkma's code shapes */
  self: string;
  /** the stages so far, for the result */
  reports: StageReport[];
}

/** A file stage's result, to be put in place and recorded. */
export interface Output<D extends Record<string, unknown> = Record<string, unknown>> {
  key: 'base' | 'initramfs' | 'kernel' | 'baseImage';
  /** the stage's name in the record */
  stage: string;
  /** its file name in OUT */
  file: string;
  decision: Decision;
  inputs: StageInputs;
  /** what the result reports about it, kept in the record for a reuse */
  details: D;
}

export const GiB = 2 ** 30;

/**
 * mkdir -p one component at a time (Node's recursive mkdir spins forever under /proc); the
 * last one, OUT, for root only: it holds the image's secrets (see restrictOutput).
 */
function mkdirParents(dir: string): void {
  const missing: string[] = [];
  let d = path.resolve(dir);
  while (!fs.existsSync(d)) {
    missing.unshift(d);
    d = path.dirname(d);
  }
  for (const m of missing) fs.mkdirSync(m, { mode: m === missing[missing.length - 1] ? 0o700 : 0o777 });
}

/** Modes of what holds the image's secrets: /etc/shadow, keys, the image users' files. */
export const SECRET_FILE_MODE = 0o600;
export const SECRET_DIR_MODE = 0o700;

/**
 * base.cpio.zst and mkma.json are written 0600 (pack-base, outputs); the cache (snapshots of the
 * tree) and QEMU's disks (they hold the base) are made 0700 here. OUT/chroot is the image's own
 * tree, with the image's owners and modes: a user the image creates may have the uid of another
 * user of this host. OUT is 0700 when mkma creates it; an existing OUT open to others is its
 * owner's choice, and gets a warning.
 */
function restrictOutput(out: string, reporter: Reporter): void {
  fs.mkdirSync(path.join(out, '.cache'), { recursive: true, mode: SECRET_DIR_MODE });
  for (const dir of [path.join(out, '.cache'), path.join(out, 'qemu')]) {
    if (fs.existsSync(dir)) fs.chmodSync(dir, SECRET_DIR_MODE);
  }
  // a base made by an older mkma, reused as it is (a chmod keeps size, mtime and inode)
  for (const name of [BASE_NAME, BUILD_INFO_NAME]) {
    if (fs.existsSync(path.join(out, name))) fs.chmodSync(path.join(out, name), SECRET_FILE_MODE);
  }
  if (fs.statSync(out).mode & 0o007) {
    reporter.warn(
      `${out} is open to other users: ${path.join(out, 'chroot')} holds the image's files with the image's owners (chmod 700 ${out})`,
    );
  }
}

/** Refuses early, before anything is touched, when OUT cannot take the build. */
export function checkOutputDir(out: string, needBytes: number): void {
  try {
    mkdirParents(out);
    const probe = path.join(out, `.mkma-write-test-${process.pid}`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
  } catch (e) {
    throw new BuildError(
      `output directory ${out} is not writable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): choose another with --out`,
    );
  }
  const st = fs.statfsSync(out);
  const free = st.bavail * st.bsize;
  if (free < needBytes) {
    throw new BuildError(
      `output directory ${out} has ${formatBytes(free)} free; this build needs about ${formatBytes(needBytes)}: free some space or choose another with --out`,
    );
  }
}

/**
 * The tree stages' inputs and chain keys: K0 the configuration (the bootstrap), K(i) preset i
 * on top of K(i-1). What configure applies before the presets (hostname, root password) joins
 * the first preset's inputs only when there are presets.
 */
function treeChain(o: BuildOptions, presets: Preset[], snapshots: Snapshots, state: string | null): TreeChain {
  const hash = configHash(o.config, [o.hostKernel ? 'host-kernel' : 'image-kernel']);
  const settings = configureInputs(o.config);
  const configured = presets.length ? digest(settings.hostname, settings['root password']) : '';
  const hashes = presets.map(presetHash);
  const keys = chainKeys(hash, hashes, configured);
  const inputs = [{ configuration: hash }, ...hashes.map((h, i) => presetInputs(keys[i], h, i === 0 ? configured : ''))];
  const plan: CachePlan = o.rebuild ? { start: -1, from: null } : snapshots.plan(keys, state);
  return { keys, inputs, ...plan };
}

export function openBuild(o: BuildOptions): BuildContext {
  const out = path.resolve(o.out);
  const presets = o.presets ?? [];
  const snapshots = new Snapshots(out);
  const records = new StageRecords(snapshots.dir);
  const chain = treeChain(o, presets, snapshots, records.tree.state);
  checkOutputDir(out, chain.start >= 0 ? 0.5 * GiB : 2 * GiB);
  restrictOutput(out, o.reporter);
  const staging = path.join(out, '.staging');
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true, mode: SECRET_DIR_MODE });
  if (o.rebuild) records.reset();
  const version = mkmaVersion();
  return {
    options: o,
    config: o.config,
    presets,
    rebuild: o.rebuild,
    out,
    chroot: snapshots.chroot,
    staging,
    reporter: o.reporter,
    records,
    snapshots,
    chain,
    tree: new WorkingTree(records, records.treeKnown),
    version,
    self: `${version} ${mkmaFingerprint().hash}`,
    reports: [],
  };
}

/** A stage's progress line: what it does and why when it runs, why its result is reused otherwise. */
export function announce(b: BuildContext, name: string, d: Decision, what: string): Stage {
  return b.reporter.stage(name, d.run ? `${what} (${d.reason})` : `reused: ${d.reason}`);
}

/** Ends the stage's progress line (`summary` of what it did) and adds it to the result's `stages`. */
export function report(b: BuildContext, name: string, d: Decision, stage?: Stage, summary?: string): void {
  stage?.done(summary ?? (d.run ? undefined : 'reused'));
  b.reports.push({ stage: name, status: d.run ? 'ran' : 'reused', reason: d.reason });
}
