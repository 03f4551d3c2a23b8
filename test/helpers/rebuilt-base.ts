// A "rebuilt" base for the update e2e without a new build: the test image's base with one file
// added, made by re-compressing only its last shard (the file goes before the trailer) and
// writing a new manifest. Seconds instead of the minutes a re-pack of the whole tree costs,
// and the result is a base like any other (verified by the same readers).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkShards, encodeManifestFrame } from '../../format/manifest.js';
import { dataPadding, encodeHeader, S_IFREG, trailer } from '../../format/newc.js';
import { readManifest } from '../../format/reader.js';
import { FILES } from '../../lib/contract.js';

/** `src` (a base image) with the regular file `rel` = `content` added, written to `dest`. */
export function baseWithFile(src: string, dest: string, rel: string, content: string): void {
  const m = readManifest(src);
  const shards = checkShards(m);
  const last = shards[shards.length - 1];
  const data = fs.readFileSync(src).subarray(0, m.dataBytes);
  const cpio = execFileSync('zstd', ['-dc'], { input: data.subarray(last.offset), maxBuffer: 1 << 30 });
  const end = trailer();
  if (!cpio.subarray(cpio.length - end.length).equals(end)) throw new Error(`${src}: its last shard does not end with the trailer`);
  const body = Buffer.from(content);
  const header = { name: Buffer.from(rel), ino: 0x7ffffff0, mode: S_IFREG | 0o644, uid: 0, gid: 0, nlink: 1, mtime: 1_700_000_000 };
  const entry = Buffer.concat([
    encodeHeader({ ...header, size: body.length, devMajor: 0, devMinor: 0, rdevMajor: 0, rdevMinor: 0 }),
    body,
    dataPadding(body.length),
  ]);
  const shard = execFileSync('zstd', ['-3', '-q', '-c'], {
    input: Buffer.concat([cpio.subarray(0, cpio.length - end.length), entry, end]),
    maxBuffer: 1 << 30,
  });
  const newData = Buffer.concat([data.subarray(0, last.offset), shard]);
  const frame = encodeManifestFrame({
    ...m,
    entries: m.entries + 1,
    unpackedBytes: m.unpackedBytes + 4096,
    dataBytes: newData.length,
    dataSha256: createHash('sha256').update(newData).digest('hex'),
    shards: [...shards.slice(0, -1), { offset: last.offset, length: shard.length }],
  });
  fs.writeFileSync(dest, Buffer.concat([newData, frame]));
}

/** A build output directory: `built`'s kernel and initramfs, `base` as its base, mkma.json to match. */
export function outWithBase(built: string, base: string, out: string): void {
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  for (const f of [FILES.kernel, FILES.initramfs]) fs.copyFileSync(path.join(built, f), path.join(out, f));
  fs.copyFileSync(base, path.join(out, FILES.base));
  const info = JSON.parse(fs.readFileSync(path.join(built, FILES.buildInfo), 'utf8')) as {
    outputs: Record<string, { bytes: number; sha256: string }>;
  };
  const bytes = fs.readFileSync(base);
  info.outputs.base = { ...info.outputs.base, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
  fs.writeFileSync(path.join(out, FILES.buildInfo), JSON.stringify(info, null, 2));
}
