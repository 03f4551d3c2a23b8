// Checking an image without extracting it (`mkma verify`, `mkma layers --verify`): the
// manifest frame and body, the shard table, and the data hash (`data_sha256`, the sha256 of
// DATA, docs/FORMAT.md). The boot relies on zstd's frame checksums while it extracts; this
// check reads every byte of DATA once, as a stream (never the whole image in memory), and
// finds what zstd may not: a frame cut or swapped at a frame boundary, a flipped byte in a
// frame written without a checksum, a manifest that lies about the data.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { listImages, type IgnoredImage } from './images.js';
import { ManifestError, checkShards, type ImageKind, type Manifest } from './manifest.js';
import { BASE_NAME } from './names.js';
import { openImage, readManifestFrame } from './reader.js';

/** The first four bytes of a zstd frame (RFC 8878, 3.1.1: 0xFD2FB528, little-endian). */
const ZSTD_FRAME_MAGIC = 0xfd2fb528;
/** A shard may also begin with a skippable frame (0x184D2A50..5F): every decoder passes it. */
const isSkippableMagic = (m: number) => m >>> 4 === 0x184d2a5;
const SHA256_RE = /^[0-9a-f]{64}$/;
const READ_CHUNK = 1 << 20;

/** What was checked: the file itself, its manifest, its shard table, its data. */
export type CheckPart = 'file' | 'manifest' | 'shards' | 'data';

export interface ImageProblem {
  part: CheckPart;
  message: string;
}

export interface ImageCheck {
  /** the file checked (as given) */
  file: string;
  /** the manifest, when it could be read */
  manifest: Manifest | null;
  /** bytes of the file (0 when it cannot be opened) */
  fileBytes: number;
  /** empty: the image is good */
  problems: ImageProblem[];
}

/** Hears the bytes of DATA hashed so far, and their total. */
export type VerifyProgress = (hashed: number, total: number) => void;

const withoutFile = (file: string, msg: string) => (msg.startsWith(`${file}: `) ? msg.slice(file.length + 2) : msg);

/**
 * Checks `file` as an image of `kind`: the manifest (frame, footer, body, data_bytes against
 * the file's size), the shard table (it tiles DATA; each shard begins a zstd frame), and the
 * sha256 of DATA against the manifest's `data_sha256`. Never throws for a damaged image: every
 * problem found is in the result (a later check is skipped when it needs what failed).
 */
export async function verifyImage(file: string, kind: ImageKind, onProgress?: VerifyProgress): Promise<ImageCheck> {
  const check: ImageCheck = { file, manifest: null, fileBytes: 0, problems: [] };
  const problem = (part: CheckPart, message: string) => check.problems.push({ part, message });
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch (e) {
    problem('file', (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : `cannot read it: ${(e as Error).message}`);
    return check;
  }
  if (!st.isFile()) {
    problem('file', 'not a regular file');
    return check;
  }
  check.fileBytes = st.size;
  let m: Manifest;
  try {
    m = readManifestFrame(file);
  } catch (e) {
    if (!(e instanceof ManifestError)) {
      problem('file', `cannot read it: ${(e as Error).message}`);
      return check;
    }
    problem('manifest', withoutFile(file, e.message));
    return check;
  }
  check.manifest = m;
  if (m.kind !== kind) problem('manifest', `the manifest says kind ${m.kind}, but it is used as a ${kind}`);
  const fd = openImage(file);
  try {
    checkShardTable(fd, m, problem);
    if (!SHA256_RE.test(m.dataSha256)) {
      problem(
        'data',
        m.dataSha256
          ? `data_sha256 is not a sha256 (${JSON.stringify(m.dataSha256.slice(0, 80))})`
          : 'the manifest has no data_sha256: the data cannot be checked',
      );
      return check;
    }
    const actual = await hashData(fd, m.dataBytes, onProgress);
    if (actual !== m.dataSha256) problem('data', `data hash mismatch: the manifest says ${m.dataSha256}, the data hashes to ${actual}`);
  } finally {
    fs.closeSync(fd);
  }
  return check;
}

/** The shard table tiles DATA (checkShards) and each shard begins with a frame. */
function checkShardTable(fd: number, m: Manifest, problem: (part: CheckPart, message: string) => void): void {
  let shards: Array<{ offset: number; length: number }>;
  try {
    shards = checkShards(m);
  } catch (e) {
    problem('shards', (e as Error).message);
    return;
  }
  const head = Buffer.alloc(4);
  shards.forEach((s, i) => {
    const got = fs.readSync(fd, head, 0, 4, s.offset);
    const magic = head.readUInt32LE(0);
    if (got < 4 || (magic !== ZSTD_FRAME_MAGIC && !isSkippableMagic(magic))) {
      problem('shards', `shard ${i + 1} of ${shards.length} (offset ${s.offset}) does not begin a zstd frame`);
    }
  });
}

/** sha256 of the first `length` bytes of the file, read in chunks. */
async function hashData(fd: number, length: number, onProgress?: VerifyProgress): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.alloc(Math.min(READ_CHUNK, Math.max(length, 1)));
  let pos = 0;
  while (pos < length) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, length - pos), pos);
    if (n === 0) break; // the file shrank while being read: the hash differs, and says so
    hash.update(buf.subarray(0, n));
    pos += n;
    onProgress?.(pos, length);
    // let progress output and signals through between chunks
    if (pos % (16 * READ_CHUNK) === 0) await new Promise<void>((r) => setImmediate(r));
  }
  return hash.digest('hex');
}

export interface ImagesCheck {
  /** base.cpio.zst */
  base: ImageCheck;
  /** every layer, in boot order */
  layers: ImageCheck[];
  /** entries named like layers that the boot never applies (not checked; not a failure) */
  ignored: IgnoredImage[];
}

/**
 * Checks base.cpio.zst and every layer of `imagesDir` (the boot's listing, format/images.ts),
 * one after the other. `onFile` hears each file before it is read (its index and the count),
 * `onProgress` the bytes of its data hashed.
 */
export async function verifyImages(
  imagesDir: string,
  hooks: { onFile?: (name: string, index: number, count: number) => void; onProgress?: VerifyProgress } = {},
): Promise<ImagesCheck> {
  const { layers, ignored } = listImages(imagesDir);
  const names = [BASE_NAME, ...layers];
  const checks: ImageCheck[] = [];
  for (const [i, name] of names.entries()) {
    hooks.onFile?.(name, i, names.length);
    checks.push(await verifyImage(path.join(imagesDir, name), i === 0 ? 'base' : 'layer', hooks.onProgress));
  }
  return { base: checks[0], layers: checks.slice(1), ignored };
}
