// QEMU's machine protocol (QMP) on a unix socket, for what a test asks of a running guest's
// QEMU: `-qmp unix:PATH,server=on,wait=off` on its command line, then `qmp(PATH, command, args)`.
// One connection per command: the greeting, qmp_capabilities, the command, its return.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as zlib from 'node:zlib';

export function qmp(socket: string, execute: string, args: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(socket);
    const timer = setTimeout(() => {
      c.destroy();
      reject(new Error(`QMP ${execute}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    let buf = '';
    let step = 0;
    const finish = (err: Error | null, value?: unknown) => {
      clearTimeout(timer);
      c.end();
      if (err) reject(err);
      else resolve(value);
    };
    c.on('error', (e) => finish(e));
    c.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { desc: string }; event?: string };
        if (msg.event) continue;
        if (msg.error) return finish(new Error(`QMP ${step === 1 ? 'qmp_capabilities' : execute}: ${msg.error.desc}`));
        if (msg.QMP && step === 0) {
          step = 1;
          c.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        } else if (step === 1) {
          step = 2;
          c.write(JSON.stringify({ execute, arguments: args }) + '\n');
        } else if (step === 2) {
          return finish(null, msg.return);
        }
      }
    });
  });
}

/** Waits until QEMU has made its QMP socket (it is created as QEMU starts). */
export async function qmpSocketReady(socket: string, timeoutMs = 60_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (fs.existsSync(socket)) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

/** A binary PPM's header (P6, maxval 255, as QEMU's screendump writes it): size and where the RGB triples start. */
function ppmHeader(file: string, data: Buffer): { width: number; height: number; start: number } {
  // header: P6 <ws> width <ws> height <ws> maxval <one ws>, then width*height RGB triples
  const m = /^P6\s+(\d+)\s+(\d+)\s+(\d+)\s/.exec(data.subarray(0, 64).toString('latin1'));
  if (!m || m[3] !== '255') throw new Error(`${file}: not a binary PPM with maxval 255`);
  const width = Number(m[1]);
  const height = Number(m[2]);
  if (data.length < m[0].length + width * height * 3) throw new Error(`${file}: ${width}x${height} but only ${data.length} bytes`);
  return { width, height, start: m[0].length };
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf: Buffer): number {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * Writes the binary PPM `ppm` as the PNG `png` (8-bit RGB, no filter, zlib): the very picture
 * the checks read, to look at. node:zlib only (QEMU's own `format: png` needs QEMU ≥ 7.1).
 */
export function ppmToPng(ppm: string, png: string): void {
  const data = fs.readFileSync(ppm);
  const { width, height, start } = ppmHeader(ppm, data);
  const row = width * 3;
  const raw = Buffer.alloc((row + 1) * height);
  for (let y = 0; y < height; y++) data.copy(raw, y * (row + 1) + 1, start + y * row, start + (y + 1) * row);
  const chunk = (type: string, body: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    const tb = Buffer.concat([Buffer.from(type, 'latin1'), body]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(tb));
    return Buffer.concat([len, tb, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bits per sample
  ihdr[9] = 2; // RGB
  fs.writeFileSync(
    png,
    Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      chunk('IHDR', ihdr),
      chunk('IDAT', zlib.deflateSync(raw)),
      chunk('IEND', Buffer.alloc(0)),
    ]),
  );
}

/** A binary PPM (P6, maxval 255, as QEMU's screendump writes it): size and the share of pixels that are not black. */
export function ppmStats(file: string): { width: number; height: number; nonBlack: number; colours: number } {
  const data = fs.readFileSync(file);
  const { width, height, start } = ppmHeader(file, data);
  let lit = 0;
  const seen = new Set<number>();
  for (let i = start; i + 2 < data.length; i += 3) {
    const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    if (rgb !== 0) lit++;
    if (seen.size < 4096) seen.add(rgb);
  }
  return { width, height, nonBlack: lit / (width * height), colours: seen.size };
}
