// A byte-exact description of a directory tree, for comparing the trees that the TypeScript
// and the busybox sides of layer application produce (and GNU cpio round trips).
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

const S_IFMT = 0o170000;
const TYPES: Record<number, string> = {
  0o140000: 'socket',
  0o120000: 'symlink',
  0o100000: 'file',
  0o060000: 'block',
  0o040000: 'dir',
  0o020000: 'char',
  0o010000: 'fifo',
};

/** root + '/' + rel, where rel is raw bytes held in a latin1 string ("." is the root) */
export function treePath(root: string, rel: string): Buffer {
  if (rel === '.') return Buffer.from(root);
  return Buffer.concat([Buffer.from(root), Buffer.from('/' + rel, 'latin1')]);
}

/** Every path below root (raw bytes as latin1 strings), pre-order, sorted by bytes; "." first. */
export function listTree(root: string): string[] {
  const out = ['.'];
  const walk = (abs: Buffer, rel: string | null) => {
    const names = (fs.readdirSync(abs, { encoding: 'buffer' }) as Buffer[]).sort(Buffer.compare);
    for (const name of names) {
      const childAbs = Buffer.concat([abs, Buffer.from('/'), name]);
      const childRel = (rel === null ? '' : rel + '/') + name.toString('latin1');
      out.push(childRel);
      if (fs.lstatSync(childAbs).isDirectory()) walk(childAbs, childRel);
    }
  };
  walk(Buffer.from(root), null);
  return out;
}

/** getfattr's spelling of a path: `\\` and `\ooo` (3 octal digits) escapes. */
function unescapeGetfattr(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] !== '\\') {
      out += s[i];
    } else if (s[i + 1] === '\\') {
      out += '\\';
      i++;
    } else if (/^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      out += String.fromCharCode(Number.parseInt(s.slice(i + 1, i + 4), 8));
      i += 3;
    } else {
      throw new Error(`cannot parse getfattr path ${JSON.stringify(s)}`);
    }
  }
  return out;
}

/**
 * All xattrs of every path (not following symlinks), as `getfattr -h -d -m - -e hex` prints
 * them: path → sorted "name=0xHEX" lines. Paths without xattrs are absent.
 */
export function readXattrs(root: string, paths: string[]): Map<string, string[]> {
  const input = Buffer.concat(paths.map((p) => Buffer.concat([Buffer.from(p === '.' ? '.' : './' + p, 'latin1'), Buffer.from([0])])));
  const r = spawnSync('xargs', ['-0', '-r', 'getfattr', '-h', '-d', '-m', '-', '-e', 'hex', '--'], {
    cwd: root,
    input,
    env: { ...process.env, LC_ALL: 'C' },
    maxBuffer: 64 << 20,
  });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`getfattr failed (${r.status}): ${r.stderr.toString()}`);
  const map = new Map<string, string[]>();
  let cur: string[] | null = null;
  for (const line of r.stdout.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      let p = unescapeGetfattr(line.slice(8));
      if (p.startsWith('./')) p = p.slice(2);
      cur = [];
      map.set(p, cur);
    } else if (line && cur && !line.startsWith('#')) {
      cur.push(line);
    }
  }
  for (const v of map.values()) v.sort();
  return map;
}

export interface DescribeOptions {
  /**
   * Which mtimes to include. 'files' (the default) compares regular files only: busybox
   * `cpio -m` does not restore the mtimes of directories or symlinks, and a directory's mtime
   * changes whenever an entry is renamed into it, so only regular files' mtimes can agree
   * between the busybox side and the TypeScript side. GNU cpio round trips can add 'dirs'.
   */
  mtimes?: 'files' | 'files+dirs';
  /** leave the root itself out (its metadata belongs to whoever made the directory) */
  skipRoot?: boolean;
}

/**
 * For every path (key: JSON of the raw bytes): type, permission bits incl. setuid/setgid/sticky,
 * uid:gid, size + sha256 (files), symlink target, rdev (devices), hardlink group (every path
 * sharing the inode), all xattrs, and mtimes as selected.
 */
export function describeTree(root: string, opts: DescribeOptions = {}): Record<string, string> {
  const paths = listTree(root).filter((p) => !(opts.skipRoot && p === '.'));
  const stats = new Map<string, fs.Stats>();
  const byInode = new Map<string, string[]>();
  for (const p of paths) {
    const st = fs.lstatSync(treePath(root, p));
    stats.set(p, st);
    if (!st.isDirectory()) {
      const k = `${st.dev}:${st.ino}`;
      byInode.set(k, [...(byInode.get(k) ?? []), p]);
    }
  }
  const xattrs = readXattrs(root, paths);
  const out: Record<string, string> = {};
  for (const p of paths) {
    const st = stats.get(p)!;
    const type = TYPES[st.mode & S_IFMT] ?? `type${(st.mode & S_IFMT).toString(8)}`;
    const parts = [type, (st.mode & 0o7777).toString(8).padStart(4, '0'), `${st.uid}:${st.gid}`];
    const abs = treePath(root, p);
    if (type === 'file') {
      const data = fs.readFileSync(abs);
      parts.push(`size=${st.size}`, `sha256=${createHash('sha256').update(data).digest('hex').slice(0, 16)}`);
      parts.push(`mtime=${Math.floor(st.mtimeMs / 1000)}`);
    } else if (type === 'symlink') {
      parts.push(`-> ${JSON.stringify((fs.readlinkSync(abs, { encoding: 'buffer' }) as Buffer).toString('latin1'))}`);
    } else if (type === 'char' || type === 'block') {
      parts.push(`rdev=${Math.floor(st.rdev / 256) & 0xfff}:${st.rdev & 0xff}`);
    } else if (type === 'dir' && opts.mtimes === 'files+dirs') {
      parts.push(`mtime=${Math.floor(st.mtimeMs / 1000)}`);
    }
    if (type !== 'dir') {
      const group = byInode.get(`${st.dev}:${st.ino}`)!;
      parts.push(`nlink=${st.nlink}`);
      if (group.length > 1) parts.push(`links=${JSON.stringify(group)}`);
    }
    const x = xattrs.get(p);
    if (x) parts.push(`xattrs=${x.join(',')}`);
    out[JSON.stringify(p)] = parts.join(' ');
  }
  return out;
}
