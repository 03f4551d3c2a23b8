// Images directories for the tests of `mkma verify` and `mkma layers`: a base and layers packed
// by the real writer (format/pack.ts), and the damage those commands must find.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeManifestFrame } from '../../format/manifest.js';
import { packTree } from '../../format/pack.js';
import { readManifest } from '../../format/reader.js';
import { BUSYBOX, FIXTURE_SHARD_BYTES, noise } from '../fixtures/layers.js';
import { put } from './files.js';

export interface TestLayer {
  /** the file name in the images directory */
  name: string;
  /** relative path → contents */
  files: Record<string, string | Buffer>;
  message?: string;
  created?: Date;
}

/** The busybox applets shellTree links (what the mkma chroot tests run in it). */
export const SHELL_APPLETS = ['sh', 'echo', 'rm', 'mkdir', 'cat', 'sleep', 'test', 'adduser', 'ls', 'kill', 'chmod', 'touch'];

/**
 * A tree a shell runs in, for `mkma chroot` (`src`, made if missing): busybox (static) and its
 * applets, root's account, the mount points the chroot helpers use.
 */
export function shellTree(src: string): void {
  fs.mkdirSync(path.join(src, 'bin'), { recursive: true });
  fs.copyFileSync(BUSYBOX, path.join(src, 'bin/busybox'));
  fs.chmodSync(path.join(src, 'bin/busybox'), 0o755);
  for (const a of SHELL_APPLETS) fs.symlinkSync('busybox', path.join(src, 'bin', a));
  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp', 'root', 'home', 'usr/sbin']) fs.mkdirSync(path.join(src, d), { recursive: true });
  put(src, 'etc/hostname', 'mkma\n');
  put(src, 'etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  put(src, 'etc/group', 'root:x:0:\n');
  put(src, 'etc/shadow', 'root:*:20000:0:99999:7:::\n');
}

/** A base (with a 200 KB file: several shards) and the layers, in `dir/images`; returns that path. */
export async function buildImages(dir: string, layers: TestLayer[]): Promise<string> {
  const images = path.join(dir, 'images');
  fs.mkdirSync(images, { recursive: true });
  const src = fs.mkdtempSync(path.join(dir, 'src-'));
  put(src, 'etc/hostname', 'mkma\n');
  put(src, 'usr/lib/blob', noise(200_000, 7));
  const created = new Date('2026-11-22T02:15:00Z');
  await packTree(src, path.join(images, 'base.cpio.zst'), { kind: 'base', level: 3, shardBytes: FIXTURE_SHARD_BYTES, created });
  for (const l of layers) {
    const up = fs.mkdtempSync(path.join(dir, 'upper-'));
    for (const [rel, content] of Object.entries(l.files)) put(up, rel, content);
    await packTree(up, path.join(images, l.name), {
      kind: 'layer',
      level: 3,
      shardBytes: FIXTURE_SHARD_BYTES,
      created: l.created ?? created,
      message: l.message,
    });
  }
  return images;
}

/** The damage `mkma verify` must name: see each case. */
export type Damage = 'flip-byte' | 'truncate' | 'shard-table' | 'footer';

export function damageImage(file: string, how: Damage): void {
  const m = readManifest(file);
  const buf = fs.readFileSync(file);
  if (how === 'flip-byte') {
    // one byte in the middle of DATA
    buf[Math.floor(m.dataBytes / 2)] ^= 0x01;
    fs.writeFileSync(file, buf);
  } else if (how === 'truncate') {
    fs.truncateSync(file, buf.length - 100);
  } else if (how === 'shard-table') {
    // the table still tiles DATA, but the boundary between shards 1 and 2 is one byte late:
    // shard 2 no longer begins a zstd frame (the data and its hash are untouched)
    if (m.shards.length < 2) throw new Error(`${file} has fewer than 2 shards`);
    const shards = m.shards.map((s) => ({ ...s }));
    shards[0].length += 1;
    shards[1].offset += 1;
    shards[1].length -= 1;
    fs.writeFileSync(file, Buffer.concat([buf.subarray(0, m.dataBytes), encodeManifestFrame({ ...m, shards })]));
  } else {
    // "MKMA-MANIFEST-LEN         345\n" → "…         3x5\n"
    buf[buf.length - 3] = 'x'.charCodeAt(0);
    fs.writeFileSync(file, buf);
  }
}
