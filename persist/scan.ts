// Reads an overlayfs upperdir and says what each entry means for the merged view (persist/model.ts):
// added, modified, metadata only, deleted (whiteout), replaced (opaque directory), or only a
// container of changes.
//
// Speed (the upperdir of a busy machine holds 100k+ entries): no process is started per entry.
//   find -xdev -printf TYPE DEV INO ... PATH TARGET   → parsed here as it streams (the walk is
//                                                        find's C loop over getdents/fstatat:
//                                                        about three times faster than
//                                                        fs.lstatSync per entry)
//   → each path, batched, into xargs getfattr -d      → every xattr, overlayfs' own included
// then one lstat in the lower tree per entry whose parent exists there as a directory; file
// contents are compared only when the sizes agree (≤ 16 MiB; larger files by size + mtime).
// Nothing follows symlinks, and nothing descends into another filesystem.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import type { XattrRecord } from '../format/manifest.js';
import { parseGetfattrDump } from '../format/tree.js';
import type { ChangeEntry, ChangeKind, EntryType, ScanResult } from './model.js';

export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
/** Regular files up to this size are compared byte for byte with the lower file. */
export const COMPARE_MAX_BYTES = 16 << 20;

const S_IFMT = 0o170000;
const SLASH = Buffer.from('/');
const CHILD_ENV = { ...process.env, LC_ALL: 'C' };

const TYPE_BY_LETTER: Record<number, { type: EntryType; ifmt: number }> = {
  0x66 /* f */: { type: 'file', ifmt: 0o100000 },
  0x64 /* d */: { type: 'dir', ifmt: 0o040000 },
  0x6c /* l */: { type: 'symlink', ifmt: 0o120000 },
  0x63 /* c */: { type: 'char', ifmt: 0o020000 },
  0x62 /* b */: { type: 'block', ifmt: 0o060000 },
  0x70 /* p */: { type: 'fifo', ifmt: 0o010000 },
  0x73 /* s */: { type: 'socket', ifmt: 0o140000 },
};
const TYPE_BY_IFMT: Record<number, EntryType> = Object.fromEntries(
  Object.values(TYPE_BY_LETTER).map((t) => [t.ifmt, t.type]),
);
/** type letter, st_dev, inode, links, permission bits (octal, incl. setuid/setgid/sticky), uid, gid, size, mtime; path; link target */
const STAT_FORMAT = '%y %D %i %n %m %U %G %s %T@\\0%P\\0%l\\0';

/** The walk, column by column (100k objects would cost more in garbage collection than the parse). */
interface Walk {
  rel: string[];
  type: EntryType[];
  dev: number[];
  nlink: number[];
  /** "dev:ino" for entries with more than one link, else "" */
  inode: string[];
  mode: number[];
  uid: number[];
  gid: number[];
  size: number[];
  /** whole seconds */
  mtime: number[];
  target: Map<number, string>;
  errors: string[];
}

function collect(child: ReturnType<typeof spawn>, what: string, okCodes: number[], onStdout: (b: Buffer) => void): Promise<string> {
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => { if (err.length < 1 << 20) err += d; });
  child.stdout!.on('data', onStdout);
  return new Promise((resolve, reject) => {
    child.on('error', (e) => reject(new Error(`cannot run ${what}: ${e.message}`)));
    child.on('close', (code) => {
      if (code !== null && okCodes.includes(code)) resolve(err);
      else reject(new Error(`${what} failed (exit ${code}): ${err.trim().slice(0, 2000)}`));
    });
  });
}

interface Cursor {
  buf: Buffer;
  p: number;
  end: number;
}
const cur: Cursor = { buf: Buffer.alloc(0), p: 0, end: 0 };

/** A number at the cursor; skips the rest of the field (the fraction of %T@) and the space. */
function readNum(c: Cursor, base: number): number {
  const { buf, end } = c;
  let p = c.p;
  let n = 0;
  let neg = false;
  if (buf[p] === 0x2d) {
    neg = true;
    p++;
  }
  while (p < end) {
    const d = buf[p] - 0x30;
    if (d < 0 || d > 9) break;
    n = n * base + d;
    p++;
  }
  while (p < end && buf[p] !== 0x20) p++;
  c.p = p + 1;
  return neg ? -n : n;
}

