// The cpio "newc" (SVR4, magic 070701) encoding: header writer and a streaming reader.
//
// Written here instead of using cpio-stream 1.4.3 (design card) because, measured on this
// machine (shared/notes/libraries.md): it corrupts non-ASCII names both ways (name length
// counted in UTF-16 units), silently clamps sizes >= 4 GiB into a corrupt archive, has no
// hardlink support, turns mtime 0 into "now" and stops at the first TRAILER!!!. mkma needs
// byte-exact names (Debian ships non-UTF-8 test names, users have anything) and must refuse
// what newc cannot hold, so the ~150 lines below own the format.

export const NEWC_MAGIC = '070701';
import { MkmaError } from '../lib/errors.js';
export const HEADER_SIZE = 110;
export const TRAILER_NAME = 'TRAILER!!!';
/** newc stores sizes in 8 hex digits: anything at or above this cannot be represented. */
export const NEWC_MAX_FILE_SIZE = 0xffffffff;

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

export interface NewcHeader {
  /** raw name bytes, relative ("usr/bin/ping"), "." for the root */
  name: Buffer;
  ino: number;
  /** full st_mode: type bits and permission bits (incl. setuid/setgid/sticky) */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  /** bytes of data following the header (file contents, or symlink target) */
  size: number;
  devMajor: number;
  devMinor: number;
  rdevMajor: number;
  rdevMinor: number;
}

export class NewcRangeError extends MkmaError {}

const pad4 = (n: number) => (4 - (n % 4)) % 4;
export const ZERO_PAD = Buffer.alloc(4);

const HEX = Buffer.from('0123456789abcdef');
const LABELS = ['ino', 'mode', 'uid', 'gid', 'nlink', 'mtime', 'size',
  'devmajor', 'devminor', 'rdevmajor', 'rdevminor', 'namesize', 'check'];

function checkField(i: number, value: number, name: Buffer): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new NewcRangeError(
      `cannot store ${JSON.stringify(name.toString('latin1'))} in cpio newc: ${LABELS[i]}=${value} ` +
        `does not fit in 32 bits (newc holds files up to 4 GiB - 1)`,
    );
  }
}

/** Bytes encodeHeader writes for a name of `nameLength` bytes (header, name, NUL, padding). */
export function headerBytes(nameLength: number): number {
  const total = HEADER_SIZE + nameLength + 1;
  return total + pad4(total);
}

/**
 * Writes header + name + padding into `out` at `off` (headerBytes(name.length) bytes) and
 * returns the offset after it: hex digits straight into the buffer, no strings (the writer
 * encodes one per entry, 100k for a big upperdir).
 */
export function encodeHeaderInto(h: NewcHeader, out: Buffer, off: number): number {
  const nameSize = h.name.length + 1;
  const fields = [
    h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size,
    h.devMajor, h.devMinor, h.rdevMajor, h.rdevMinor, nameSize, 0,
  ];
  out.write(NEWC_MAGIC, off, 'latin1');
  let p = off + NEWC_MAGIC.length;
  for (let i = 0; i < fields.length; i++) {
    let v = fields[i];
    checkField(i, v, h.name);
    for (let k = 7; k >= 0; k--) {
      out[p + k] = HEX[v & 15];
      v = Math.floor(v / 16);
    }
    p += 8;
  }
  h.name.copy(out, p);
  p += h.name.length;
  const end = off + headerBytes(h.name.length);
  out.fill(0, p, end);
  return end;
}

/** Header + name + padding, ready to be followed by `size` bytes of data and dataPadding(size). */
export function encodeHeader(h: NewcHeader): Buffer {
  const out = Buffer.allocUnsafe(headerBytes(h.name.length));
  encodeHeaderInto(h, out, 0);
  return out;
}

export function dataPadding(size: number): Buffer {
  return ZERO_PAD.subarray(0, pad4(size));
}

export function trailer(): Buffer {
  return encodeHeader({
    name: Buffer.from(TRAILER_NAME), ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0,
    size: 0, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0,
  });
}

export class NewcFormatError extends MkmaError {}

