// Hand-made mkma images for the conformance corpus: every byte chosen by the test, so that
// an image can be exactly as hostile or as damaged as a case needs (the real writer,
// format/writer.ts, refuses to write most of them). docs/FORMAT.md defines the format.
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { FORMAT } from '../../lib/contract.js';
import { encodeManifestFrame, escapePath, FOOTER_TAG, SKIPPABLE_MAGIC } from '../../format/manifest.js';
import { S_IFDIR, S_IFLNK, S_IFREG } from '../../format/newc.js';

export interface RawEntry {
  name: string;
  mode: number;
  data?: Buffer | string;
  ino?: number;
  nlink?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  rdevMajor?: number;
  rdevMinor?: number;
  /** the name's bytes as written, without the NUL that normally ends them (a damaged header) */
  noNul?: boolean;
  /** namesize as written (default: the name's length + 1) */
  namesize?: number;
  /** size as written (default: the data's length) */
  size?: number;
}

export const MTIME = 1_700_000_000;
const pad4 = (n: number) => (4 - (n % 4)) % 4;
const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, '0');

let nextIno = 1000;

/** One newc entry: header, name, padding, data, padding. */
export function cpioEntry(e: RawEntry): Buffer {
  const name = Buffer.from(e.name, 'latin1');
  const data = e.data === undefined ? Buffer.alloc(0) : Buffer.from(e.data as string, typeof e.data === 'string' ? 'latin1' : undefined);
  const nameBytes = e.noNul ? name : Buffer.concat([name, Buffer.from([0])]);
  const namesize = e.namesize ?? nameBytes.length;
  const fields = [
    e.ino ?? nextIno++,
    e.mode,
    e.uid ?? 0,
    e.gid ?? 0,
    e.nlink ?? ((e.mode & 0o170000) === S_IFDIR ? 2 : 1),
    e.mtime ?? MTIME,
    e.size ?? data.length,
    0,
    0,
    e.rdevMajor ?? 0,
    e.rdevMinor ?? 0,
    namesize,
    0,
  ];
  const head = Buffer.from('070701' + fields.map(hex8).join(''), 'latin1');
  return Buffer.concat([head, nameBytes, Buffer.alloc(pad4(110 + nameBytes.length)), data, Buffer.alloc(pad4(data.length))]);
}

export const trailerEntry = () => cpioEntry({ name: 'TRAILER!!!', mode: 0, ino: 0, nlink: 1, mtime: 0 });

export const dir = (name: string, o: Partial<RawEntry> = {}): RawEntry => ({ name, mode: S_IFDIR | 0o755, ...o });
export const file = (name: string, data: string | Buffer, o: Partial<RawEntry> = {}): RawEntry => ({
  name,
  mode: S_IFREG | 0o644,
  data,
  ...o,
});
export const symlink = (name: string, target: string, o: Partial<RawEntry> = {}): RawEntry => ({
  name,
  mode: S_IFLNK | 0o777,
  data: target,
  ...o,
});

export interface RawImage {
  kind: 'base' | 'layer';
  /** the archive's entries, one list per shard (each becomes one zstd frame); TRAILER!!! is added at the end */
  shards: RawEntry[][];
  deleted?: string[];
  opaque?: string[];
  /** the %xattrs section's text, as written (getfattr's format) */
  xattrs?: string;
  /** entries in the manifest (default: the real count) */
  entries?: number;
  /** edits the manifest body's text before it is framed (damage) */
  editBody?: (body: string) => string;
  /** edits the finished file (damage) */
  editFile?: (file: Buffer) => Buffer;
  /** the shard table as written (default: one line per shard) */
  shardTable?: Array<{ offset: number; length: number }> | null;
  noTrailer?: boolean;
  /** instead of one frame per shard: the whole archive cut into frames at these byte offsets */
  cutAt?: number[];
}

function zstd(data: Buffer): Buffer {
  return execFileSync('zstd', ['-q', '-c', '-3'], { input: data, maxBuffer: 256 << 20 });
}

/** Writes the image described by `img` to `path`. */
export function writeRawImage(path: string, img: RawImage): void {
  let count = 0;
  const plain: Buffer[] = [];
  img.shards.forEach((entries, i) => {
    const parts = entries.map(cpioEntry);
    count += entries.length;
    if (i === img.shards.length - 1 && !img.noTrailer) parts.push(trailerEntry());
    plain.push(Buffer.concat(parts));
  });
  const all = Buffer.concat(plain);
  const cuts = img.cutAt ? [0, ...img.cutAt, all.length] : null;
  const frames = cuts ? cuts.slice(1).map((end, i) => zstd(all.subarray(cuts[i], end))) : plain.map(zstd);
  const table: Array<{ offset: number; length: number }> = [];
  let off = 0;
  for (const f of frames) {
    table.push({ offset: off, length: f.length });
    off += f.length;
  }
  const data = Buffer.concat(frames);
  const frame = encodeManifestFrame({
    kind: img.kind,
    created: '2026-11-22T02:15:00Z',
    message: 'conformance',
    entries: img.entries ?? count,
    unpackedBytes: 1 << 20,
    dataBytes: data.length,
    dataSha256: '',
    shards: img.shardTable === undefined ? table : (img.shardTable ?? []),
    opaque: img.opaque ?? [],
    deleted: img.deleted ?? [],
    xattrs: [],
  });
  let body = frame.subarray(8, frame.length - (FOOTER_TAG.length + FORMAT.footerDigits + 1)).toString('latin1');
  if (img.xattrs !== undefined) body = body.replace(/%xattrs\n$/, `%xattrs\n${img.xattrs}`);
  if (img.editBody) body = img.editBody(body);
  let out: Buffer = Buffer.concat([data, frameFor(Buffer.from(body, 'latin1'))]);
  if (img.editFile) out = img.editFile(out);
  fs.writeFileSync(path, out);
}

/** A manifest frame around an arbitrary body. */
export function frameFor(body: Buffer): Buffer {
  const footer = Buffer.from(`${FOOTER_TAG}${String(body.length).padStart(FORMAT.footerDigits)}\n`, 'latin1');
  const head = Buffer.alloc(8);
  head.writeUInt32LE(SKIPPABLE_MAGIC, 0);
  head.writeUInt32LE(body.length + footer.length, 4);
  return Buffer.concat([head, body, footer]);
}

export { escapePath };
