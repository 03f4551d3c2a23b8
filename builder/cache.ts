// The build cache for presets: snapshots of OUT/chroot, so that a rebuild after changing
// preset N starts from the tree as it was before preset N instead of bootstrapping again.
//
// States form a chain of keys: K0 = the configuration hash (config/load.ts configHash: what
// the bootstrapped tree depends on), K(i) = sha256(K(i-1), hash of preset i) where a preset's
// hash covers its file, its environment variables' values, and the contents of its shared
// directories, files folder and hooks. OUT/chroot itself is the working tree; OUT/.cache/
// chroot.json says which state it holds (null while a preset is being applied, so an
// interrupted build never passes a half-done tree for a finished one).
//
// Snapshots are taken lazily, just before a preset runs: OUT/.cache/snapshots/<K(i-1)> is
// `cp -a --reflink=auto` of the tree before preset i. The state after the last preset needs
// none (it is OUT/chroot), so a build with N presets keeps at most N snapshots — exactly the
// states a change to any one preset restarts from — and every other snapshot is deleted when
// the presets stage succeeds. Without presets nothing is stored (the old behaviour).
// Disk cost: on a filesystem with reflinks (btrfs, XFS) the copies share their blocks and cost
// little more than their metadata; elsewhere (ext4) each snapshot is a full copy of the tree as
// it was then, i.e. about N × the size of OUT/chroot.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mountsUnder, unmountUnder } from './chroot.js';
import { MkmaError } from '../lib/errors.js';

export type StageStatus = 'ran' | 'reused' | 'skipped';

export interface StageReport {
  /** "bootstrap", "configure", "preset <name>", "pack base", "initramfs" */
  stage: string;
  status: StageStatus;
  /** why it ran or was reused (builder/stages.ts), for the stages after the bootstrap */
  reason?: string;
}

/** Where a build starts from. */
export interface CachePlan {
  /** index into the key chain of the state the build starts from; -1: bootstrap first */
  start: number;
  /** where that state is: OUT/chroot already, a snapshot to copy, or nowhere (bootstrap) */
  from: 'in-place' | 'snapshot' | null;
}

export class CacheError extends MkmaError {}

/**
 * K0 = configHash, K(i) = sha256 of K(i-1) and preset i's hash. `configured`, when given,
 * joins the first link: what configure applies before the presets run (hostname, root
 * password) is not part of K0 (changing it keeps the bootstrapped tree), but a preset may read
 * it, so a change to it runs the presets again from the snapshot of the bootstrapped tree.
 */
export function chainKeys(configHash: string, presetHashes: string[], configured = ''): string[] {
  const keys = [configHash];
  for (const h of presetHashes) {
    const prev = keys.length === 1 && configured ? `${keys[0]}\0${configured}` : keys[keys.length - 1];
    keys.push(createHash('sha256').update(`mkma-chain-1\0${prev}\0${h}`).digest('hex'));
  }
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

interface ChrootState {
  /** the chain key of the state OUT/chroot holds; null while it is being changed */
  key: string | null;
  updated: string;
}

interface SnapshotInfo {
  /** what the snapshot is the state before (or after, for the bootstrap) */
  label: string;
  created: string;
}

export class BuildCache {
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

  private get stateFile(): string {
    return path.join(this.dir, 'chroot.json');
  }

  /** The state OUT/chroot holds: a key, null (unknown), or undefined when no build with this cache ran. */
  readState(): string | null | undefined {
    try {
      return (JSON.parse(fs.readFileSync(this.stateFile, 'utf8')) as ChrootState).key;
    } catch {
      return undefined;
    }
  }

  writeState(key: string | null): void {
    fs.mkdirSync(this.dir, { recursive: true });
    const tmp = `${this.stateFile}.tmp`;
    const state: ChrootState = { key, updated: new Date().toISOString() };
    fs.writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n');
    fs.renameSync(tmp, this.stateFile);
  }

  hasSnapshot(key: string): boolean {
    return fs.existsSync(path.join(this.snapshots, key, 'usr'));
  }

  /**
   * Where to start. `legacyReusable`: OUT/chroot is a bootstrapped tree for this configuration
   * by bootstrap.ts's own record (used when no cache state exists yet).
   */
  plan(keys: string[], opts: { rebuild: boolean; legacyReusable: boolean }): CachePlan {
    if (opts.rebuild) return { start: -1, from: null };
    const state = this.readState();
    const chrootOk = fs.existsSync(path.join(this.chroot, 'usr'));
    const current = !chrootOk ? null : state === undefined ? (opts.legacyReusable ? keys[0] : null) : state;
    return planFrom(keys, current, (k) => this.hasSnapshot(k));
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

  /** Replaces OUT/chroot with a copy of the snapshot of `key`. */
  restore(key: string): void {
    const src = path.join(this.snapshots, key);
    const tmp = `${this.chroot}.restore`;
    assertUnmounted(this.chroot);
    fs.rmSync(tmp, { recursive: true, force: true });
    cpTree(src, tmp);
    this.writeState(null);
    fs.rmSync(this.chroot, { recursive: true, force: true });
    fs.renameSync(tmp, this.chroot);
    this.writeState(key);
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
    let names: string[] = [];
    try {
      names = fs.readdirSync(this.snapshots).filter((n) => !n.includes('.'));
    } catch {
      return { snapshots: 0, bytes: 0 };
    }
    if (!names.length) return { snapshots: 0, bytes: 0 };
    const r = spawnSync('du', ['-s', '-B1', this.snapshots], { encoding: 'utf8' });
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
  const r = spawnSync('cp', ['-a', '--reflink=auto', '--no-target-directory', src, dest], { encoding: 'utf8' });
  if (r.status !== 0) {
    fs.rmSync(dest, { recursive: true, force: true });
    throw new CacheError(`cp -a ${src} ${dest} failed: ${(r.stderr || String(r.error ?? '')).trim().split('\n').slice(0, 3).join('; ')}`);
  }
}
