// The tree stages' results (the bootstrap, then each preset): states of OUT/chroot, so that a
// rebuild after changing preset N starts from the tree as it was before preset N instead of
// bootstrapping again.
//
// States form a chain of keys: K0 = the configuration hash (config/load.ts configHash: what
// the bootstrapped tree depends on), K(i) = sha256(K(i-1), hash of preset i) where a preset's
// hash covers its file, its environment variables' values, and the contents of its shared
// directories, files folder and hooks. OUT/chroot itself is the working tree; the build record
// (builder/stage.ts, tree.state) says which state it holds, null while a tree stage changes it,
// so an interrupted build never passes a half-done tree for a finished one.
//
// Snapshots are taken lazily, just before a preset runs: OUT/.cache/snapshots/<K(i-1)> is
// `cp -a --reflink=auto` of the tree before preset i. The state after the last preset needs
// none (it is OUT/chroot), so a build with N presets keeps at most N snapshots — exactly the
// states a change to any one preset restarts from — and every other snapshot is deleted when
// the presets stage succeeds. Without presets nothing is stored.
// Disk cost: on a filesystem with reflinks (btrfs, XFS) the copies share their blocks and cost
// little more than their metadata; elsewhere (ext4) each snapshot is a full copy of the tree as
// it was then, i.e. about N × the size of OUT/chroot.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mountsUnder, unmountUnder } from './chroot.js';
import { MkmaError } from '../lib/errors.js';
import { runSync } from '../lib/run.js';
import type { StageInputs } from './stage.js';

/** Where a build starts from. */
export interface CachePlan {
  /** index into the key chain of the state the build starts from; -1: bootstrap first */
  start: number;
  /** where that state is: OUT/chroot already, a snapshot to copy, or nowhere (bootstrap) */
  from: 'in-place' | 'snapshot' | null;
}

export class CacheError extends MkmaError {}

/**
 * What preset i's result depends on: the state before it and the preset's own hash.
 * `configured` joins the first link: what configure applies before the presets run (hostname,
 * root password) is not part of K0 (changing it keeps the bootstrapped tree), but a preset may
 * read it, so a change to it runs the presets again from the snapshot of the bootstrapped tree.
 */
export function presetInputs(before: string, presetHash: string, configured = ''): StageInputs {
  return configured ? { 'tree before': before, settings: configured, preset: presetHash } : { 'tree before': before, preset: presetHash };
}

/** The chain key of a preset's result: a digest of its inputs. */
export function chainKey(inputs: StageInputs): string {
  const prev = inputs.settings ? `${inputs['tree before']}\0${inputs.settings}` : inputs['tree before'];
  return createHash('sha256').update(`mkma-chain-1\0${prev}\0${inputs.preset}`).digest('hex');
}

/** K0 = configHash, K(i) = the chain key of preset i's inputs. */
export function chainKeys(configHash: string, presetHashes: string[], configured = ''): string[] {
  const keys = [configHash];
  presetHashes.forEach((h, i) => keys.push(chainKey(presetInputs(keys[i], h, i === 0 ? configured : ''))));
  return keys;
}

/**
 * The latest state of the chain that is available: OUT/chroot if it holds keys[j], else a
 * snapshot of keys[j]; the highest j wins. `current` is the state OUT/chroot holds (null:
 * unknown or half-done).
 */
export function planFrom(keys: string[], current: string | null, hasSnapshot: (key: string) => boolean): CachePlan {
  for (let j = keys.length - 1; j >= 0; j--) {
    if (current === keys[j]) return { start: j, from: 'in-place' };
    if (hasSnapshot(keys[j])) return { start: j, from: 'snapshot' };
  }
  return { start: -1, from: null };
}

interface SnapshotInfo {
  /** what the snapshot is the state before (or after, for the bootstrap) */
  label: string;
  created: string;
}

export class Snapshots {
  readonly dir: string;
  readonly snapshots: string;
  readonly chroot: string;

  constructor(readonly out: string) {
    this.dir = path.join(out, '.cache');
    this.snapshots = path.join(this.dir, 'snapshots');
    this.chroot = path.join(out, 'chroot');
  }

  /** apt's package lists, kept outside the tree (bind-mounted while presets run) */
  get aptLists(): string {
    return path.join(this.dir, 'apt-lists');
  }

