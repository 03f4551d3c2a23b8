// A disk with a volatile write cache, for power-cut tests. QEMU reads and writes the guest's
// disk through this NBD server (a unix socket) instead of the image file: writes the guest has
// not asked to be made durable stay in this process's memory, as in a real disk's cache, and
// reach the file only on FLUSH (or as FUA writes). When the emulator is killed, the
// connection drops without NBD_CMD_DISC: each cached 4 KiB page reaches the file or is lost,
// at random — the disk had written back some of its cache, in an order of its own. A writer
// that relies on anything but fsync (data before the rename, the directory after it) shows up.
//
// Without it, a killed QEMU loses nothing the virtual disk acknowledged (QEMU writes through
// the host's page cache, which outlives it), whatever its cache= mode.
//
// The protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), as much
// as QEMU's client needs: fixed newstyle negotiation (NBD_OPT_GO or NBD_OPT_EXPORT_NAME, other
// options refused), simple replies, READ, WRITE (with FUA), FLUSH, DISC.
import * as fs from 'node:fs';
import * as net from 'node:net';

const PAGE = 4096;
const NBDMAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = Buffer.from('IHAVEOPT');
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT = { exportName: 1, abort: 2, info: 6, go: 7 } as const;
const REP = { ack: 1, info: 3, errUnsup: 0x80000001 } as const;
const CMD = { read: 0, write: 1, disc: 2, flush: 3 } as const;
const CMD_FLAG_FUA = 1;
/** HAS_FLAGS | SEND_FLUSH | SEND_FUA */
const TRANSMISSION_FLAGS = 1 | 4 | 8;
const EINVAL = 22;

/** Reads exact byte counts from a socket. */
class Reader {
  private buf: Buffer = Buffer.alloc(0);
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private closed = false;

  constructor(sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.check();
    });
    sock.on('close', () => {
      this.closed = true;
      this.check();
    });
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.check();
    });
  }

  private check(): void {
    const w = this.want;
    if (!w) return;
    if (this.buf.length >= w.n) {
      this.want = null;
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(Buffer.from(out));
    } else if (this.closed) {
      this.want = null;
      w.reject(new Error('connection closed'));
    }
  }
}

export interface VolatileDiskStats {
  /** pages made durable by FLUSH or FUA */
  flushedPages: number;
  /** at the power cut: cached pages that reached the file anyway, and those lost */
  keptAtCut: number;
  lostAtCut: number;
  /** the client said goodbye (NBD_CMD_DISC): no power cut */
  clean: boolean;
}

export class VolatileDisk {
  private server: net.Server | null = null;
  private readonly fd: number;
  private readonly size: number;
  private readonly dirty = new Map<number, Buffer>();
  readonly stats: VolatileDiskStats = { flushedPages: 0, keptAtCut: 0, lostAtCut: 0, clean: false };
  private done: Promise<void> = Promise.resolve();

  /**
   * `keep`: the chance of each cached page to reach the file at the power cut (0: the whole
   * cache is lost); `random`: the draws (seeded by the caller, for repeatable runs).
   */
  constructor(
    readonly file: string,
    readonly socket: string,
    private readonly keep: number,
    private readonly random: () => number,
  ) {
    this.fd = fs.openSync(file, 'r+');
    this.size = fs.fstatSync(this.fd).size;
  }

  /** Listens on the socket; one connection (QEMU's) at a time. */
  async start(): Promise<void> {
    fs.rmSync(this.socket, { force: true });
    this.server = net.createServer((sock) => {
      sock.on('error', () => {}); // the emulator killed mid-reply: what matters is the close
      this.done = this.serve(sock)
        .catch(() => {})
        .finally(() => sock.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.socket, () => resolve());
    });
  }

