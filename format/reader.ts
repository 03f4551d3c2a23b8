// Reading mkma images on the host: the manifest (from the end of the file) and extraction of
// the archive into an empty directory, by the rules of docs/FORMAT.md (the same rules as
// mkma-unpack and the init's busybox fallback: test/conformance/ holds the three together).
//
// Safety: the target must be empty, every parent of a name is checked with lstat (a real
// directory, never a symlink) before anything is created in it, files are created O_EXCL |
// O_NOFOLLOW, and directory metadata is set through a descriptor opened O_NOFOLLOW. An
// archive that names something twice or names something below a non-directory is refused.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FORMAT } from '../lib/contract.js';
import { MkmaError } from '../lib/errors.js';
import { runSync, spawnTracked } from '../lib/run.js';
import { checkShards, FOOTER_SIZE, ManifestError, parseFooter, parseManifestBody, SKIPPABLE_MAGIC, type Manifest } from './manifest.js';
import { NewcParser, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, type NewcHeader } from './newc.js';

export class ImageReadError extends MkmaError {}

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_TRUNC, O_DIRECTORY, O_NONBLOCK } = fs.constants;

/** Opens an image for reading; a FIFO, a directory or a device is refused, never opened blocking. */
export function openImage(file: string): number {
  const fd = fs.openSync(file, O_RDONLY | O_NONBLOCK);
  if (!fs.fstatSync(fd).isFile()) {
    fs.closeSync(fd);
    throw new ManifestError(`${file}: not a regular file`);
  }
  return fd;
}

/** The manifest, checked (docs/FORMAT.md "The file" and "The manifest"), its shard table too. */
export function readManifest(file: string): Manifest {
  const m = readManifestFrame(file);
  try {
    checkShards(m);
  } catch (e) {
    if (e instanceof ManifestError) throw new ManifestError(`${file}: ${e.message}`);
    throw e;
  }
  return m;
}

/**
 * The manifest frame at the end of `file` and its body, checked, with `data_bytes` against
 * the file's size; the shard table is not checked (readManifest does both; `mkma verify`
 * reports the two apart).
 */
