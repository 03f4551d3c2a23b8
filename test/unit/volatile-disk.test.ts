// The volatile-cache NBD disk of the power-off test (test/helpers/volatile-disk.ts), driven by a
// minimal NBD client speaking the protocol as QEMU's does (fixed newstyle, NBD_OPT_GO, simple
// replies): what was flushed or written FUA survives a dropped connection, what was only
// cached is lost (or kept, by the draw), and a clean NBD_CMD_DISC keeps everything.
import { afterAll, describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { VolatileDisk } from '../helpers/volatile-disk.js';

const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-volatile-'));
afterAll(() => fs.rmSync(WORK, { recursive: true, force: true }));

/** A tiny client: negotiates with NBD_OPT_GO, then sends requests and reads simple replies in order. */
class Client {
  private buf = Buffer.alloc(0);
  private waiters: Array<{ n: number; resolve: (b: Buffer) => void }> = [];
  private handle = 0n;
  size = 0n;
  constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.pump();
    });
  }
  private pump(): void {
    while (this.waiters.length && this.buf.length >= this.waiters[0].n) {
      const w = this.waiters.shift()!;
      w.resolve(this.buf.subarray(0, w.n));
      this.buf = this.buf.subarray(w.n);
    }
  }
  read(n: number): Promise<Buffer> {
    return new Promise((resolve) => {
      this.waiters.push({ n, resolve });
      this.pump();
    });
  }
  static async connect(socket: string): Promise<Client> {
    const sock = net.connect(socket);
    await new Promise((r) => sock.once('connect', r));
    const c = new Client(sock);
    const hello = await c.read(18);
    expect(hello.subarray(0, 16).toString()).toBe('NBDMAGICIHAVEOPT');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3);
    sock.write(flags);
    // an option the server refuses (as QEMU asks for structured replies first), then GO
    for (const opt of [8, 7]) {
      const data = opt === 7 ? Buffer.from([0, 0, 0, 0, 0, 0]) : Buffer.alloc(0);
      const h = Buffer.alloc(16);
      Buffer.from('IHAVEOPT').copy(h);
      h.writeUInt32BE(opt, 8);
      h.writeUInt32BE(data.length, 12);
      sock.write(Buffer.concat([h, data]));
      for (;;) {
        const rep = await c.read(20);
        const type = rep.readUInt32BE(12);
        const body = await c.read(rep.readUInt32BE(16));
        if (type === 0x80000001) break; // unsupported: fine
        if (type === 3) c.size = body.readBigUInt64BE(2);
        if (type === 1) break;
      }
    }
    return c;
  }
  async request(type: number, offset: number, length: number, data?: Buffer, flags = 0): Promise<Buffer> {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(++this.handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.sock.write(data ? Buffer.concat([h, data]) : h);
    if (type === 2) return Buffer.alloc(0);
    const rep = await this.read(16);
    expect(rep.readUInt32BE(0)).toBe(0x67446698);
    expect(rep.readUInt32BE(4)).toBe(0);
    expect(rep.readBigUInt64BE(8)).toBe(this.handle);
    return type === 0 ? this.read(length) : Buffer.alloc(0);
  }
}

const READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  FUA = 1;

async function scenario(name: string, keep: number, end: (c: Client) => Promise<void>) {
  const file = path.join(WORK, `${name}.img`);
  fs.writeFileSync(file, Buffer.alloc(64 << 10, 0x2e));
  const disk = new VolatileDisk(file, path.join(WORK, `${name}.sock`), keep, () => 0.5);
  await disk.start();
  const c = await Client.connect(disk.socket);
  expect(c.size).toBe(64n << 10n);
  await c.request(WRITE, 100, 5, Buffer.from('flush')); // partial page
  await c.request(FLUSH, 0, 0);
  await c.request(WRITE, 8192, 3, Buffer.from('fua'), FUA);
  await c.request(WRITE, 20000, 6, Buffer.from('cached'));
  // the guest reads its own unflushed write back
  expect((await c.request(READ, 19998, 10)).toString()).toBe('..cached..');
  await end(c);
  const stats = await disk.stop();
  const on = fs.readFileSync(file);
  return { stats, at: (o: number, n: number) => on.subarray(o, o + n).toString() };
}

describe('VolatileDisk', () => {
  test('a power cut loses what was only cached; flushed and FUA writes stay', async () => {
    const r = await scenario('cut-all', 0, async (c) => {
      c.sock.destroy();
    });
    expect(r.at(98, 9)).toBe('..flush..');
    expect(r.at(8192, 3)).toBe('fua');
    expect(r.at(20000, 6)).toBe('......');
    expect(r.stats).toMatchObject({ clean: false, lostAtCut: 1, keptAtCut: 0 });
  });

  test('a cached page may also have reached the file by the cut (the draw)', async () => {
    const r = await scenario('cut-kept', 1, async (c) => {
      c.sock.destroy();
    });
    expect(r.at(20000, 6)).toBe('cached');
    expect(r.stats).toMatchObject({ clean: false, lostAtCut: 0, keptAtCut: 1 });
  });

  test('a clean disconnect keeps everything', async () => {
    const r = await scenario('disc', 0, async (c) => {
      await c.request(DISC, 0, 0);
      await new Promise((res) => c.sock.once('close', res));
    });
    expect(r.at(20000, 6)).toBe('cached');
    expect(r.stats).toMatchObject({ clean: true, lostAtCut: 0 });
  });
});