/** Parses `find -printf STAT_FORMAT` output as it streams in. */
function walkUpper(root: string, onPath: (buf: Buffer, start: number, end: number) => void): { done: Promise<Walk>; kill: () => void } {
  const w: Walk = {
    rel: [], type: [], dev: [], nlink: [], inode: [], mode: [], uid: [], gid: [], size: [], mtime: [],
    target: new Map(), errors: [],
  };
  const child = spawn('find', [root, '-xdev', '-mindepth', '1', '-printf', STAT_FORMAT], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: CHILD_ENV,
  });
  let rest: Buffer | null = null;
  const onData = (chunk: Buffer) => {
    const buf = rest ? Buffer.concat([rest, chunk]) : chunk;
    let pos = 0;
    for (;;) {
      const a = buf.indexOf(0, pos);
      if (a < 0) break;
      const b = buf.indexOf(0, a + 1);
      if (b < 0) break;
      const c = buf.indexOf(0, b + 1);
      if (c < 0) break;
      // the numbers, parsed in place: no strings for them
      const t = TYPE_BY_LETTER[buf[pos]] ?? TYPE_BY_LETTER[0x66];
      cur.buf = buf;
      cur.p = pos + 2;
      cur.end = a;
      const dev = readNum(cur, 10);
      const inoStart = cur.p;
      readNum(cur, 10);
      const inoEnd = cur.p - 1;
      const nlink = readNum(cur, 10);
      const perm = readNum(cur, 8);
      const uid = readNum(cur, 10);
      const gid = readNum(cur, 10);
      const size = readNum(cur, 10);
      const mtime = readNum(cur, 10);
      const i = w.rel.length;
      w.rel.push(buf.toString('latin1', a + 1, b));
      w.type.push(t.type);
      w.dev.push(dev);
      w.nlink.push(nlink);
      w.inode.push(nlink > 1 && t.type !== 'dir' ? `${dev}:${buf.toString('latin1', inoStart, inoEnd)}` : '');
      w.mode.push(t.ifmt | perm);
      w.uid.push(uid);
      w.gid.push(gid);
      w.size.push(size);
      w.mtime.push(mtime);
      if (t.type === 'symlink') w.target.set(i, buf.toString('latin1', b + 1, c));
      onPath(buf, a + 1, b);
      pos = c + 1;
    }
    rest = pos < buf.length ? Buffer.from(buf.subarray(pos)) : null;
  };
  // exit 1: a directory could not be read, or vanished (live tree): reported, not fatal
  const done = collect(child, `find ${root}`, [0, 1], onData).then((err) => {
    w.errors = err.split('\n').filter((l) => l.trim() !== '');
    return w;
  });
  return { done, kill: () => child.kill('SIGKILL') };
}

/**
 * Every xattr of every entry: the walk's paths go, in 64 KiB batches, into xargs getfattr (a
 * handful of getfattr processes for the whole tree) while the walk goes on. Records are keyed
 * by path relative to root.
 */
class XattrReader {
  private readonly child;
  private readonly out: string[] = [];
  private readonly done: Promise<string>;
  private batch = Buffer.allocUnsafe(1 << 16);
  private len = 0;
  private ended = false;

  constructor(root: string) {
    this.child = spawn('xargs', ['-0', '-r', 'getfattr', '-h', '-d', '-m', '-', '-e', 'base64', '--'], {
      cwd: root,
      stdio: ['pipe', 'pipe', 'pipe'],
      env: CHILD_ENV,
    });
    this.child.stdin.on('error', () => {});
    // getfattr exits 1 (xargs: 123) when a path vanished in a live tree; what it printed is still valid
    this.done = collect(this.child, 'getfattr (apt-get install attr)', [0, 1, 123], (d) => this.out.push(d.toString('latin1')));
  }

