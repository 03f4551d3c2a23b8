// Reads an overlayfs upperdir and says what each entry means for the merged view (persist/model.ts):
// added, modified, metadata only, deleted (whiteout), replaced (opaque directory), or only a
// container of changes.
//
// Speed: one lstat per upperdir entry, readdir per directory, one lstat in the lower tree per
// entry whose parent exists there as a directory, and file contents are compared only when
// the sizes agree (≤ 16 MiB; larger files by size + mtime). xattrs (overlayfs' own, which
// classify, and the others, which are saved) come from getfattr processes fed through xargs
// while the walk goes on: no process per entry.
import * as fs from 'node:fs';
import { spawn } from 'node:child_process';
import { parseGetfattrDump } from '../format/tree.js';
import type { XattrRecord } from '../format/manifest.js';
import type { ChangeEntry, ChangeKind, EntryType, ScanResult } from './model.js';

export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
/** Regular files up to this size are compared byte for byte with the lower file. */
export const COMPARE_MAX_BYTES = 16 << 20;

const S_IFMT = 0o170000;

const SLASH = Buffer.from('/');
const FIND_TYPES: Record<string, { type: EntryType; ifmt: number }> = {
  f: { type: 'file', ifmt: 0o100000 },
  d: { type: 'dir', ifmt: 0o040000 },
  l: { type: 'symlink', ifmt: 0o120000 },
  c: { type: 'char', ifmt: 0o020000 },
  b: { type: 'block', ifmt: 0o060000 },
  p: { type: 'fifo', ifmt: 0o010000 },
  s: { type: 'socket', ifmt: 0o140000 },
};
/** type, st_dev, inode, links, permission bits (octal, with setuid/setgid/sticky), owner, size, mtime; path; link target */
const FIND_FORMAT = '%y %D %i %n %m %U %G %s %T@\\0%P\\0%l\\0';

interface Raw {
  /** path relative to the upperdir, raw bytes as latin1 */
  rel: string;
  type: EntryType;
  dev: number;
  ino: number;
  nlink: number;
  /** full st_mode */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** seconds, with fractions */
  mtime: number;
  target: string;
  /** index of the parent directory in the sorted raw list, -1 at the top */
  parent: number;
}

/**
 * Runs `find -xdev` over the upperdir (the walk is find's: a C loop over getdents/fstatat
 * beats one fs.lstatSync per entry from JavaScript about threefold) and hands every path to
 * `onPath` as soon as it is read, so getfattr can work while find still walks.
 */
function findWalk(root: string, onPath: (rel: Buffer) => void): Promise<{ raw: Raw[]; errors: string[] }> {
  const child = spawn('find', [root, '-xdev', '-mindepth', '1', '-printf', FIND_FORMAT], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  const raw: Raw[] = [];
  let err = '';
  let rest: Buffer = Buffer.alloc(0);
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => { if (err.length < 1 << 20) err += d; });
  child.stdout.on('data', (chunk: Buffer) => {
    const buf = rest.length ? Buffer.concat([rest, chunk]) : chunk;
    let pos = 0;
    for (;;) {
      const a = buf.indexOf(0, pos);
      if (a < 0) break;
      const b = buf.indexOf(0, a + 1);
      if (b < 0) break;
      const c = buf.indexOf(0, b + 1);
      if (c < 0) break;
      const f = buf.toString('latin1', pos, a).split(' ');
      const relBuf = buf.subarray(a + 1, b);
      const t = FIND_TYPES[f[0]] ?? FIND_TYPES.f;
      raw.push({
        rel: relBuf.toString('latin1'),
        type: t.type,
        dev: Number(f[1]),
        ino: Number(f[2]),
        nlink: Number(f[3]),
        mode: t.ifmt | Number.parseInt(f[4], 8),
        uid: Number(f[5]),
        gid: Number(f[6]),
        size: Number(f[7]),
        mtime: Number(f[8]),
        target: t.type === 'symlink' ? buf.toString('latin1', b + 1, c) : '',
        parent: -1,
      });
      onPath(relBuf);
      pos = c + 1;
    }
    rest = Buffer.from(buf.subarray(pos));
  });
  return new Promise((resolve, reject) => {
    child.on('error', (e) => reject(new Error(`cannot run find: ${e.message}`)));
    child.on('close', (code) => {
      // exit 1: some directory could not be read (or vanished in a live tree): reported
      if (code !== 0 && code !== 1) reject(new Error(`find ${root} failed (exit ${code}): ${err.trim()}`));
      else resolve({ raw, errors: err.split('\n').filter((l) => l.trim() !== '') });
    });
  });
}

