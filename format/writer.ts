// Streams cpio newc entries into an mkma image file (see manifest.ts for the layout):
// bounded memory (at most `jobs` shards in flight), deterministic output for the same input,
// and atomic appearance: data goes to a temporary name in the target directory, is fsynced,
// and only then renamed to its final name (then the directory is fsynced too), so that after
// a crash or a power loss the final name holds the whole file or nothing. The temporary file
// is created exclusively under a random name (lib/tempfile.ts): the images directory is on a
// device others may have written to.
import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeManifestFrame, type ImageKind, type Manifest, type XattrRecord } from './manifest.js';
import { dataPadding, encodeHeader, encodeHeaderInto, headerBytes, trailer, type NewcHeader } from './newc.js';
import { ShardCompressor } from './zstd.js';
import { MkmaError } from '../lib/errors.js';
import { createExclusive } from '../lib/tempfile.js';

export interface WriterOptions {
  kind: ImageKind;
  level: number;
  /** uncompressed bytes per zstd frame; each frame can be extracted on its own at boot */
  shardBytes?: number;
  /** shards compressed at once (each by a single-threaded zstd) */
  jobs?: number;
  message?: string;
  /** layers: the data_sha256 of the base they were written on (manifest `base_data_sha256`) */
  baseDataSha256?: string;
  /** file mode of the final file (default 0644) */
  mode?: number;
  created?: Date;
  onProgress?: (p: WriterProgress) => void;
  /** a file changed size while it was read (live trees): it is padded/truncated, and reported */
  onWarning?: (msg: string) => void;
  /**
   * false: a plain `cpio.zst` (one frame, no manifest) for consumers other than mkma, such as
   * the kernel's initramfs unpacker.
   */
  manifest?: boolean;
  /** zstd threads per shard (default 1: parallelism comes from `jobs` shards at once) */
  threads?: number;
  /** where compressed shards wait for their turn (unlinked files, created exclusively; default os.tmpdir()) */
  spoolDir?: string;
}

export interface WriterProgress {
  entries: number;
  bytesIn: number;
  bytesOut: number;
}

export interface WriterResult {
  path: string;
  manifest: Manifest;
  fileBytes: number;
  cpioBytes: number;
}

/** addFile: the file is gone (a live tree); nothing of it was written. */
export class VanishedError extends MkmaError {}

export type EntryHeader = Omit<NewcHeader, 'devMajor' | 'devMinor'>;

export const DEFAULT_SHARD_BYTES = 32 << 20;
const BATCH_BYTES = 1 << 20;

export class ArchiveWriter {
  private readonly fd: number;
  private readonly tmpPath: string;
  private readonly hash: Hash = createHash('sha256');
  private readonly inflight: Array<{ c: ShardCompressor; start: number }> = [];
  private current: ShardCompressor | null = null;
  private currentBytes = 0;
  private dataBytes = 0;
  private cpioBytes = 0;
  private entries = 0;
  private unpackedBytes = 0;
  private readonly shards: Array<{ offset: number; length: number }> = [];
  private readonly xattrs: XattrRecord[] = [];
  private readonly opaque: string[] = [];
  private readonly deleted: string[] = [];
  private holdShard = false;
  private closed = false;
  // Two batch buffers: one is filled (file reads) while the other drains into zstd's pipe.
  // Reused, not reallocated: a fresh 1 MiB buffer per batch made garbage that grew the
  // process with the tree (figure 1's 2x-tree memory check).
  private batch: Buffer = Buffer.allocUnsafe(BATCH_BYTES);
  private batchLen = 0;
  private readonly freeBatches: Buffer[] = [Buffer.allocUnsafe(BATCH_BYTES)];
  private pendingWrite: Promise<void> | null = null;
  private readonly copyBuf = Buffer.allocUnsafe(BATCH_BYTES);

  constructor(
    readonly finalPath: string,
    private readonly opts: WriterOptions,
  ) {
    // .NAME.tmp-PID-RANDOM: the pid says whose it was (persist's cleanup of a killed run)
    const tmp = createExclusive(path.dirname(finalPath), `${temporaryPrefix(path.basename(finalPath))}-`);
    this.fd = tmp.fd;
    this.tmpPath = tmp.path;
  }

