// The cpio "newc" (SVR4, magic 070701) encoding: header writer and a streaming reader.
//
// Written here instead of using cpio-stream 1.4.3 (design card) because, measured on this
// machine (docs/libraries.md): it corrupts non-ASCII names both ways (name length
// counted in UTF-16 units), silently clamps sizes >= 4 GiB into a corrupt archive, has no
// hardlink support, turns mtime 0 into "now" and stops at the first TRAILER!!!. mkma needs
// byte-exact names (Debian ships non-UTF-8 test names, users have anything) and must refuse
// what newc cannot hold, so the ~150 lines below own the format.

export const NEWC_MAGIC = '070701';
import { FORMAT } from '../lib/contract.js';
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
const LABELS = [
  'ino',
  'mode',
  'uid',
  'gid',
  'nlink',
  'mtime',
  'size',
  'devmajor',
  'devminor',
  'rdevmajor',
  'rdevminor',
  'namesize',
  'check',
];

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
  const fields = [h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size, h.devMajor, h.devMinor, h.rdevMajor, h.rdevMinor, nameSize, 0];
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
    name: Buffer.from(TRAILER_NAME),
    ino: 0,
    mode: 0,
    uid: 0,
    gid: 0,
    nlink: 1,
    mtime: 0,
    size: 0,
    devMajor: 0,
    devMinor: 0,
    rdevMajor: 0,
    rdevMinor: 0,
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
 *
 * Input is kept as a list of chunks: only a header and its name (at most 110 + 4096 + 3
 * bytes) are ever copied together, so a crafted stream costs linear time and bounded memory
 * (a name size is checked as soon as its header is read; docs/FORMAT.md, "Reader limits").
 */
export class NewcParser {
  private chunks: Buffer[] = [];
  private have = 0;
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

  /** True between entries: a shard may end here. */
  get atBoundary(): boolean {
    return this.state === 'header' && this.have === 0;
  }

  /** The first n buffered bytes as one buffer (n <= have); copies only when they span chunks. */
  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    const parts: Buffer[] = [];
    let got = 0;
    for (const c of this.chunks) {
      parts.push(c.subarray(0, Math.min(c.length, n - got)));
      got += parts[parts.length - 1].length;
      if (got >= n) break;
    }
    const joined = Buffer.concat(parts, n);
    return joined;
  }

  /** Drops n buffered bytes (n <= have). */
  private drop(n: number): void {
    this.have -= n;
    this.offset += n;
    while (n > 0) {
      const c = this.chunks[0];
      if (c.length <= n) {
        this.chunks.shift();
        n -= c.length;
      } else {
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }

  push(chunk: Buffer): void {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.have += chunk.length;
    }
    for (;;) {
      if (this.state === 'done') return;
      if (this.state === 'header') {
        if (this.have < HEADER_SIZE) return;
        const head = this.peek(HEADER_SIZE);
        const magic = head.toString('latin1', 0, 6);
        if (magic !== NEWC_MAGIC && magic !== '070702') {
          throw new NewcFormatError(`not a cpio newc header at offset ${this.offset}`);
        }
        const fields: number[] = [];
        for (let i = 0, p = 6; i < 12; i++) {
          let v = 0;
          for (const end = p + 8; p < end; p++) {
            const c = head[p];
            const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
            if (d < 0) throw new NewcFormatError(`damaged cpio header at offset ${this.offset}`);
            v = v * 16 + d;
          }
          fields.push(v);
        }
        const nameSize = fields[11];
        if (nameSize < 2 || nameSize > FORMAT.nameLimit) {
          throw new NewcFormatError(`bad name size ${nameSize} in the cpio header at offset ${this.offset}`);
        }
        const headTotal = HEADER_SIZE + nameSize + pad4(HEADER_SIZE + nameSize);
        if (this.have < headTotal) return;
        const whole = this.peek(headTotal);
        const raw = whole.subarray(HEADER_SIZE, HEADER_SIZE + nameSize);
        if (raw[nameSize - 1] !== 0 || raw.subarray(0, nameSize - 1).includes(0)) {
          throw new NewcFormatError(`damaged name in the cpio header at offset ${this.offset}`);
        }
        const f = fields;
        const h: NewcHeader = {
          name: Buffer.from(raw.subarray(0, nameSize - 1)),
          ino: f[0],
          mode: f[1],
          uid: f[2],
          gid: f[3],
          nlink: f[4],
          mtime: f[5],
          size: f[6],
          devMajor: f[7],
          devMinor: f[8],
          rdevMajor: f[9],
          rdevMinor: f[10],
        };
        this.drop(headTotal);
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
        while (this.remaining > 0) {
          if (this.have === 0) return;
          const c = this.chunks[0];
          const take = Math.min(this.remaining, c.length);
          const piece = c.subarray(0, take);
          this.drop(take);
          this.remaining -= take;
          if (this.streaming) this.handlers.onChunk!(h, piece, this.remaining === 0);
          else this.bodyChunks.push(piece);
        }
        if (this.have < this.padAfter) return;
        this.drop(this.padAfter);
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