  /** After QEMU is gone: waits for the connection's end (and the power cut's draws), closes. */
  async stop(): Promise<VolatileDiskStats> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await this.done;
    fs.rmSync(this.socket, { force: true });
    fs.closeSync(this.fd);
    return this.stats;
  }

  private async serve(sock: net.Socket): Promise<void> {
    const r = new Reader(sock);
    const hello = Buffer.alloc(18);
    NBDMAGIC.copy(hello, 0);
    IHAVEOPT.copy(hello, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    sock.write(hello);
    const clientFlags = (await r.read(4)).readUInt32BE(0);
    try {
      if (!(await this.negotiate(sock, r, clientFlags))) return;
      await this.transmit(sock, r);
    } catch {
      // the connection dropped: the emulator was killed (or never got this far)
    }
    if (!this.stats.clean) this.powerCut();
  }

  private optionReply(sock: net.Socket, opt: number, type: number, data = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    sock.write(Buffer.concat([h, data]));
  }

  /** Options until the export is chosen: true to go on to transmission. */
  private async negotiate(sock: net.Socket, r: Reader, clientFlags: number): Promise<boolean> {
    for (;;) {
      const h = await r.read(16);
      if (!h.subarray(0, 8).equals(IHAVEOPT)) return false;
      const opt = h.readUInt32BE(8);
      const data = await r.read(h.readUInt32BE(12));
      void data;
      if (opt === OPT.exportName) {
        const out = Buffer.alloc(10 + (clientFlags & FLAG_NO_ZEROES ? 0 : 124));
        out.writeBigUInt64BE(BigInt(this.size), 0);
        out.writeUInt16BE(TRANSMISSION_FLAGS, 8);
        sock.write(out);
        return true;
      }
      if (opt === OPT.go || opt === OPT.info) {
        const info = Buffer.alloc(12);
        info.writeUInt16BE(0, 0); // NBD_INFO_EXPORT
        info.writeBigUInt64BE(BigInt(this.size), 2);
        info.writeUInt16BE(TRANSMISSION_FLAGS, 10);
        this.optionReply(sock, opt, REP.info, info);
        this.optionReply(sock, opt, REP.ack);
        if (opt === OPT.go) return true;
        continue;
      }
      if (opt === OPT.abort) {
        this.optionReply(sock, opt, REP.ack);
        return false;
      }
      this.optionReply(sock, opt, REP.errUnsup);
    }
  }

  private async transmit(sock: net.Socket, r: Reader): Promise<void> {
    for (;;) {
      const h = await r.read(28);
      if (h.readUInt32BE(0) !== REQUEST_MAGIC) throw new Error('bad request magic');
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const handle = h.subarray(8, 16);
      const offset = Number(h.readBigUInt64BE(16));
      const length = h.readUInt32BE(24);
      const reply = (error: number, data?: Buffer) => {
        const out = Buffer.alloc(16);
        out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
        out.writeUInt32BE(error, 4);
        handle.copy(out, 8);
        sock.write(data ? Buffer.concat([out, data]) : out);
      };
      const inRange = offset + length <= this.size;
      if (type === CMD.read) {
        reply(inRange ? 0 : EINVAL, inRange ? this.readRange(offset, length) : Buffer.alloc(length));
      } else if (type === CMD.write) {
        const data = await r.read(length);
        if (!inRange) {
          reply(EINVAL);
          continue;
        }
        const pages = this.writeRange(offset, data);
        if (flags & CMD_FLAG_FUA) this.persist(pages);
        reply(0);
      } else if (type === CMD.flush) {
        this.persist([...this.dirty.keys()]);
        reply(0);
      } else if (type === CMD.disc) {
        // a clean shutdown: the guest flushed, and the disk keeps its power
        this.persist([...this.dirty.keys()]);
        this.stats.clean = true;
        return;
      } else {
        reply(EINVAL);
      }
    }
  }

  private page(n: number): Buffer {
    const cached = this.dirty.get(n);
    if (cached) return cached;
    const b = Buffer.alloc(PAGE);
    fs.readSync(this.fd, b, 0, PAGE, n * PAGE);
    return b;
  }

  private readRange(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    for (let pos = offset; pos < offset + length;) {
      const n = Math.floor(pos / PAGE);
      const within = pos - n * PAGE;
      const take = Math.min(PAGE - within, offset + length - pos);
      const cached = this.dirty.get(n);
      if (cached) cached.copy(out, pos - offset, within, within + take);
      else fs.readSync(this.fd, out, pos - offset, take, pos);
      pos += take;
    }
    return out;
  }

  /** Into the cache; returns the pages written. */
  private writeRange(offset: number, data: Buffer): number[] {
    const pages: number[] = [];
    for (let pos = offset; pos < offset + data.length;) {
      const n = Math.floor(pos / PAGE);
      const within = pos - n * PAGE;
      const take = Math.min(PAGE - within, offset + data.length - pos);
      const b = take === PAGE ? Buffer.alloc(PAGE) : Buffer.from(this.page(n));
      data.copy(b, within, pos - offset, pos - offset + take);
      this.dirty.set(n, b);
      pages.push(n);
      pos += take;
    }
    return pages;
  }

  private persist(pages: number[]): void {
    for (const n of pages) {
      const b = this.dirty.get(n);
      if (!b) continue;
      fs.writeSync(this.fd, b, 0, PAGE, n * PAGE);
      this.dirty.delete(n);
      this.stats.flushedPages++;
    }
  }

  /** The power is gone: each cached page reached the platter, or not. */
  private powerCut(): void {
    for (const [n, b] of this.dirty) {
      if (this.random() < this.keep) {
        fs.writeSync(this.fd, b, 0, PAGE, n * PAGE);
        this.stats.keptAtCut++;
      } else {
        this.stats.lostAtCut++;
      }
    }
    this.dirty.clear();
  }
}