  /** "./" + path + NUL: "./" keeps getfattr from reading a name that starts with "-" as an option */
  add(buf: Buffer, start: number, end: number): void {
    const need = end - start + 3;
    if (this.len + need > this.batch.length) {
      this.flush();
      if (need > this.batch.length) this.batch = Buffer.allocUnsafe(need);
    }
    const b = this.batch;
    b[this.len++] = 0x2e;
    b[this.len++] = 0x2f;
    this.len += buf.copy(b, this.len, start, end);
    b[this.len++] = 0;
  }

  private flush(): void {
    if (!this.len) return;
    this.child.stdin.write(this.batch.subarray(0, this.len));
    this.batch = Buffer.allocUnsafe(this.batch.length); // the pipe may still hold the old one
    this.len = 0;
  }

  /** No more paths: getfattr gets the last batch now (finish() waits for its output). */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.flush();
    this.child.stdin.end();
  }

  async finish(): Promise<XattrRecord[]> {
    this.end();
    await this.done;
    return parseGetfattrDump(this.out.join(''));
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/** Pre-order with siblings sorted by bytes: a stable order for the UI, the layer and the tests. */
function preorder(w: Walk): { order: Int32Array; parent: Int32Array } {
  const n = w.rel.length;
  // find's output is pre-order already (each directory's subtree follows it), only siblings
  // are in directory order: find each entry's parent with a stack, then sort each directory.
  const parent = new Int32Array(n).fill(-1);
  const firstChild = new Int32Array(n).fill(-1);
  const nextSibling = new Int32Array(n).fill(-1);
  const lastChild = new Int32Array(n).fill(-1);
  const roots: number[] = [];
  const stack: number[] = [];
  for (let i = 0; i < n; i++) {
    const rel = w.rel[i];
    while (stack.length) {
      const top = w.rel[stack[stack.length - 1]];
      if (rel.length > top.length && rel.charCodeAt(top.length) === 0x2f && rel.startsWith(top)) break;
      stack.pop();
    }
    const p = stack.length ? stack[stack.length - 1] : -1;
    parent[i] = p;
    if (p < 0) roots.push(i);
    else if (lastChild[p] < 0) firstChild[p] = lastChild[p] = i;
    else lastChild[p] = nextSibling[lastChild[p]] = i;
    if (w.type[i] === 'dir') stack.push(i);
  }
  // siblings share their parent's path: comparing whole paths compares their names
  const byName = (x: number, y: number) => {
    const a = w.rel[x];
    const b = w.rel[y];
    return a < b ? -1 : a > b ? 1 : 0;
  };
  const order = new Int32Array(n);
  let k = 0;
  const emit = (siblings: number[]) => {
    siblings.sort(byName);
    for (const i of siblings) {
      order[k++] = i;
      if (firstChild[i] >= 0) {
        const kids: number[] = [];
        for (let c = firstChild[i]; c >= 0; c = nextSibling[c]) kids.push(c);
        emit(kids);
      }
    }
  };
  emit(roots);
  return { order: k === n ? order : order.subarray(0, k), parent };
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
      if (ba.compare(bb, 0, want, 0, want) !== 0) return false;
      pos += want;
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

/**
 * The lower tree's side of the classification, looked up ahead (while getfattr works, before
 * the overlay xattrs are known): the lstat of every entry whose parent is a directory in both
 * trees, and the byte comparison of regular files of equal size. A superset of what the
 * classification asks (it does not look below opaque directories); it uses these results and
 * looks up only what is not here.
 */
interface Below {
  /** looked[i]: the lower path was looked up; present[i]: something is there (its stat below) */
  looked: Uint8Array;
  present: Uint8Array;
  mode: Uint32Array;
  uid: Uint32Array;
  gid: Uint32Array;
  size: Float64Array;
  mtimeMs: Float64Array;
  rdev: Float64Array;
  /** SAME / DIFFERENT for a compared file, 0 when not compared */
  same: Uint8Array;
}
const SAME = 1;
const DIFFERENT = 2;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

/** What the classification reads of a lower path's lstat (columns in Below: 100k fs.Stats kept alive cost GC time). */
interface LowerStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeMs: number;
  rdev: number;
}

function lowerStatAt(b: Below, i: number): LowerStat | undefined {
  if (!b.present[i]) return undefined;
  return { mode: b.mode[i], uid: b.uid[i], gid: b.gid[i], size: b.size[i], mtimeMs: b.mtimeMs[i], rdev: b.rdev[i] };
}

function lookBelow(w: Walk, order: Int32Array, parent: Int32Array, dev: number, upperB: Buffer, lowerRoot: Buffer): Below {
  const n = w.rel.length;
  const b: Below = {
    looked: new Uint8Array(n), present: new Uint8Array(n), mode: new Uint32Array(n), uid: new Uint32Array(n),
    gid: new Uint32Array(n), size: new Float64Array(n), mtimeMs: new Float64Array(n), rdev: new Float64Array(n),
    same: new Uint8Array(n),
  };
  const dirInBoth = new Uint8Array(n);
  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    const p = parent[i];
    if ((p >= 0 && !dirInBoth[p]) || w.dev[i] !== dev || w.type[i] === 'socket') continue;
    const relB = Buffer.from(w.rel[i], 'latin1');
    const lowerAbs = Buffer.concat([lowerRoot, SLASH, relB]);
    const lst = lstatQuiet(lowerAbs);
    b.looked[i] = 1;
    if (!lst) continue;
    b.present[i] = 1;
    b.mode[i] = lst.mode;
    b.uid[i] = lst.uid;
    b.gid[i] = lst.gid;
    b.size[i] = lst.size;
    b.mtimeMs[i] = lst.mtimeMs;
    b.rdev[i] = lst.rdev;
    const type = w.type[i];
    const ifmt = lst.mode & S_IFMT;
    if (type === 'dir') {
      if (ifmt === S_IFDIR) dirInBoth[i] = 1;
    } else if (type === 'file' && ifmt === S_IFREG && lst.size === w.size[i] && w.size[i] <= COMPARE_MAX_BYTES) {
      b.same[i] = sameContent(Buffer.concat([upperB, SLASH, relB]), lowerAbs, w.size[i]) ? SAME : DIFFERENT;
    }
  }
  return b;
}