  get temporaryPath(): string {
    return this.tmpPath;
  }

  addXattrs(rec: XattrRecord): void {
    if (rec.attrs.length) this.xattrs.push(rec);
  }
  addOpaque(p: string): void {
    this.opaque.push(p);
  }
  addDeleted(p: string): void {
    this.deleted.push(p);
  }

  /** Keep the next entries in the current shard (a hardlink group must not straddle shards). */
  keepTogether(on: boolean): void {
    this.holdShard = on;
  }

  /** An entry without data (directory, device, fifo, or a hardlink that is not the data carrier). */
  async addEmpty(h: EntryHeader): Promise<void> {
    await this.emit({ ...h, size: 0, devMajor: 0, devMinor: 0 });
    await this.maybeCutShard();
  }

  /** An entry whose data is in memory (symlink target, small generated files). */
  async addBuffer(h: EntryHeader, data: Buffer): Promise<void> {
    await this.emit({ ...h, size: data.length, devMajor: 0, devMinor: 0 }, data);
    this.countUnpacked(h, data.length);
    await this.maybeCutShard();
  }

  /** An entry whose data is read from a file, in chunks, exactly h.size bytes. */
  async addFile(h: EntryHeader, source: string | Buffer): Promise<void> {
    // opened before anything is written: a file gone since it was listed is skipped whole
    let fd: number;
    try {
      fd = fs.openSync(source, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new VanishedError(`${String(source)} vanished`);
      throw e;
    }
    try {
      await this.emit({ ...h, devMajor: 0, devMinor: 0 });
      let left = h.size;
      while (left > 0) {
        // Read straight into the batch buffer: no intermediate copy of file data.
        if (this.batchLen === this.batch.length) await this.flushBatch();
        const want = Math.min(left, this.batch.length - this.batchLen);
        let n = fs.readSync(fd, this.batch, this.batchLen, want, null);
        if (n === 0) {
          this.opts.onWarning?.(`${String(source)} shrank while it was read; padded with zeros`);
          this.batch.fill(0, this.batchLen, this.batchLen + want);
          n = want;
        }
        this.batchLen += n;
        this.currentBytes += n;
        this.cpioBytes += n;
        left -= n;
      }
      if (fs.readSync(fd, Buffer.alloc(1), 0, 1, null) > 0) {
        this.opts.onWarning?.(`${String(source)} grew while it was read; stored its first ${h.size} bytes`);
      }
    } finally {
      fs.closeSync(fd);
    }
    await this.push(dataPadding(h.size));
    this.countUnpacked(h, h.size);
    await this.maybeCutShard();
  }

  private countUnpacked(h: EntryHeader, size: number): void {
    this.unpackedBytes += Math.ceil(size / 4096) * 4096;
    void h;
  }

  private async emit(h: NewcHeader, data?: Buffer): Promise<void> {
    this.entries++;
    const need = headerBytes(h.name.length);
    if (need <= this.batch.length) {
      // straight into the batch: no Buffer per header
      if (this.batch.length - this.batchLen < need) await this.flushBatch();
      this.batchLen = encodeHeaderInto(h, this.batch, this.batchLen);
      this.currentBytes += need;
      this.cpioBytes += need;
    } else {
      await this.push(encodeHeader(h));
    }
    if (data && data.length) {
      await this.push(data);
      await this.push(dataPadding(data.length));
    }
  }

  /**
   * Bytes are gathered into 1 MiB batches before they go to zstd: one pipe write per batch
   * instead of several per file (measured: per-entry writes spent more time in pipe wakeups
   * than zstd spent compressing).
   */
  private async push(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      if (this.batchLen === this.batch.length) await this.flushBatch();
      const n = chunk.copy(this.batch, this.batchLen, off);
      this.batchLen += n;
      off += n;
    }
    this.currentBytes += chunk.length;
    this.cpioBytes += chunk.length;
  }

  private async flushBatch(): Promise<void> {
    if (!this.batchLen) return;
    if (!this.current) this.current = new ShardCompressor(this.opts.level, this.opts.threads ?? 1, this.opts.spoolDir ?? os.tmpdir());
    const full = this.batch;
    const out = full.subarray(0, this.batchLen);
    // the previous batch must be out of the pipe before its buffer is filled again
    await this.settleWrite();
    this.pendingWrite = this.current.write(out).then(() => void this.freeBatches.push(full));
    this.batch = this.freeBatches.pop()!;
    this.batchLen = 0;
  }