export interface NewcEntry extends NewcHeader {
  /** whole data for small entries; for large ones, the reader hands chunks to onData */
  data?: Buffer;
}

/**
 * Push-style streaming newc parser: feed it chunks, it calls back per entry. Bodies up to
 * `inlineLimit` arrive whole in entry.data; larger bodies are streamed through onChunk so that
 * memory stays bounded whatever the file size.
 */
export class NewcParser {
  private buf: Buffer = Buffer.alloc(0);
  private state: 'header' | 'body' | 'done' = 'header';
  private current: NewcHeader | null = null;
  private remaining = 0;
  private padAfter = 0;
  private bodyChunks: Buffer[] = [];
  private streaming = false;
  offset = 0;

  constructor(
    private readonly handlers: {
      onEntry: (h: NewcHeader, data: Buffer | null) => void;
      onChunk?: (h: NewcHeader, chunk: Buffer, last: boolean) => void;
      onStreamStart?: (h: NewcHeader) => void;
    },
    private readonly inlineLimit = 1 << 20,
  ) {}

  get finished(): boolean {
    return this.state === 'done';
  }

  push(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      if (this.state === 'done') return;
      if (this.state === 'header') {
        if (this.buf.length < HEADER_SIZE) return;
        const magic = this.buf.toString('latin1', 0, 6);
        if (magic !== NEWC_MAGIC) {
          throw new NewcFormatError(`bad cpio magic ${JSON.stringify(magic)} at offset ${this.offset} (not newc)`);
        }
        const f = (i: number) => {
          const s = this.buf.toString('latin1', 6 + i * 8, 14 + i * 8);
          const v = Number.parseInt(s, 16);
          if (!/^[0-9a-fA-F]{8}$/.test(s)) throw new NewcFormatError(`bad header field at offset ${this.offset}`);
          return v;
        };
        const nameSize = f(11);
        const headTotal = HEADER_SIZE + nameSize + pad4(HEADER_SIZE + nameSize);
        if (this.buf.length < headTotal) return;
        const h: NewcHeader = {
          name: Buffer.from(this.buf.subarray(HEADER_SIZE, HEADER_SIZE + nameSize - 1)),
          ino: f(0), mode: f(1), uid: f(2), gid: f(3), nlink: f(4), mtime: f(5), size: f(6),
          devMajor: f(7), devMinor: f(8), rdevMajor: f(9), rdevMinor: f(10),
        };
        this.buf = this.buf.subarray(headTotal);
        this.offset += headTotal;
        if (h.name.toString('latin1') === TRAILER_NAME) {
          this.state = 'done';
          return;
        }
        this.current = h;
        this.remaining = h.size;
        this.padAfter = pad4(h.size);
        this.bodyChunks = [];
        this.streaming = h.size > this.inlineLimit && !!this.handlers.onChunk;
        if (this.streaming) this.handlers.onStreamStart?.(h);
        this.state = 'body';
      }
      if (this.state === 'body') {
        const h = this.current!;
        if (this.remaining > 0) {
          if (this.buf.length === 0) return;
          const take = Math.min(this.remaining, this.buf.length);
          const piece = this.buf.subarray(0, take);
          this.buf = this.buf.subarray(take);
          this.remaining -= take;
          this.offset += take;
          if (this.streaming) this.handlers.onChunk!(h, piece, this.remaining === 0);
          else this.bodyChunks.push(piece);
          if (this.remaining > 0) return;
        }
        if (this.buf.length < this.padAfter) return;
        this.buf = this.buf.subarray(this.padAfter);
        this.offset += this.padAfter;
        if (!this.streaming) {
          this.handlers.onEntry(h, h.size === 0 ? Buffer.alloc(0) : Buffer.concat(this.bodyChunks));
        } else {
          this.handlers.onEntry(h, null);
        }
        this.bodyChunks = [];
        this.current = null;
        this.state = 'header';
      }
    }
  }

  /** Call at end of input: a stream that ends before TRAILER!!! is truncated. */
  end(): void {
    if (this.state !== 'done') {
      throw new NewcFormatError(`cpio archive truncated at offset ${this.offset} (no TRAILER!!!)`);
    }
  }
}
