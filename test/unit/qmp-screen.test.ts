// The desktop boot's screendump helpers (test/helpers/qmp.ts): a PPM as QEMU writes it, its
// statistics, and the PNG written from it (read back here by a decoder of the format's rules:
// signature, chunk CRCs, IHDR, inflated rows with filter 0 equal to the PPM's pixels).
import { afterAll, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { ppmStats, ppmToPng } from '../helpers/qmp.js';

const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-qmp-screen-'));
afterAll(() => fs.rmSync(WORK, { recursive: true, force: true }));

// the CRC-32 of PNG (ISO 3309), bit by bit, independent of the helper's table
function crc(buf: Buffer): number {
  let c = 0xffffffff;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

test('a 5x3 PPM: statistics, and the PNG holds the same pixels with valid chunks', () => {
  const width = 5;
  const height = 3;
  const pixels = Buffer.alloc(width * height * 3); // black
  // two lit pixels in two colours (one of them on the last row's last pixel)
  pixels.set([255, 255, 255], 3 * 1);
  pixels.set([10, 20, 30], pixels.length - 3);
  const ppm = path.join(WORK, 'screen.ppm');
  fs.writeFileSync(ppm, Buffer.concat([Buffer.from(`P6\n${width} ${height}\n255\n`, 'latin1'), pixels]));

  expect(ppmStats(ppm)).toEqual({ width, height, nonBlack: 2 / 15, colours: 3 });

  const png = path.join(WORK, 'screen.png');
  ppmToPng(ppm, png);
  const data = fs.readFileSync(png);
  expect([...data.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const chunks: Array<{ type: string; body: Buffer }> = [];
  for (let at = 8; at < data.length;) {
    const len = data.readUInt32BE(at);
    const typeAndBody = data.subarray(at + 4, at + 8 + len);
    expect(data.readUInt32BE(at + 8 + len)).toBe(crc(typeAndBody));
    chunks.push({ type: typeAndBody.subarray(0, 4).toString('latin1'), body: typeAndBody.subarray(4) });
    at += 12 + len;
  }
  expect(chunks.map((c) => c.type)).toEqual(['IHDR', 'IDAT', 'IEND']);
  const ihdr = chunks[0].body;
  expect([ihdr.readUInt32BE(0), ihdr.readUInt32BE(4), ...ihdr.subarray(8)]).toEqual([width, height, 8, 2, 0, 0, 0]);
  const raw = zlib.inflateSync(chunks[1].body);
  expect(raw.length).toBe((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    expect(raw[y * (width * 3 + 1)]).toBe(0);
    expect(raw.subarray(y * (width * 3 + 1) + 1, (y + 1) * (width * 3 + 1))).toEqual(pixels.subarray(y * width * 3, (y + 1) * width * 3));
  }
});

test('a truncated or non-binary PPM is refused with the file named', () => {
  const short = path.join(WORK, 'short.ppm');
  fs.writeFileSync(short, Buffer.concat([Buffer.from('P6 4 4 255\n', 'latin1'), Buffer.alloc(10)]));
  expect(() => ppmStats(short)).toThrow(`${short}: 4x4 but only`);
  const ascii = path.join(WORK, 'ascii.ppm');
  fs.writeFileSync(ascii, 'P3\n1 1\n255\n0 0 0\n');
  expect(() => ppmToPng(ascii, path.join(WORK, 'ascii.png'))).toThrow('not a binary PPM');
});
