// The upperdir's entries, as `find -xdev -printf` lists them: parsed here as the output streams
// (the walk is find's C loop over getdents/fstatat, about three times faster than fs.lstatSync
// per entry), kept column by column, then put in a stable pre-order. Nothing follows symlinks,
// and nothing descends into another filesystem.
import type { ChildProcess } from 'node:child_process';
import { spawnTracked } from '../lib/run.js';
import type { EntryType } from './model.js';

export const TYPE_BY_LETTER: Record<number, { type: EntryType; ifmt: number }> = {
  0x66 /* f */: { type: 'file', ifmt: 0o100000 },
  0x64 /* d */: { type: 'dir', ifmt: 0o040000 },
  0x6c /* l */: { type: 'symlink', ifmt: 0o120000 },
  0x63 /* c */: { type: 'char', ifmt: 0o020000 },
  0x62 /* b */: { type: 'block', ifmt: 0o060000 },
  0x70 /* p */: { type: 'fifo', ifmt: 0o010000 },
  0x73 /* s */: { type: 'socket', ifmt: 0o140000 },
};
export const TYPE_BY_IFMT: Record<number, EntryType> = Object.fromEntries(Object.values(TYPE_BY_LETTER).map((t) => [t.ifmt, t.type]));
/** type letter, st_dev, inode, links, permission bits (octal, incl. setuid/setgid/sticky), uid, gid, size, mtime; path; link target */
const STAT_FORMAT = '%y %D %i %n %m %U %G %s %T@\\0%P\\0%l\\0';

/** The walk, column by column (100k objects would cost more in garbage collection than the parse). */
export interface Walk {
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
  /** st_rdev, when the walk read it (mkma-scan; find cannot print it) */
  rdev?: number[];
  errors: string[];
}

/** Collects a child's stderr; resolves with it when it exits with one of `okCodes`. */
function collect(child: ChildProcess, what: string, okCodes: number[], onStdout: (b: Buffer) => void): Promise<string> {
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (err.length < 1 << 20) err += d;
  });
  child.stdout!.on('data', onStdout);
  return new Promise((resolve, reject) => {
    child.on('error', (e) => reject(new Error(`cannot run ${what}: ${e.message}`)));
    child.on('close', (code) => {
      if (code !== null && okCodes.includes(code)) resolve(err);
      else reject(new Error(`${what} failed (exit ${code}): ${err.trim().slice(0, 2000)}`));
    });
  });
}

export interface Cursor {
  buf: Buffer;
  p: number;
  end: number;
}
const cur: Cursor = { buf: Buffer.alloc(0), p: 0, end: 0 };

/** A number at the cursor; skips the rest of the field (the fraction of %T@) and the space. */
export function readNum(c: Cursor, base: number): number {
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

/** A walk with no entries yet. */
export function emptyWalk(): Walk {
  return {
    rel: [],
    type: [],
    dev: [],
    nlink: [],
    inode: [],
    mode: [],
    uid: [],
    gid: [],
    size: [],
    mtime: [],
    target: new Map(),
    errors: [],
  };
}

/**
 * Runs `cmd` (LC_ALL=C) and hands its output to `record` as it streams: record(buf, pos) parses
 * the record at pos and returns the position after it, or -1 while it is not all there yet.
 * Resolves with its stderr when it exits 0 or 1 (entries that could not be read: reported, not
 * fatal). Not runSync/run: the output is parsed as it comes.
 */
export function streamRecords(
  cmd: string,
  args: string[],
  what: string,
  record: (buf: Buffer, pos: number) => number,
): { done: Promise<string>; kill: () => void } {
  const child = spawnTracked(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
  let rest: Buffer | null = null;
  const onData = (chunk: Buffer) => {
    const buf = rest ? Buffer.concat([rest, chunk]) : chunk;
    let pos = 0;
    for (let next = record(buf, pos); next >= 0; next = record(buf, pos)) pos = next;
    rest = pos < buf.length ? Buffer.from(buf.subarray(pos)) : null;
  };
  const done = collect(child, what, [0, 1], onData).then((err) => {
    if (rest) throw new Error(`${what}: its output ends inside a record`);
    return err;
  });
  return { done, kill: () => child.kill('SIGKILL') };
}

/** Parses `find -printf STAT_FORMAT` output as it streams in. */
export function walkUpper(
  root: string,
  onPath: (buf: Buffer, start: number, end: number) => void,
): { done: Promise<Walk>; kill: () => void } {
  const w = emptyWalk();
  const record = (buf: Buffer, pos: number): number => {
    const a = buf.indexOf(0, pos);
    const b = a < 0 ? -1 : buf.indexOf(0, a + 1);
    const c = b < 0 ? -1 : buf.indexOf(0, b + 1);
    if (c < 0) return -1;
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
    return c + 1;
  };
  const s = streamRecords('find', [root, '-xdev', '-mindepth', '1', '-printf', STAT_FORMAT], `find ${root}`, record);
  const done = s.done.then((err) => {
    w.errors = err.split('\n').filter((l) => l.trim() !== '');
    return w;
  });
  return { done, kill: s.kill };
}

/** Pre-order with siblings sorted by bytes: a stable order for the UI, the layer and the tests. */
export function preorder(w: Walk): { order: Int32Array; parent: Int32Array } {
  const n = w.rel.length;
  // find's output is pre-order already (each directory's subtree follows it), only siblings
  // are in directory order: find each entry's parent with a stack, then sort each directory
  // (unless they are sorted already, as mkma-scan writes them).
  const parent = new Int32Array(n).fill(-1);
  const firstChild = new Int32Array(n).fill(-1);
  const nextSibling = new Int32Array(n).fill(-1);
  const lastChild = new Int32Array(n).fill(-1);
  const roots: number[] = [];
  const stack: number[] = [];
  // mkma-scan lists each directory sorted: then the walk's order is the order wanted already
  let sorted = true;
  for (let i = 0; i < n; i++) {
    const rel = w.rel[i];
    while (stack.length) {
      const top = w.rel[stack[stack.length - 1]];
      if (rel.length > top.length && rel.charCodeAt(top.length) === 0x2f && rel.startsWith(top)) break;
      stack.pop();
    }
    const p = stack.length ? stack[stack.length - 1] : -1;
    parent[i] = p;
    const prev = p < 0 ? (roots.length ? roots[roots.length - 1] : -1) : lastChild[p];
    if (sorted && prev >= 0 && !(w.rel[prev] < rel)) sorted = false;
    if (p < 0) roots.push(i);
    else if (lastChild[p] < 0) firstChild[p] = lastChild[p] = i;
    else lastChild[p] = nextSibling[lastChild[p]] = i;
    if (w.type[i] === 'dir') stack.push(i);
  }
  if (sorted) {
    const order = new Int32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    return { order, parent };
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