export function readManifestFrame(file: string): Manifest {
  const fd = openImage(file);
  try {
    const size = fs.fstatSync(fd).size;
    if (size < FOOTER_SIZE + 8) throw new ManifestError(`${file}: too small to be an mkma image (${size} bytes)`);
    const tail = Buffer.alloc(FOOTER_SIZE);
    fs.readSync(fd, tail, 0, FOOTER_SIZE, size - FOOTER_SIZE);
    const bodyLen = parseFooter(tail);
    const frameStart = size - FOOTER_SIZE - bodyLen - 8;
    if (frameStart < 0) throw new ManifestError(`${file}: damaged manifest footer`);
    const head = Buffer.alloc(8);
    fs.readSync(fd, head, 0, 8, frameStart);
    if (head.readUInt32LE(0) !== SKIPPABLE_MAGIC || head.readUInt32LE(4) !== bodyLen + FOOTER_SIZE) {
      throw new ManifestError(`${file}: manifest frame header is damaged`);
    }
    const body = Buffer.alloc(bodyLen);
    fs.readSync(fd, body, 0, bodyLen, frameStart + 8);
    const m = parseManifestBody(body);
    if (m.dataBytes !== frameStart) {
      throw new ManifestError(`${file}: data is ${frameStart} bytes but the manifest says ${m.dataBytes} (truncated or damaged)`);
    }
    return m;
  } catch (e) {
    if (e instanceof ManifestError && !e.message.startsWith(file)) throw new ManifestError(`${file}: ${e.message}`);
    throw e;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * An archive name as docs/FORMAT.md allows it: "." (the target), PATH or "./PATH", after
 * leading slashes are dropped (as GNU and busybox cpio drop them); null otherwise.
 */
export function cleanName(raw: string): string | null {
  const name = raw.replace(/^\/+/, '');
  if (name === '.') return '.';
  const p = name.startsWith('./') ? name.slice(2) : name;
  return p.length > 0 && p.length < FORMAT.nameLimit && !p.split('/').some((c) => c === '' || c === '.' || c === '..') ? p : null;
}

function writeAll(fd: number, data: Buffer): void {
  for (let off = 0; off < data.length;) off += fs.writeSync(fd, data, off);
}

const B = (s: string) => Buffer.from(s, 'latin1');
const q = (s: string) => JSON.stringify(s);

export interface ExtractResult {
  entries: number;
  bytes: number;
}

interface LinkSlot {
  path: string;
  hasData: boolean;
}

interface DirRecord {
  rel: string;
  h: NewcHeader;
}

/** One extraction: an archive into an empty directory. */
class Extraction {
  readonly dirs: DirRecord[] = [];
  links = new Map<number, LinkSlot>();
  entries = 0;
  bytes = 0;
  private streamFd = -1;
  private readonly root: Buffer;
  /** directories below the target already checked with lstat (or made) by this extraction */
  private readonly realDirs = new Set<string>();

  constructor(dest: string) {
    this.root = B(dest);
    const names = fs.readdirSync(dest);
    if (names.length) throw new ImageReadError('the target directory is not empty');
  }

  abs(rel: string): Buffer {
    return rel === '.' ? this.root : Buffer.concat([this.root, B('/' + rel)]);
  }

  /** lstat of rel, or null when it does not exist. */
  private lst(rel: string): fs.Stats | null {
    try {
      return fs.lstatSync(this.abs(rel));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  /**
   * Every parent of rel must be a real directory: checked with lstat, one component at a
   * time; a missing one is made (0755: no entry of its own sets it otherwise).
   */
  private parents(rel: string): void {
    const parts = rel.split('/');
    let cur = '';
    for (let i = 0; i < parts.length - 1; i++) {
      cur = cur ? `${cur}/${parts[i]}` : parts[i];
      // checked once: this extraction made it a directory, and never replaces a directory
      if (this.realDirs.has(cur)) continue;
      const st = this.lst(cur);
      if (!st) fs.mkdirSync(this.abs(cur), { mode: 0o755 });
      else if (!st.isDirectory()) throw new ImageReadError(`${q(rel)} lies below ${q(cur)}, which is not a directory`);
      this.realDirs.add(cur);
    }
  }

  /** What EEXIST means here: the target was empty, so this archive made what is there. */
  private exists(rel: string, wantDir: boolean): boolean {
    const st = this.lst(rel);
    if (wantDir && st?.isDirectory()) return true;
    if (st?.isDirectory()) {
      throw new ImageReadError(`${q(rel)} is not a directory, but the archive also has it as a directory or has entries below it`);
    }
    throw new ImageReadError(`${q(rel)} is in the archive twice`);
  }

  private create<T>(rel: string, wantDir: boolean, make: () => T): T | null {
    this.parents(rel);
    try {
      return make();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      this.exists(rel, wantDir);
      return null;
    }
  }

  /** The file descriptor a regular file's data goes into (hardlink groups: docs/FORMAT.md). */
  openFile(rel: string, h: NewcHeader): { fd: number } | null {
    if (h.nlink > 1) {
      const first = this.links.get(h.ino);
      if (first && h.size === 0) {
        this.create(rel, false, () => fs.linkSync(this.abs(first.path), this.abs(rel)));
        // a group without data takes its last member's metadata (as busybox cpio does)
        if (!first.hasData) this.setMeta(rel, h);
        return null;
      }
      if (first) {
        if (first.hasData) throw new ImageReadError(`${q(rel)}: its hardlink group has data twice`);
        first.hasData = true;
        this.create(rel, false, () => fs.linkSync(this.abs(first.path), this.abs(rel)));
        return { fd: fs.openSync(this.abs(rel), O_WRONLY | O_TRUNC | O_NOFOLLOW) };
      }
      this.links.set(h.ino, { path: rel, hasData: h.size > 0 });
    }
    const fd = this.create(rel, false, () => fs.openSync(this.abs(rel), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, h.mode & 0o777));
    return { fd: fd! };
  }

  finishFile(fd: number, h: NewcHeader): void {
    fs.fchownSync(fd, h.uid, h.gid);
    // after chown, which clears setuid/setgid
    fs.fchmodSync(fd, h.mode & 0o7777);
    fs.futimesSync(fd, h.mtime, h.mtime);
    fs.closeSync(fd);
  }

  /** Owner, mode, mtime of a regular file this extraction made (its parents checked again). */
  private setMeta(rel: string, h: NewcHeader): void {
    this.parents(rel);
    const fd = fs.openSync(this.abs(rel), O_RDONLY | O_NOFOLLOW);
    this.finishFile(fd, h);
  }

  startStream(rel: string, h: NewcHeader): void {
    const f = this.openFile(rel, h);
    this.streamFd = f ? f.fd : -1;
  }

  writeStream(chunk: Buffer): void {
    writeAll(this.streamFd, chunk);
  }

  entry(h: NewcHeader, data: Buffer | null): void {
    this.entries++;
    const raw = h.name.toString('latin1');
    const rel = cleanName(raw);
    if (rel === null) throw new ImageReadError(`unsafe name in the archive: ${q(raw)}`);
    const type = h.mode & S_IFMT;
    if (type !== S_IFDIR && rel === '.') throw new ImageReadError('the archive\'s root entry "." is not a directory');
    if (type === S_IFREG) {
      if (data === null) {
        // streamed: the data is written
        if (this.streamFd >= 0) this.finishFile(this.streamFd, h);
        this.streamFd = -1;
        this.bytes += h.size;
        return;
      }
      const f = this.openFile(rel, h);
      if (!f) return;
      writeAll(f.fd, data);
      this.bytes += data.length;
      this.finishFile(f.fd, h);
      return;
    }
    if (type === S_IFLNK) {
      if (h.size === 0 || h.size > FORMAT.symlinkLimit || data === null)
        throw new ImageReadError(`${rel}: bad symlink target length ${h.size}`);
      if (data.includes(0)) throw new ImageReadError(`${rel}: symlink target contains a NUL byte`);
      this.create(rel, false, () => fs.symlinkSync(data, this.abs(rel)));
      fs.lchownSync(this.abs(rel), h.uid, h.gid);
      fs.lutimesSync(this.abs(rel), h.mtime, h.mtime);
      return;
    }
    if (type !== S_IFDIR && type !== S_IFCHR && type !== S_IFBLK && type !== S_IFIFO) {
      throw new ImageReadError(`${rel}: unsupported entry type 0${(type >> 12).toString(8)}${type === S_IFSOCK ? ' (a socket)' : ''}`);
    }
    if (h.size !== 0) throw new ImageReadError(`${rel}: an entry of type 0${(type >> 12).toString(8)} with ${h.size} bytes of data`);
    if (type === S_IFDIR) {
      if (rel !== '.') this.create(rel, true, () => fs.mkdirSync(this.abs(rel), { mode: h.mode & 0o777 }));
      this.dirs.push({ rel, h });
      return;
    }
    // Node cannot mknod; devices are rare in images (never /dev's contents).
    const kind = type === S_IFCHR ? 'c' : type === S_IFBLK ? 'b' : 'p';
    const args = ['-m', (h.mode & 0o7777).toString(8), this.abs(rel).toString('latin1'), kind];
    if (kind !== 'p') args.push(String(h.rdevMajor), String(h.rdevMinor));
    this.parents(rel);
    const r = runSync('mknod', args, { allowFailure: true });
    if (!r.ok) {
      if (this.lst(rel)) this.exists(rel, false);
      throw new ImageReadError(`${rel}: mknod: ${r.stderr.trim()}`);
    }
    fs.lchownSync(this.abs(rel), h.uid, h.gid);
    // a node this process just made, not a link: chmod cannot be redirected
    if (h.mode & 0o7000) fs.chmodSync(this.abs(rel), h.mode & 0o7777);
    fs.lutimesSync(this.abs(rel), h.mtime, h.mtime);
  }

  /** Directory metadata last, deepest first, through O_NOFOLLOW descriptors; "twice" refused. */
  finishDirs(): void {
    const seen = new Set<string>();
    for (const d of this.dirs) {
      if (seen.has(d.rel)) throw new ImageReadError(`${q(d.rel)} is in the archive twice`);
      seen.add(d.rel);
    }
    const depth = (r: string) => (r === '.' ? -1 : r.split('/').length);
    const order = [...this.dirs].sort((a, b) => depth(b.rel) - depth(a.rel));
    for (const { rel, h } of order) {
      if (rel !== '.') this.parents(rel);
      setDirMeta(this.abs(rel), { uid: h.uid, gid: h.gid, mode: h.mode, atime: h.mtime, mtime: h.mtime });
    }
  }
}

/**
 * Owner, mode and times onto a directory, through a descriptor opened O_NOFOLLOW: never
 * through a symlink; nothing when it is not a directory (any more).
 */
export function setDirMeta(dir: Buffer, m: { uid: number; gid: number; mode: number; atime: number | Date; mtime: number | Date }): void {
  let fd: number;
  try {
    fd = fs.openSync(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR' || code === 'ELOOP') return;
    throw e;
  }
  try {
    fs.fchownSync(fd, m.uid, m.gid);
    // after chown, which clears setgid
    fs.fchmodSync(fd, m.mode & 0o7777);
    fs.futimesSync(fd, m.atime, m.mtime);
  } finally {
    fs.closeSync(fd);
  }
}

interface ShardStream {
  child: ReturnType<typeof spawnTracked>;
  exited: Promise<number | null>;
  stderr: () => string;
  chunks: () => AsyncGenerator<Buffer>;
}

/** Bytes a shard decompressed ahead may hold in memory before its zstd waits. */
const AHEAD_BYTES = 8 << 20;

/**
 * A zstd process decompressing one shard (the byte range of the file). Its output is
 * taken as it comes (a child's pipe not read while it runs loses data at its exit) and held,
 * up to AHEAD_BYTES, until the shard's turn.
 */
function startShard(file: string, offset: number, length: number): ShardStream {
  // zstd reads the range itself (tail | head): fed by this process instead, it would wait
  // whenever the extraction is busy, and the extraction would then wait for it
  const child = spawnTracked(
    'sh',
    ['-c', 'tail -c +"$1" -- "$3" | head -c "$2" | zstd -q -dc', 'sh', String(offset + 1), String(length), file],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.on('error', (e) => reject(new ImageReadError(`cannot run zstd (apt-get install zstd): ${e.message}`)));
    child.on('close', (code) => resolve(code));
  });
  exited.catch(() => {}); // awaited by readShard; a shard never read must not reject unhandled
  const out = child.stdout!;
  const queue: Buffer[] = [];
  let held = 0;
  let ended = false;
  let wake: (() => void) | null = null;
  out.on('data', (c: Buffer) => {
    queue.push(c);
    held += c.length;
    if (held > AHEAD_BYTES) out.pause();
    wake?.();
  });
  out.on('end', () => {
    ended = true;
    wake?.();
  });
  out.on('error', () => {
    ended = true;
    wake?.();
  });
  async function* chunks(): AsyncGenerator<Buffer> {
    for (;;) {
      while (queue.length) {
        const c = queue.shift()!;
        held -= c.length;
        if (out.isPaused() && held <= AHEAD_BYTES) out.resume();
        yield c;
      }
      if (ended) return;
      await new Promise<void>((r) => (wake = r));
      wake = null;
    }
  }
  return { child, exited, stderr: () => stderr, chunks };
}

/** Ends a shard's pipeline: its output closed (tail, head and zstd then end on EPIPE), sh killed. */
function stopShard(sh: ShardStream): void {
  sh.child.stdout?.destroy();
  sh.child.stderr?.destroy();
  if (sh.child.exitCode === null && sh.child.signalCode === null) sh.child.kill('SIGKILL');
}

/** The shard's decompressed bytes, pushed into parse as they come. */
async function readShard(sh: ShardStream, parse: (chunk: Buffer) => void): Promise<void> {
  try {
    for await (const chunk of sh.chunks()) parse(chunk);
  } catch (e) {
    stopShard(sh);
    await sh.exited.catch(() => null);
    throw e;
  }
  const code = await sh.exited;
  if (code !== 0) throw new ImageReadError(`zstd: ${sh.stderr().trim().split('\n').pop() || `exit ${code}`}`);
}

/** Progress of an extraction: done so far (archive bytes read, entries made) and the entries to make. */
export type ExtractProgress = (done: { entries: number; bytes: number }, total: { entries: number }) => void;

/** Shards decompressed ahead of the one being extracted (each a zstd of its own). */
const SHARDS_AHEAD = 2;

/**
 * Extracts the archive of `file` into `dest`, which must exist and be empty: shard by shard
 * (each a stream of whole entries; hardlink groups are per shard), owners, modes (set after
 * chown so setuid survives), mtimes, symlinks, hardlinks, devices, fifos; directory metadata
 * last, deepest first. Throws ImageReadError (or ManifestError) with the reason.
 * `onProgress` hears, after each chunk, the entries made and the archive bytes read so far,
 * and the manifest's entry count (the total).
 */
export async function extractImage(file: string, dest: string, onProgress?: ExtractProgress): Promise<ExtractResult> {
  const m = readManifest(file);
  let read = 0;
  const shards = checkShards(m);
  const x = new Extraction(dest);
  const streams: ShardStream[] = [];
  const ahead = (upTo: number) => {
    for (let k = streams.length; k < Math.min(upTo, shards.length); k++) streams.push(startShard(file, shards[k].offset, shards[k].length));
  };
  try {
    for (let i = 0; i < shards.length; i++) {
      ahead(i + 1 + SHARDS_AHEAD);
      await extractShard(i);
    }
  } finally {
    for (const sh of streams) if (sh.child.exitCode === null && sh.child.signalCode === null) stopShard(sh);
  }
  if (x.entries !== m.entries) throw new ImageReadError(`the manifest says ${m.entries} entries, the archive has ${x.entries} (damaged)`);
  x.finishDirs();
  return { entries: x.entries, bytes: x.bytes };

  async function extractShard(i: number): Promise<void> {
    const what = shards.length > 1 ? `shard ${i + 1} of ${shards.length}` : 'data';
    const last = i === shards.length - 1;
    x.links = new Map();
    const parser = new NewcParser({
      onStreamStart: (h) => {
        const rel = cleanName(h.name.toString('latin1'));
        if (rel === null || (h.mode & S_IFMT) !== S_IFREG) return; // entry() refuses it
        x.startStream(rel, h);
      },
      onChunk: (h, chunk) => {
        if ((h.mode & S_IFMT) !== S_IFREG)
          throw new ImageReadError(
            `${h.name.toString('latin1')}: an entry of type 0${((h.mode & S_IFMT) >> 12).toString(8)} with ${h.size} bytes of data`,
          );
        x.writeStream(chunk);
      },
      onEntry: (h, data) => x.entry(h, data),
    });
    try {
      await readShard(streams[i], (chunk) => {
        if (parser.finished) return; // after TRAILER!!!: padding (read on, for the zstd checksum)
        parser.push(chunk);
        read += chunk.length;
        onProgress?.({ entries: x.entries, bytes: read }, { entries: m.entries });
        if (parser.finished && !last) throw new ImageReadError(`TRAILER!!! before the last shard (damaged)`);
      });
      if (last && !parser.finished) throw new ImageReadError('the archive ends without TRAILER!!! (truncated)');
      if (!last && !parser.atBoundary) throw new ImageReadError('cpio data ends inside an entry (truncated)');
    } catch (e) {
      const msg = (e as Error).message;
      throw new ImageReadError(e instanceof ImageReadError && !/^(zstd|TRAILER|the archive|cpio data)/.test(msg) ? msg : `${what}: ${msg}`);
    }
  }
}

/** The images directory's entries named like layers that are not regular files: never opened. */
export function notRegularFiles(dir: string, names: string[]): string[] {
  return names.filter((n) => {
    try {
      return !fs.statSync(path.join(dir, n)).isFile();
    } catch {
      return true;
    }
  });
}