  get logs(): string {
    return path.join(this.dir, 'logs');
  }

  hasSnapshot(key: string): boolean {
    return fs.existsSync(path.join(this.snapshots, key, 'usr'));
  }

  /**
   * Where to start: the latest state of the chain that is available. `current` is the state
   * OUT/chroot holds by the build record (null: unknown or half-done).
   */
  plan(keys: string[], current: string | null): CachePlan {
    const chrootOk = fs.existsSync(path.join(this.chroot, 'usr'));
    return planFrom(keys, chrootOk ? current : null, (k) => this.hasSnapshot(k));
  }

  /** Copies OUT/chroot to the snapshot of `key` (if there is none yet). */
  snapshot(key: string, label: string): boolean {
    if (this.hasSnapshot(key)) return false;
    const dest = path.join(this.snapshots, key);
    const tmp = `${dest}.tmp`;
    assertUnmounted(this.chroot);
    fs.mkdirSync(this.snapshots, { recursive: true });
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(dest, { recursive: true, force: true });
    cpTree(this.chroot, tmp);
    fs.renameSync(tmp, dest);
    const info: SnapshotInfo = { label, created: new Date().toISOString() };
    fs.writeFileSync(`${dest}.json`, JSON.stringify(info, null, 2) + '\n');
    return true;
  }

  /**
   * Replaces OUT/chroot with a copy of the snapshot of `key`; `replacing` runs once the copy is
   * ready, just before the old tree goes (the caller records the change).
   */
  restore(key: string, replacing: () => void): void {
    const src = path.join(this.snapshots, key);
    const tmp = `${this.chroot}.restore`;
    assertUnmounted(this.chroot);
    fs.rmSync(tmp, { recursive: true, force: true });
    cpTree(src, tmp);
    replacing();
    fs.rmSync(this.chroot, { recursive: true, force: true });
    fs.renameSync(tmp, this.chroot);
  }

  /** Deletes every snapshot whose key is not in `keep` (and leftovers of interrupted copies). */
  prune(keep: string[]): string[] {
    const removed: string[] = [];
    let names: string[];
    try {
      names = fs.readdirSync(this.snapshots);
    } catch {
      return removed;
    }
    const keepSet = new Set(keep);
    for (const n of names) {
      const key = n.replace(/\.(json|tmp)$/, '');
      if (keepSet.has(key) && !n.endsWith('.tmp')) continue;
      const p = path.join(this.snapshots, n);
      if (fs.lstatSync(p).isDirectory()) {
        assertUnmounted(p);
        removed.push(key);
      }
      fs.rmSync(p, { recursive: true, force: true });
    }
    return removed;
  }

  /** Every snapshot (after --rebuild they all derive from a bootstrap being replaced). */
  clear(): void {
    this.prune([]);
  }

  /** Number of snapshots and their apparent size in bytes (du). */
  usage(): { snapshots: number; bytes: number } {
    let names: string[];
    try {
      names = fs.readdirSync(this.snapshots).filter((n) => !n.includes('.'));
    } catch {
      return { snapshots: 0, bytes: 0 };
    }
    if (!names.length) return { snapshots: 0, bytes: 0 };
    const r = runSync('du', ['-s', '-B1', this.snapshots], { allowFailure: true });
    return { snapshots: names.length, bytes: Number(r.stdout.split(/\s/)[0]) || 0 };
  }
}

/** Nothing may be mounted in a tree that is about to be copied or deleted. */
function assertUnmounted(dir: string): void {
  if (!fs.existsSync(dir)) return;
  const left = unmountUnder(dir);
  if (left.length) throw new CacheError(`cannot unmount ${left.join(', ')}: unmount by hand before building again`);
  if (mountsUnder(fs.realpathSync(dir)).length) throw new CacheError(`${dir} still has mounts`);
}

/** cp -a (owners, modes, times, links, xattrs), sharing blocks where the filesystem can. */
function cpTree(src: string, dest: string): void {
  const r = runSync('cp', ['-a', '--reflink=auto', '--no-target-directory', src, dest], { allowFailure: true });
  if (!r.ok) {
    fs.rmSync(dest, { recursive: true, force: true });
    throw new CacheError(`cp -a ${src} ${dest} failed: ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
  }
}
