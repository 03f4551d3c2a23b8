// The upperdir walk by mkma-scan (init/unpack/mkma-scan.c, located by persist/scan-helper.ts):
// the entries, every xattr and the lower tree's side in one process, parsed here as the records
// stream in. Gives what the TypeScript walk gives (persist/walk.ts for the entries, getfattr
// through format/xattrs.ts for the xattrs, persist/lower.ts's lookBelow for the lower tree), in
// the same spelling, so that scan.ts classifies both the same way.
import type { XattrRecord } from '../format/manifest.js';
import { DIFFERENT, SAME, S_IFMT, type Below } from './lower.js';
import { emptyWalk, readNum, streamRecords, TYPE_BY_IFMT, type Cursor, type Walk } from './walk.js';

export interface NativeWalk {
  w: Walk;
  /** xattrs as getfattr -d -e base64 spells them, names sorted as getfattr sorts them */
  records: XattrRecord[];
  below: Below | null;
}

const byName = (a: [string, string], b: [string, string]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/** Runs `helper [-l lower] root` and parses its records (format: the head of mkma-scan.c). */
export function walkNative(helper: string, root: string, lower: string | null): { done: Promise<NativeWalk>; kill: () => void } {
  const rdevs: number[] = [];
  const w: Walk = { ...emptyWalk(), rdev: rdevs };
  const records: XattrRecord[] = [];
  // the lower side, column by column in typed arrays grown as records come (no 100k-element
  // arrays of numbers for the garbage collector)
  let cap = 0;
  let below: Below | null = null;
  const grow = (need: number) => {
    const old = below;
    cap = Math.max(1024, need * 2);
    below = {
      looked: new Uint8Array(cap),
      present: new Uint8Array(cap),
      mode: new Uint32Array(cap),
      uid: new Uint32Array(cap),
      gid: new Uint32Array(cap),
      size: new Float64Array(cap),
      mtimeMs: new Float64Array(cap),
      rdev: new Float64Array(cap),
      same: new Uint8Array(cap),
    };
    if (old) for (const k of Object.keys(old) as Array<keyof Below>) below[k].set(old[k]);
  };
  const cur: Cursor = { buf: Buffer.alloc(0), p: 0, end: 0 };

  const record = (buf: Buffer, pos: number): number => {
    const a = buf.indexOf(0, pos);
    const b = a < 0 ? -1 : buf.indexOf(0, a + 1);
    const c = b < 0 ? -1 : buf.indexOf(0, b + 1);
    if (c < 0) return -1;
    cur.buf = buf;
    cur.p = pos;
    cur.end = a;
    const mode = readNum(cur, 8);
    const dev = readNum(cur, 10);
    const inoStart = cur.p;
    readNum(cur, 10);
    const inoEnd = cur.p - 1;
    const nlink = readNum(cur, 10);
    const uid = readNum(cur, 10);
    const gid = readNum(cur, 10);
    const size = readNum(cur, 10);
    const mtime = readNum(cur, 10);
    const rdev = readNum(cur, 10);
    const nx = readNum(cur, 10);
    // the xattrs follow the link target: the whole record must be here
    let end = c;
    for (let k = 0; k < 2 * nx && end >= 0; k++) end = buf.indexOf(0, end + 1);
    if (end < 0) return -1;

    const i = w.rel.length;
    const type = TYPE_BY_IFMT[mode & S_IFMT] ?? 'file';
    const rel = buf.toString('latin1', a + 1, b);
    w.rel.push(rel);
    w.type.push(type);
    w.dev.push(dev);
    w.nlink.push(nlink);
    w.inode.push(nlink > 1 && type !== 'dir' ? `${dev}:${buf.toString('latin1', inoStart, inoEnd)}` : '');
    w.mode.push(mode);
    w.uid.push(uid);
    w.gid.push(gid);
    w.size.push(size);
    w.mtime.push(mtime);
    rdevs.push(rdev);
    if (type === 'symlink') w.target.set(i, buf.toString('latin1', b + 1, c));

    const l = buf[cur.p];
    if (lower !== null && l !== 0x2d /* "-": not looked up */) {
      if (i >= cap) grow(i + 1);
      const bl = below!;
      bl.looked[i] = 1;
      if (l !== 0x30 /* "0": nothing there */) {
        bl.present[i] = 1;
        bl.mode[i] = readNum(cur, 8);
        bl.uid[i] = readNum(cur, 10);
        bl.gid[i] = readNum(cur, 10);
        bl.size[i] = readNum(cur, 10);
        bl.mtimeMs[i] = readNum(cur, 10) * 1000;
        bl.rdev[i] = readNum(cur, 10);
        const cmp = buf[cur.p];
        bl.same[i] = cmp === 0x73 /* s */ ? SAME : cmp === 0x64 /* d */ ? DIFFERENT : 0;
      }
    }

    if (nx > 0) {
      const attrs: Array<[string, string]> = [];
      let p = c + 1;
      for (let k = 0; k < nx; k++) {
        const n = buf.indexOf(0, p);
        const v = buf.indexOf(0, n + 1);
        attrs.push([buf.toString('latin1', p, n), '0s' + Buffer.from(buf.toString('latin1', n + 1, v), 'hex').toString('base64')]);
        p = v + 1;
      }
      if (attrs.length > 1) attrs.sort(byName);
      records.push({ path: rel, attrs });
    }
    return end + 1;
  };
  const s = streamRecords(helper, lower === null ? [root] : ['-l', lower, root], `mkma-scan ${root}`, record);
  const done = s.done.then((err): NativeWalk => {
    w.errors = err.split('\n').filter((line) => line.trim() !== '');
    if (lower !== null && cap < w.rel.length) grow(w.rel.length);
    return { w, records, below };
  });
  return { done, kill: s.kill };
}