/** Shared by the many entries without xattrs or hardlinks (frozen: 100k empty arrays cost GC time). */
const NONE = Object.freeze([]) as unknown as Array<[string, string]>;

const MOUNT_POINT_REASON = 'another filesystem is mounted here; its contents are not part of the overlay and are not saved';
const SOCKET_REASON = 'a socket belongs to the program that listens on it; it cannot be saved';

/**
 * Scans `upper` (an overlayfs upperdir) against `lower` (the tree below it, or null when it is
 * not available: then everything that is not a whiteout or opaque directory counts as added).
 * Entries are in pre-order, siblings sorted by bytes; `mtime` is in whole seconds.
 */
export async function scanUpper(upper: string, lower: string | null): Promise<ScanResult> {
  const t0 = performance.now();
  const root = fs.realpathSync(upper);
  const rootSt = fs.lstatSync(root);
  if (!rootSt.isDirectory()) throw new Error(`${upper} is not a directory`);
  const lowerRoot = lower === null ? null : Buffer.from(lower);
  if (lowerRoot && !lstatQuiet(lowerRoot)?.isDirectory()) throw new Error(`lower tree ${lower} is not a directory`);

  const upperB = Buffer.from(root);
  const xattrs = new XattrReader(root);
  const walk = walkUpper(root, (buf, start, end) => xattrs.add(buf, start, end));
  let w: Walk;
  let records: XattrRecord[];
  let order: Int32Array;
  let parent: Int32Array;
  let below: Below | null = null;
  try {
    w = await walk.done;
    // xargs starts getfattr once its command line is full or its input ends, so for all but
    // big trees getfattr runs only now: the lower tree is looked at meanwhile (another core)
    xattrs.end();
    ({ order, parent } = preorder(w));
    if (lowerRoot) below = lookBelow(w, order, parent, rootSt.dev, upperB, lowerRoot);
    records = await xattrs.finish();
  } catch (e) {
    walk.kill();
    xattrs.kill();
    throw e;
  }

  const skipped: ScanResult['skipped'] = [];
  for (const line of w.errors) {
    const m = /^find: '(.*)': (.*)$/.exec(line);
    const p = m && m[1].startsWith(root + '/') ? m[1].slice(root.length + 1) : '';
    skipped.push({ path: p, reason: m ? `cannot be read: ${m[2]}` : line });
  }
  const overlayX = new Map<string, Map<string, string>>();
  const userX = new Map<string, Array<[string, string]>>();
  for (const r of records) {
    let ov: Map<string, string> | null = null;
    let other: Array<[string, string]> | null = null;
    for (const [name, value] of r.attrs) {
      if (name.startsWith(OVERLAY_XATTR_PREFIX)) (ov ??= new Map()).set(name.slice(OVERLAY_XATTR_PREFIX.length), value);
      else (other ??= []).push([name, value]);
    }
    if (ov) overlayX.set(r.path, ov);
    if (other) userX.set(r.path, other);
  }

  const n = w.rel.length;
  // lowerDir[i]: the lower tree has a real, visible directory at this path, so children are
  // looked up below; dead[i]: skipped, and its subtree with it.
  const lowerDir = new Uint8Array(n);
  const dead = new Uint8Array(n);
  const entryOf = new Int32Array(n).fill(-1);
  const entries: ChangeEntry[] = [];
  const entryParent: number[] = [];
  const groups = new Map<string, number[]>();
  let bytes = 0;
  /** what the lower tree has at a path whose parent is visible there (for whiteouts and opaque dirs) */
  // (paths as bytes only when a lookup is not in `below` already: most are)
  const lowerAbsOf = (path: string) => Buffer.concat([lowerRoot!, SLASH, Buffer.from(path, 'latin1')]);
  const upperAbsOf = (path: string) => Buffer.concat([upperB, SLASH, Buffer.from(path, 'latin1')]);
  const lowerTypeAt = (i: number, p: number, path: string): EntryType | undefined => {
    if (!lowerRoot || !(p < 0 || lowerDir[p] === 1)) return undefined;
    const lst = below?.looked[i] ? lowerStatAt(below, i) : lstatQuiet(lowerAbsOf(path));
    return lst ? TYPE_BY_IFMT[lst.mode & S_IFMT] : undefined;
  };

  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    const p = parent[i];
    const path = w.rel[i];
    const type = w.type[i];
    if (p >= 0 && dead[p]) {
      dead[i] = 1;
      continue;
    }
    if (w.dev[i] !== rootSt.dev) {
      // find -xdev lists a mount point but does not enter it
      skipped.push({ path, reason: MOUNT_POINT_REASON });
      dead[i] = 1;
      continue;
    }
    const ov = overlayX.get(path);
    const mode = w.mode[i];
    let kind: ChangeKind;
    let entryType: EntryType = type;
    let size = type === 'file' || type === 'symlink' ? w.size[i] : 0;
    const target = type === 'symlink' ? (w.target.get(i) ?? '') : undefined;
    // find cannot print st_rdev: devices (whiteouts, mostly) are looked at here
    const rdev = type === 'char' || type === 'block' ? (lstatQuiet(upperAbsOf(path))?.rdev ?? -1) : -1;

    let lowerType: EntryType | undefined;
    if ((type === 'char' && rdev === 0) || (type === 'file' && w.size[i] === 0 && ov?.has('whiteout'))) {
      kind = 'deleted';
      entryType = 'whiteout';
      size = 0;
      lowerType = lowerTypeAt(i, p, path);
    } else if (ov && (ov.has('redirect') || ov.has('metacopy'))) {
      const which = ov.has('redirect') ? 'redirect' : 'metacopy';
      skipped.push({
        path,
        reason:
          `overlayfs ${which} entry (trusted.overlay.${which}): its data is elsewhere in the lower tree, so it cannot ` +
          `be saved as a layer (mkma mounts with redirect_dir=off,metacopy=off: this overlay was mounted differently)`,
      });
      dead[i] = 1;
      continue;
    } else if (type === 'socket') {
      skipped.push({ path, reason: SOCKET_REASON });
      dead[i] = 1;
      continue;
    } else if (type === 'dir' && ov?.has('opaque') && decodeXattrValue(ov.get('opaque')!).toString('latin1') === 'y') {
      // ("x" means "holds xattr whiteouts", not opaque)
      kind = 'replaced';
      lowerType = lowerTypeAt(i, p, path);
    } else {
      const parentLowerVisible = p < 0 ? lowerRoot !== null : lowerDir[p] === 1;
      const lst: LowerStat | undefined =
        !parentLowerVisible || !lowerRoot ? undefined : below?.looked[i] ? lowerStatAt(below, i) : lstatQuiet(lowerAbsOf(path));
      if (lst) lowerType = TYPE_BY_IFMT[lst.mode & S_IFMT];
      if (!lst) {
        kind = 'added';
      } else if (type === 'dir' && (lst.mode & S_IFMT) === S_IFDIR) {
        lowerDir[i] = 1;
        // A directory copied up only to hold changes is a container; one whose owner or mode
        // changed (chmod/chown of the directory itself) is a change of its own.
        const sameMeta = (mode & 0o7777) === (lst.mode & 0o7777) && w.uid[i] === lst.uid && w.gid[i] === lst.gid;
        kind = sameMeta ? 'container' : 'metadata';
      } else if ((lst.mode & S_IFMT) !== (mode & S_IFMT)) {
        kind = 'modified';
      } else if (type === 'file') {
        if (lst.size !== w.size[i]) kind = 'modified';
        else if (w.size[i] > COMPARE_MAX_BYTES) kind = Math.floor(lst.mtimeMs / 1000) === w.mtime[i] ? 'metadata' : 'modified';
        else if (below?.same[i]) kind = below.same[i] === SAME ? 'metadata' : 'modified';
        else kind = sameContent(upperAbsOf(path), lowerAbsOf(path), w.size[i]) ? 'metadata' : 'modified';
      } else if (type === 'symlink') {
        const lt = (fs.readlinkSync(lowerAbsOf(path), { encoding: 'buffer' }) as Buffer).toString('latin1');
        kind = lt === target ? 'metadata' : 'modified';
      } else if (type === 'char' || type === 'block') {
        kind = lst.rdev === rdev ? 'metadata' : 'modified';
      } else {
        kind = 'metadata'; // a fifo
      }
    }
    const j = entries.length;
    entryOf[i] = j;
    entryParent.push(p >= 0 ? entryOf[p] : -1);
    bytes += size;
    const entry: ChangeEntry = {
      path,
      kind,
      type: entryType,
      size,
      totalSize: size,
      mode,
      uid: w.uid[i],
      gid: w.gid[i],
      mtime: w.mtime[i],
      xattrs: userX.get(path) ?? NONE,
      hardlinks: NONE as unknown as string[],
    };
    if (target !== undefined) entry.target = target;
    if (lowerType !== undefined) entry.lowerType = lowerType;
    entries.push(entry);
    // Hardlinks: entries sharing an inode inside the upperdir (whiteouts share overlayfs' one
    // whiteout inode: they are not links of each other).
    if (w.inode[i] && entryType !== 'whiteout') {
      const g = groups.get(w.inode[i]);
      if (g) g.push(j);
      else groups.set(w.inode[i], [j]);
    }
  }

  // Subtree sizes: children come after their parents, so one backward pass adds them up.
  for (let j = entries.length - 1; j >= 0; j--) {
    const p = entryParent[j];
    if (p >= 0) entries[p].totalSize += entries[j].totalSize;
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
