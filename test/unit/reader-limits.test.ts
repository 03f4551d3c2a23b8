// Reader limits of the TypeScript side (docs/FORMAT.md, "Reader limits"): a crafted image of a
// few KB announcing a 2 GB name — before, the parser kept concatenating its whole buffer for
// every chunk zstd gave it (minutes and hundreds of MB on 200 MB of zeros); now the name size
// is refused as soon as the header is read, and input is kept as a list of chunks.
import { afterAll, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { NewcParser, S_IFREG } from '../../format/newc.js';
import { extractImage } from '../../format/reader.js';
import { cpioEntry, trailerEntry, writeRawImage } from '../conformance/images.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-reader-limits-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

test('a crafted name size of 2 GB is refused at its header, from a file of a few KB', async () => {
  const file = path.join(TMP, 'crafted.cpio.zst');
  // the header, then 200 MB of zeros where the name would be: zstd makes it a few KB
  writeRawImage(file, {
    kind: 'base',
    shards: [[{ name: 'x', mode: S_IFREG | 0o644, namesize: 0x7ffffff0, data: Buffer.alloc(200 << 20) }]],
    noTrailer: true,
  });
  expect(fs.statSync(file).size).toBeLessThan(20_000);
  const dest = fs.mkdtempSync(path.join(TMP, 'd-'));
  await expect(extractImage(file, dest)).rejects.toThrow(/bad name size 2147483632/);
}, 20_000);

test('a stream fed a byte at a time parses the same entries (chunks are kept as a list)', () => {
  const stream = Buffer.concat([
    cpioEntry({ name: 'a', mode: S_IFREG | 0o644, data: 'hello' }),
    cpioEntry({ name: 'b/c', mode: S_IFREG | 0o600, data: Buffer.alloc(3000, 7) }),
    trailerEntry(),
  ]);
  const names: string[] = [];
  const p = new NewcParser({ onEntry: (h, d) => names.push(`${h.name.toString()} ${d?.length}`) });
  for (let i = 0; i < stream.length; i++) p.push(stream.subarray(i, i + 1));
  p.end();
  expect(names).toEqual(['a 5', 'b/c 3000']);
});