  private async settleWrite(): Promise<void> {
    const w = this.pendingWrite;
    this.pendingWrite = null;
    if (w) await w;
  }

  private async maybeCutShard(): Promise<void> {
    const limit = this.opts.shardBytes ?? DEFAULT_SHARD_BYTES;
    if (this.holdShard || this.currentBytes < limit || this.opts.manifest === false) return;
    await this.closeShard();
  }

  private async closeShard(): Promise<void> {
    await this.flushBatch();
    await this.settleWrite();
    if (!this.current) return;
    const c = this.current;
    c.end();
    this.inflight.push({ c, start: this.cpioBytes - this.currentBytes });
    this.current = null;
    this.currentBytes = 0;
    const jobs = this.opts.jobs ?? 2;
    while (this.inflight.length >= jobs) await this.flushOldest();
  }

  private async flushOldest(): Promise<void> {
    const { c } = this.inflight.shift()!;
    const { fd, length } = await c.result();
    this.shards.push({ offset: this.dataBytes, length });
    // the frame from its spool file into the image, hashed on the way (DATA's sha256)
    try {
      for (let pos = 0; pos < length;) {
        const n = fs.readSync(fd, this.copyBuf, 0, Math.min(this.copyBuf.length, length - pos), pos);
        if (n === 0) throw new Error('a compressed shard was cut short in its spool file');
        const chunk = this.copyBuf.subarray(0, n);
        this.hash.update(chunk);
        this.writeOut(chunk);
        pos += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    this.dataBytes += length;
    this.opts.onProgress?.({ entries: this.entries, bytesIn: this.cpioBytes, bytesOut: this.dataBytes });
  }

  private writeOut(buf: Buffer): void {
    let off = 0;
    while (off < buf.length) off += fs.writeSync(this.fd, buf, off, buf.length - off);
  }

  /** Writes trailer and manifest, fsyncs, renames into place. */
  async finish(): Promise<WriterResult> {
    await this.push(trailer());
    await this.closeShard();
    while (this.inflight.length) await this.flushOldest();
    // (the hash covers DATA only: the frames, hashed as they were written)
    const manifest: Manifest = {
      kind: this.opts.kind,
      created: (this.opts.created ?? new Date()).toISOString().replace(/\.\d+Z$/, 'Z'),
      // what the image was written at: `mkma persist` writes its layers at the base's, and a
      // compaction at its layers' (docs/FORMAT.md, zstd_level)
      zstdLevel: this.opts.level,
      message: this.opts.message ?? '',
      entries: this.entries,
      unpackedBytes: this.unpackedBytes,
      dataBytes: this.dataBytes,
      dataSha256: this.hash.digest('hex'),
      ...(this.opts.baseDataSha256 ? { baseDataSha256: this.opts.baseDataSha256 } : {}),
      shards: this.shards,
      opaque: this.opaque,
      deleted: this.deleted,
      xattrs: this.xattrs,
    };
    const frame = this.opts.manifest === false ? Buffer.alloc(0) : encodeManifestFrame(manifest);
    this.writeOut(frame);
    fs.fchmodSync(this.fd, this.opts.mode ?? 0o644);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.closed = true;
    fs.renameSync(this.tmpPath, this.finalPath);
    fsyncDir(path.dirname(this.finalPath));
    return { path: this.finalPath, manifest, fileBytes: this.dataBytes + frame.length, cpioBytes: this.cpioBytes };
  }

  /** Removes the temporary file; the final name is never touched. */
  abort(): void {
    this.current?.kill();
    for (const s of this.inflight) s.c.kill();
    if (!this.closed) {
      try {
        fs.closeSync(this.fd);
      } catch {
        /* already closed */
      }
      this.closed = true;
    }
    fs.rmSync(this.tmpPath, { force: true });
  }
}

/** The start of the temporary file's name for a final file NAME: `.NAME.tmp-PID`. */
export function temporaryPrefix(name: string, pid = process.pid): string {
  return `.${name}.tmp-${pid}`;
}

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
