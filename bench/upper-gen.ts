// A seeded generator of overlayfs upperdirs, made the way a running mkma system makes them:
// through a REAL overlay mount (tmpfs upper and work, the root filesystem copy as lower,
// redirect_dir=off and metacopy=off as the init mounts it). The generator works in the merged
// view; the kernel writes the upperdir: copy-ups, whiteouts for deletions (files and whole
// directories), opaque directories for replaced ones (rm -rf + mkdir), copy-ups of chmodded
// files. The result is copied out of the tmpfs with `cp -a` (whiteouts, trusted.overlay.*
// xattrs and hardlinks included).
//
// Deterministic: names, sizes, contents and the choice of lower paths come from a seeded PRNG
// and the sorted listing of the lower tree (timestamps are not fixed).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { log, mountOverlay, mountTmpfs, rmrf, sh } from './util.js';

// --- PRNG ----------------------------------------------------------------------------------

/** xoshiro128** seeded through splitmix32. */
export class Rng {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  u32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  float(): number {
    return this.u32() / 4294967296;
  }

  int(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** log-uniform in [lo, hi) */
  logUniform(lo: number, hi: number): number {
    return Math.floor(Math.exp(Math.log(lo) + this.float() * (Math.log(hi) - Math.log(lo))));
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  /** k distinct elements, in a deterministic order */
  sample<T>(xs: readonly T[], k: number): T[] {
    const idx = xs.map((_, i) => i);
    const n = Math.min(k, xs.length);
    for (let i = 0; i < n; i++) {
      const j = i + this.int(idx.length - i);
      [idx[i], idx[j]] = [idx[j], idx[i]];
    }
    return idx.slice(0, n).map((i) => xs[i]);
  }

  /** fills with random bytes (incompressible data) */
  fill(buf: Uint8Array, from = 0, to = buf.length): void {
    let i = from;
    for (; i + 4 <= to; i += 4) {
      const v = this.u32();
      buf[i] = v;
      buf[i + 1] = v >>> 8;
      buf[i + 2] = v >>> 16;
      buf[i + 3] = v >>> 24;
    }
    for (; i < to; i++) buf[i] = this.u32();
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

// --- contents ------------------------------------------------------------------------------

const LETTERS = 'abcdefghijklmnopqrstuvwxyz';

function vocabulary(rng: Rng): Buffer[] {
  const words: Buffer[] = [];
  for (let i = 0; i < 800; i++) {
    const len = 2 + rng.int(9);
    let w = '';
    for (let j = 0; j < len; j++) w += LETTERS[rng.int(26)];
    words.push(Buffer.from(w));
  }
  return words;
}

type ContentKind = 'text' | 'random' | 'binary';

/**
 * File contents of three kinds, so that zstd has realistic work: text (words of a fixed
 * vocabulary: compresses ~3-4×), random (already compressed data: incompressible), binary
 * (random with zeroed stretches: ~2×).
 */
function makeContent(rng: Rng, words: Buffer[], size: number, kind: ContentKind): Buffer {
  const buf = Buffer.alloc(size);
  if (kind === 'random') {
    rng.fill(buf);
  } else if (kind === 'binary') {
    for (let off = 0; off < size; off += 256) {
      const end = Math.min(size, off + 256);
      if (rng.int(2) === 0) rng.fill(buf, off, end);
    }
  } else {
    let off = 0;
    let col = 0;
    while (off < size) {
      const w = words[rng.int(words.length)];
      const n = Math.min(w.length, size - off);
      w.copy(buf, off, 0, n);
      off += n;
      col += n;
      if (off < size) {
        buf[off++] = col > 70 ? 0x0a : 0x20;
        if (col > 70) col = 0;
      }
    }
  }
  return buf;
}

function pickKind(rng: Rng): ContentKind {
  const r = rng.float();
  return r < 0.45 ? 'text' : r < 0.75 ? 'binary' : 'random';
}

// --- the lower tree ------------------------------------------------------------------------

/** Paths `mkma persist` leaves out by default (persist/default.rules): never generated. */
const RULE_EXCLUDED = [
  'tmp',
  'var/tmp',
  'run',
  'dev',
  'proc',
  'sys',
  'var/cache/apt',
  'var/lib/apt/lists',
  'var/log/journal',
  'var/lib/systemd/coredump',
  'var/cache/man',
  'root/.cache',
  'var/lib/systemd/random-seed',
];

function ruleExcluded(rel: string): boolean {
  if (/^home\/[^/]+\/\.cache(\/|$)/.test(rel)) return true;
  return RULE_EXCLUDED.some((p) => rel === p || rel.startsWith(p + '/'));
}

export interface LowerListing {
  files: Array<{ rel: string; size: number }>;
  dirs: string[];
  /** non-nested directories reserved for deletion/replacement (no other operation touches them) */
  reservedDirs: string[];
}

/** Sorted listing of the lower tree (regular files and directories, outside excluded paths). */
export function listLower(root: string): LowerListing {
  const files: Array<{ rel: string; size: number }> = [];
  const dirs: Array<{ rel: string; count: number; depth: number }> = [];
  const walk = (rel: string, depth: number): number => {
    const abs = rel ? path.join(root, rel) : root;
    const names = fs.readdirSync(abs).sort();
    let count = 0;
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      if (ruleExcluded(r) || /[^\x21-\x7e]/.test(r)) continue;
      const st = fs.lstatSync(path.join(root, r));
      count++;
      if (st.isDirectory()) {
        const idx = dirs.length;
        dirs.push({ rel: r, count: 0, depth: depth + 1 });
        const c = walk(r, depth + 1);
        dirs[idx].count = c;
        count += c;
      } else if (st.isFile()) {
        files.push({ rel: r, size: st.size });
      }
    }
    return count;
  };
  walk('', 0);
  // Reserved: small subtrees (2..300 entries, depth ≥ 3), not nested in one another, chosen
  // with a fixed seed, so that every generated upper (whatever its seed) agrees on them.
  const rng = new Rng(0x5eed);
  const candidates = rng.sample(
    dirs.filter((d) => d.depth >= 3 && d.count >= 2 && d.count <= 300),
    400,
  );
  const reserved: string[] = [];
  for (const d of candidates) {
    if (reserved.length >= 120) break;
    if (reserved.some((r) => d.rel.startsWith(r + '/') || r.startsWith(d.rel + '/'))) continue;
    reserved.push(d.rel);
  }
  reserved.sort();
  const underReserved = (rel: string) => reserved.some((r) => rel === r || rel.startsWith(r + '/'));
  return {
    files: files.filter((f) => !underReserved(f.rel)),
    dirs: dirs.map((d) => d.rel).filter((d) => !underReserved(d)),
    reservedDirs: reserved,
  };
}

// --- the generator -------------------------------------------------------------------------

export interface UpperSpec {
  seed: number;
  /** new regular files */
  files: number;
  /** total bytes of the new files */
  bytes: number;
  /** 'mixed': many small, some up to 256 KiB, a few MB-size; 'small': up to 4 KiB */
  sizes?: 'mixed' | 'small';
  /** lower files deleted (whiteouts) */
  deleteFiles: number;
  /** lower directories deleted with rm -rf (a whiteout for the directory) */
  deleteDirs: number;
  /** lower directories replaced: rm -rf, mkdir, new files (an opaque directory) */
  replaceDirs: number;
  /** symlinks: new ones, and some lower files replaced by one */
  symlinks: number;
  /** extra hardlinks to new files */
  hardlinks: number;
  /** lower files chmodded (copied up for metadata) */
  chmods: number;
  /** lower files rewritten with new contents */
  modify: number;
  /** touch only the lower paths of this share of the listing (disjoint generators) */
  partition?: { index: number; count: number };
}

export interface GenStats {
  newFiles: number;
  newBytes: number;
  deletedFiles: number;
  deletedDirs: number;
  replacedDirs: number;
  symlinks: number;
  hardlinks: number;
  chmods: number;
  modified: number;
}

function exists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

function isDir(p: string): boolean {
  try {
    return fs.lstatSync(p).isDirectory();
  } catch {
    return false;
  }
}

function sizesFor(rng: Rng, spec: UpperSpec): number[] {
  const n = spec.files;
  if (spec.sizes === 'small') {
    const raw = Array.from({ length: n }, () => rng.logUniform(16, 4096) - 16);
    const sum = raw.reduce((a, b) => a + b, 0) || 1;
    return raw.map((s) => Math.round((s * spec.bytes) / sum));
  }
  const large = Math.max(1, Math.round(n * 0.005));
  const medium = Math.round(n * 0.055);
  const small = Math.max(0, n - large - medium);
  const sizes: number[] = [];
  for (let i = 0; i < small; i++) sizes.push(rng.logUniform(64, 32 << 10));
  for (let i = 0; i < medium; i++) sizes.push(rng.logUniform(32 << 10, 256 << 10));
  const used = sizes.reduce((a, b) => a + b, 0);
  const rest = Math.max(large * (256 << 10), spec.bytes - used);
  const weights = Array.from({ length: large }, () => 1 + rng.float() * 7);
  const wsum = weights.reduce((a, b) => a + b, 0);
  for (const w of weights) sizes.push(Math.round((rest * w) / wsum));
  // shuffle so that big files are spread over the tree
  return rng.sample(sizes, sizes.length);
}

const noStats = (): GenStats => ({
  newFiles: 0,
  newBytes: 0,
  deletedFiles: 0,
  deletedDirs: 0,
  replacedDirs: 0,
  symlinks: 0,
  hardlinks: 0,
  chmods: 0,
  modified: 0,
});

/** Runs one generator pass in `merged` (a mounted overlay over `lower`). */
export function generatePass(merged: string, lower: LowerListing, spec: UpperSpec): GenStats {
  const rng = new Rng(spec.seed);
  const words = vocabulary(rng);
  const st = noStats();
  const part = spec.partition;
  const mine = <T>(xs: T[]) => (part ? xs.filter((_, i) => i % part.count === part.index) : xs);
  const lowerFiles = mine(lower.files);
  const reserved = mine(lower.reservedDirs);
  const M = (rel: string) => path.join(merged, rel);
  const tag = `s${spec.seed}`;

  // Disjoint choices of lower files for each kind of change.
  const picked = rng.sample(lowerFiles, spec.deleteFiles + spec.chmods + spec.modify + Math.ceil(spec.symlinks * 0.3));
  const toDelete = picked.slice(0, spec.deleteFiles);
  const toChmod = picked.slice(spec.deleteFiles, spec.deleteFiles + spec.chmods);
  const toModify = picked.slice(spec.deleteFiles + spec.chmods, spec.deleteFiles + spec.chmods + spec.modify);
  const toSymlink = picked.slice(spec.deleteFiles + spec.chmods + spec.modify);
  const dirPick = rng.sample(reserved, spec.deleteDirs + spec.replaceDirs);

  // 1. new files: 80% in a new tree, 20% in existing lower directories (copy-up of parents)
  const sizes = sizesFor(rng, spec);
  const newTree = `srv/bench-${tag}`;
  const perDir = 24;
  const lowerDirs = lower.dirs.filter((d) => !d.startsWith('srv/bench-'));
  const newFiles: string[] = [];
  const exts = ['txt', 'dat', 'bin', 'json', 'conf', 'log', 'db', 'so'];
  for (let i = 0; i < sizes.length; i++) {
    let dir: string;
    if (rng.float() < 0.8 || !lowerDirs.length) {
      const d = Math.floor(i / perDir);
      dir = `${newTree}/d${String(Math.floor(d / 32)).padStart(3, '0')}/e${String(d % 32).padStart(2, '0')}`;
    } else {
      dir = rng.pick(lowerDirs);
      if (!isDir(M(dir))) continue;
    }
    fs.mkdirSync(M(dir), { recursive: true });
    const rel = `${dir}/${tag}-f${i}.${rng.pick(exts)}`;
    const data = makeContent(rng, words, sizes[i], pickKind(rng));
    fs.writeFileSync(M(rel), data, { mode: rng.int(10) === 0 ? 0o755 : 0o644 });
    newFiles.push(rel);
    st.newFiles++;
    st.newBytes += data.length;
  }
  // a few empty directories
  for (let i = 0; i < Math.max(1, Math.round(spec.files / 500)); i++) fs.mkdirSync(M(`${newTree}/empty-${i}`), { recursive: true });

  // 2. hardlinks to new files, from another directory
  if (newFiles.length) {
    fs.mkdirSync(M(`${newTree}/links`), { recursive: true });
    for (let i = 0; i < spec.hardlinks; i++) {
      const target = rng.pick(newFiles);
      const link = `${newTree}/links/${tag}-h${i}`;
      fs.linkSync(M(target), M(link));
      st.hardlinks++;
    }
  }

  // 3. symlinks: new ones (relative, absolute, dangling) and lower files replaced by one
  const newSymlinks = spec.symlinks - toSymlink.length;
  if (newSymlinks > 0) fs.mkdirSync(M(`${newTree}/sym`), { recursive: true });
  for (let i = 0; i < newSymlinks; i++) {
    const r = rng.float();
    const target =
      r < 0.5 && newFiles.length
        ? path.relative(M(`${newTree}/sym`), M(rng.pick(newFiles)))
        : r < 0.9 && lower.files.length
          ? '/' + rng.pick(lower.files).rel
          : `/nonexistent/${tag}-${i}`;
    fs.symlinkSync(target, M(`${newTree}/sym/${tag}-l${i}`));
    st.symlinks++;
  }
  for (const f of toSymlink) {
    if (!exists(M(f.rel))) continue;
    fs.rmSync(M(f.rel), { force: true });
    fs.symlinkSync(`/${newTree}`, M(f.rel));
    st.symlinks++;
  }

  // 4. changes to lower files: deletions, chmods (metadata copy-up), rewrites
  for (const f of toDelete) {
    if (!exists(M(f.rel))) continue;
    fs.rmSync(M(f.rel), { force: true });
    st.deletedFiles++;
  }
  for (const f of toChmod) {
    if (!exists(M(f.rel))) continue;
    const mode = fs.lstatSync(M(f.rel)).mode & 0o7777;
    fs.chmodSync(M(f.rel), mode ^ 0o044 ? mode ^ 0o044 : 0o600);
    if (rng.int(4) === 0) fs.chownSync(M(f.rel), 1000, 1000);
    st.chmods++;
  }
  for (const f of toModify) {
    if (!exists(M(f.rel))) continue;
    const size = Math.min(256 << 10, Math.max(16, f.size + rng.int(200) - 100));
    fs.writeFileSync(M(f.rel), makeContent(rng, words, size, 'text'));
    st.modified++;
  }

  // 5. directories: deleted whole, or replaced (rm -rf + mkdir → opaque)
  dirPick.forEach((d, i) => {
    if (!isDir(M(d))) return;
    fs.rmSync(M(d), { recursive: true, force: true });
    if (i < spec.deleteDirs) {
      st.deletedDirs++;
      return;
    }
    fs.mkdirSync(M(d));
    const n = 2 + rng.int(6);
    for (let j = 0; j < n; j++) fs.writeFileSync(M(`${d}/${tag}-r${j}.txt`), makeContent(rng, words, 64 + rng.int(4000), 'text'));
    st.replacedDirs++;
  });
  return st;
}

export interface GeneratedUpper {
  dir: string;
  stats: GenStats;
}

/**
 * Generates an upperdir at `out` (must not exist) from one or more passes, all in the same
 * overlay mount (several passes = the union of what each pass does alone, when their
 * partitions are disjoint). `scratch` is a directory for the tmpfs mount.
 */
export function generateUpper(lowerRoot: string, lower: LowerListing, specs: UpperSpec[], out: string, scratch: string): GeneratedUpper {
  fs.mkdirSync(scratch, { recursive: true });
  const unmountTmp = mountTmpfs(scratch, '8G');
  const stats = noStats();
  try {
    const upper = path.join(scratch, 'upper');
    const work = path.join(scratch, 'work');
    const merged = path.join(scratch, 'merged');
    for (const d of [upper, work, merged]) fs.mkdirSync(d);
    const unmountOv = mountOverlay(merged, lowerRoot, upper, work);
    try {
      for (const spec of specs) {
        const s = generatePass(merged, lower, spec);
        for (const k of Object.keys(stats) as Array<keyof GenStats>) stats[k] += s[k];
      }
    } finally {
      unmountOv();
    }
    rmrf(out);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const tmp = `${out}.tmp`;
    rmrf(tmp);
    sh('cp', ['-a', upper, tmp]);
    fs.renameSync(tmp, out);
  } finally {
    unmountTmp();
  }
  log(
    `  generated ${path.basename(out).replace(/\.tmp$/, '')}: ${stats.newFiles} new files (${(stats.newBytes / 2 ** 20).toFixed(1)} MiB), ` +
      `${stats.deletedFiles} deleted files, ${stats.deletedDirs} deleted dirs, ${stats.replacedDirs} replaced dirs, ` +
      `${stats.symlinks} symlinks, ${stats.hardlinks} hardlinks, ${stats.chmods} chmods, ${stats.modified} rewritten`,
  );
  return { dir: out, stats };
}