/** getfattr over every path of the tree, fed in batches through xargs (a few processes in all). */
class BatchXattrs {
  private readonly child;
  private readonly out: string[] = [];
  private err = '';
  private batch: Buffer[] = [];
  private batchLen = 0;
  private readonly done: Promise<void>;

  constructor(root: string) {
    this.child = spawn('xargs', ['-0', '-r', 'getfattr', '-h', '-d', '-m', '-', '-e', 'base64', '--'], {
      cwd: root,
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    this.child.stdout.setEncoding('latin1');
    this.child.stdout.on('data', (d: string) => { this.out.push(d); });
    this.child.stderr.on('data', (d: Buffer) => { if (this.err.length < 4096) this.err += d.toString(); });
    this.child.stdin.on('error', () => {});
    this.done = new Promise((resolve, reject) => {
      this.child.on('error', (e) => reject(new Error(`cannot run getfattr (apt-get install attr): ${e.message}`)));
      this.child.on('close', (code) => {
        // getfattr exits 1 when a path vanished in a live tree; what it printed is still valid
        if (code === 0 || code === 1 || code === 123) resolve();
        else reject(new Error(`getfattr failed (exit ${code}): ${this.err.trim()}`));
      });
    });
  }

  add(rel: Buffer): void {
    // "./" keeps getfattr from reading a name that starts with "-" as an option
    this.batch.push(DOT_SLASH, rel, NUL);
    this.batchLen += rel.length + 3;
    if (this.batchLen >= 1 << 16) this.flush();
  }

  private flush(): void {
    if (!this.batchLen) return;
    this.child.stdin.write(Buffer.concat(this.batch, this.batchLen));
    this.batch = [];
    this.batchLen = 0;
  }

  async finish(): Promise<XattrRecord[]> {
    this.flush();
    this.child.stdin.end();
    await this.done;
    return parseGetfattrDump(this.out.join(''));
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}
const DOT_SLASH = Buffer.from('./');
const NUL = Buffer.from([0]);

/** Pre-order with siblings sorted by bytes == sorting on the path with "/" as the lowest byte. */
function sortPreorder(raw: Raw[]): Raw[] {
  const keyed = raw.map((r) => ({ k: r.rel.replace(/\//g, '\x00'), r }));
  keyed.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0));
  const out = keyed.map((x) => x.r);
  const index = new Map<string, number>();
  for (let i = 0; i < out.length; i++) {
    const rel = out[i].rel;
    index.set(rel, i);
    const slash = rel.lastIndexOf('/');
    out[i].parent = slash < 0 ? -1 : (index.get(rel.slice(0, slash)) ?? -1);
  }
  return out;
}

/** getfattr's value spelling ("0s…" base64, "0x…" hex, or "quoted text") → bytes. */
export function decodeXattrValue(v: string): Buffer {
  if (v.startsWith('0s')) return Buffer.from(v.slice(2), 'base64');
  if (v.startsWith('0x') || v.startsWith('0X')) return Buffer.from(v.slice(2), 'hex');
  if (v.startsWith('"') && v.endsWith('"') && v.length >= 2) return Buffer.from(v.slice(1, -1), 'latin1');
  return Buffer.from(v, 'latin1');
}

function lstatQuiet(p: Buffer): fs.Stats | undefined {
  try {
    return fs.lstatSync(p, { throwIfNoEntry: false });
  } catch {
    return undefined; // ENOTDIR, EACCES: not there as far as the merged view goes
  }
}

/** Byte comparison of two files of equal size, chunk by chunk, stopping at the first difference. */
function sameContent(a: Buffer, b: Buffer, size: number): boolean {
  if (size === 0) return true;
  let fa = -1;
  let fb = -1;
  try {
    fa = fs.openSync(a, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    fb = fs.openSync(b, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const chunk = Math.min(size, 1 << 20);
    const ba = Buffer.allocUnsafe(chunk);
    const bb = Buffer.allocUnsafe(chunk);
    let pos = 0;
    while (pos < size) {
      const want = Math.min(chunk, size - pos);
      const na = readFully(fa, ba, want, pos);
      const nb = readFully(fb, bb, want, pos);
      if (na !== want || nb !== want) return false; // changed under us
      if (ba.compare(bb, 0, nb, 0, na) !== 0) return false;
      pos += na;
    }
    return true;
  } catch {
    return false;
  } finally {
    if (fa >= 0) fs.closeSync(fa);
    if (fb >= 0) fs.closeSync(fb);
  }
}

function readFully(fd: number, buf: Buffer, want: number, pos: number): number {
  let got = 0;
  while (got < want) {
    const n = fs.readSync(fd, buf, got, want - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

export interface ScanOptions {
  /** called now and then with the number of entries read so far */
  onProgress?: (entries: number) => void;
}

/**
 * Scans `upper` (an overlayfs upperdir) against `lower` (the tree below it, or null when it is
 * not available: then everything that is not a whiteout or opaque directory counts as added).
 */
export async function scanUpper(upper: string, lower: string | null, opts: ScanOptions = {}): Promise<ScanResult> {
  const t0 = performance.now();
  const root = fs.realpathSync(upper);
  const rootSt = fs.lstatSync(root);
  if (!rootSt.isDirectory()) throw new Error(`${upper} is not a directory`);
  const skipped: ScanResult['skipped'] = [];
  // Every xattr: overlayfs' own decide the kind, the others are saved.
  const xattrs = new BatchXattrs(root);
  let seen = 0;
  let walked: { raw: Raw[]; errors: string[] };
  try {
    walked = await findWalk(root, (rel) => {
      xattrs.add(rel);
      if ((++seen & 0x3fff) === 0) opts.onProgress?.(seen);
    });
  } catch (e) {
    xattrs.kill();
    throw e;
  }
  for (const line of walked.errors) {
    const m = /^find: '(.*)': (.*)$/.exec(line);
    const p = m && m[1].startsWith(root + '/') ? m[1].slice(root.length + 1) : '';
    skipped.push({ path: p, reason: m ? `cannot be read: ${m[2]}` : line });
  }
  const records = await xattrs.finish();
  const raw = sortPreorder(walked.raw);
  const overlayX = new Map<string, Map<string, string>>();
  const userX = new Map<string, Array<[string, string]>>();
  for (const r of records) {
    const ov = r.attrs.filter(([n]) => n.startsWith(OVERLAY_XATTR_PREFIX));
    const other = r.attrs.filter(([n]) => !n.startsWith(OVERLAY_XATTR_PREFIX));
    if (ov.length) overlayX.set(r.path, new Map(ov.map(([n, v]) => [n.slice(OVERLAY_XATTR_PREFIX.length), v])));
    if (other.length) userX.set(r.path, other);
  }
  const upperB = Buffer.from(root);

  // Classify, parents first. lowerDir[i]: the lower tree has a real, visible directory at
  // raw[i]'s path, so its children are looked up below; dead[i]: raw[i] was skipped (and with
  // it its subtree).
  const lowerRoot = lower === null ? null : Buffer.from(lower);
  if (lowerRoot && !lstatQuiet(lowerRoot)?.isDirectory()) throw new Error(`lower tree ${lower} is not a directory`);
  const lowerDir = new Uint8Array(raw.length);
  const dead = new Uint8Array(raw.length);
  const entryOf = new Int32Array(raw.length).fill(-1);
  const entries: ChangeEntry[] = [];
  const entryParent: number[] = [];
  let bytes = 0;
  for (let i = 0; i < raw.length; i++) {
    const r = raw[i];
    const { rel: path, type, parent } = r;
    if (parent >= 0 && dead[parent]) {
      dead[i] = 1;
      continue;
    }
    if (r.dev !== rootSt.dev) {
      // find -xdev lists a mount point but does not enter it
      skipped.push({ path, reason: 'another filesystem is mounted here; its contents are not part of the overlay and are not saved' });
      dead[i] = 1;
      continue;
    }
    const ov = overlayX.get(path);
    const relB = Buffer.from(path, 'latin1');
    let kind: ChangeKind;
    let entryType: EntryType = type;
    let size = type === 'file' || type === 'symlink' ? r.size : 0;
    const target = type === 'symlink' ? r.target : undefined;
    let rdev = -1;
    if (type === 'char' || type === 'block') rdev = lstatQuiet(Buffer.concat([upperB, SLASH, relB]))?.rdev ?? -1;

    if ((type === 'char' && rdev === 0) || (type === 'file' && r.size === 0 && ov?.has('whiteout'))) {
      kind = 'deleted';
      entryType = 'whiteout';
      size = 0;
    } else if (ov?.has('redirect') || ov?.has('metacopy')) {
      const which = ov.has('redirect') ? 'redirect' : 'metacopy';
      skipped.push({
        path,
        reason: `overlayfs ${which} entry (trusted.overlay.${which}): its data lives elsewhere in the lower tree and cannot be saved as a layer; mkma mounts with redirect_dir=off,metacopy=off, so this overlay was mounted differently`,
      });
      dead[i] = 1;
      continue;
    } else if (type === 'socket') {
      skipped.push({ path, reason: 'a socket belongs to the program that listens on it; it cannot be saved' });
      dead[i] = 1;
      continue;
    } else if (type === 'dir' && ov && decodeXattrValue(ov.get('opaque') ?? '').toString('latin1') === 'y') {
      // "x" means "holds xattr whiteouts", not opaque
      kind = 'replaced';
    } else {
      const parentLowerVisible = parent < 0 ? lowerRoot !== null : lowerDir[parent] === 1;
      const lowerAbs = parentLowerVisible && lowerRoot ? Buffer.concat([lowerRoot, SLASH, relB]) : null;
      const lst = lowerAbs ? lstatQuiet(lowerAbs) : undefined;
      if (!lst) {
        kind = 'added';
      } else if (type === 'dir' && lst.isDirectory()) {
        lowerDir[i] = 1;
        // A directory copied up only to hold changes is a container; one whose owner or mode
        // changed (chmod/chown on the directory itself) is a change of its own.
        const sameMeta = (r.mode & 0o7777) === (lst.mode & 0o7777) && r.uid === lst.uid && r.gid === lst.gid;
        kind = sameMeta ? 'container' : 'metadata';
      } else if ((lst.mode & S_IFMT) !== (r.mode & S_IFMT)) {
        kind = 'modified';
      } else if (type === 'file') {
        if (lst.size !== r.size) kind = 'modified';
        else if (r.size > COMPARE_MAX_BYTES) kind = Math.floor(lst.mtimeMs / 1000) === Math.floor(r.mtime) ? 'metadata' : 'modified';
        else kind = sameContent(Buffer.concat([upperB, SLASH, relB]), lowerAbs!, r.size) ? 'metadata' : 'modified';
      } else if (type === 'symlink') {
        const lt = (fs.readlinkSync(lowerAbs!, { encoding: 'buffer' }) as Buffer).toString('latin1');
        kind = lt === target ? 'metadata' : 'modified';
      } else if (type === 'char' || type === 'block') {
        kind = lst.rdev === rdev ? 'metadata' : 'modified';
      } else {
        kind = 'metadata'; // fifo
      }
    }
    entryOf[i] = entries.length;
    entryParent.push(parent >= 0 ? entryOf[parent] : -1);
    bytes += size;
    entries.push({
      path,
      kind,
      type: entryType,
      size,
      totalSize: size,
      mode: r.mode,
      uid: r.uid,
      gid: r.gid,
      mtime: Math.floor(r.mtime),
      xattrs: userX.get(path) ?? [],
      hardlinks: [],
      ...(target !== undefined ? { target } : {}),
    });
  }

  // Subtree sizes: children come after their parents, so one backward pass adds them up.
  for (let j = entries.length - 1; j >= 0; j--) {
    const p = entryParent[j];
    if (p >= 0) entries[p].totalSize += entries[j].totalSize;
  }

  // Hardlinks: entries sharing an inode inside the upperdir (whiteouts share overlayfs' one
  // whiteout inode: they are not links of each other).
  const groups = new Map<string, number[]>();
  for (let i = 0; i < raw.length; i++) {
    const j = entryOf[i];
    if (j < 0) continue;
    const e = entries[j];
    const r = raw[i];
    if (r.nlink < 2 || e.type === 'dir' || e.type === 'whiteout') continue;
    const k = `${r.dev}:${r.ino}`;
    const g = groups.get(k);
    if (g) g.push(j);
    else groups.set(k, [j]);
  }
  for (const g of groups.values()) {
    if (g.length < 2) continue;
    for (const j of g) entries[j].hardlinks = g.filter((o) => o !== j).map((o) => entries[o].path);
  }

  return {
    upper,
    lower,
    entries,
    skipped,
    stats: { entries: entries.length, bytes, scanMs: Math.round(performance.now() - t0) },
  };
}
