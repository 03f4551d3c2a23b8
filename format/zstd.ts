// zstd through Debian's `zstd` CLI: data in through a pipe, the frame out into a file.
//
// Not @mongodb-js/zstd (design card): measured here (docs/libraries.md), 7.x and 2.x
// fail to install without network access to their prebuild host, 1.2.2 ignores the level
// argument, and every version is buffer-only: compressing a 221 MB tree in-process held
// ~600 MB RSS, against a flat ~60 MB for the CLI stream. Node 20 has no zlib zstd. The CLI is
// also what the initramfs decompresses with, so build and boot share one implementation.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import type { Writable } from 'node:stream';
import { MkmaError } from '../lib/errors.js';
import { createExclusive } from '../lib/tempfile.js';

export const ZSTD_MIN_LEVEL = 1;
export const ZSTD_MAX_LEVEL = 22;

export function zstdLevelArgs(level: number): string[] {
  if (!Number.isInteger(level) || level < ZSTD_MIN_LEVEL || level > ZSTD_MAX_LEVEL) {
    throw new RangeError(`zstd level must be an integer from ${ZSTD_MIN_LEVEL} to ${ZSTD_MAX_LEVEL}, got ${level}`);
  }
  return level > 19 ? ['--ultra', `-${level}`] : [`-${level}`];
}

export class ZstdError extends MkmaError {}

/**
 * A zstd child process reading its stdin and writing to the file descriptor `stdout`; `done`
 * resolves when it exited 0, rejects with its stderr otherwise.
 */
export function spawnZstd(args: string[], stdout: number): { child: ChildProcess; stdin: Writable; done: Promise<void> } {
  const child = spawn('zstd', ['-q', ...args], { stdio: ['pipe', stdout, 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  // EPIPE on stdin when zstd dies early is reported through the exit status instead.
  child.stdin!.on('error', () => {});
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e) => reject(new ZstdError(`cannot run zstd (apt-get install zstd): ${e.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new ZstdError(`zstd ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
    });
  });
  return { child, stdin: child.stdin!, done };
}

/** Write to a child's stdin honouring backpressure. */
export function writeWithBackpressure(stream: NodeJS.WritableStream, chunk: Buffer): Promise<void> | void {
  if (stream.write(chunk)) return;
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onError = (e: Error) => {
      cleanup();
      reject(e);
    };
    const onClose = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      stream.off('drain', onDrain);
      stream.off('error', onError);
      stream.off('close', onClose);
    };
    stream.on('drain', onDrain);
    stream.on('error', onError);
    stream.on('close', onClose);
  });
}

/**
 * Compresses one shard: feed it with write(), call end(), await result() for the frame.
 * zstd writes the frame straight into an unlinked spool file (nothing to clean up after a
 * crash; created exclusively under a random name, lib/tempfile.ts: the system temp directory
 * is everyone's) that the writer copies into the image when it is the shard's turn. Not through a
 * pipe into this process: the compressed shards waiting their turn were held as Buffers,
 * up to ~100 MB of RSS that grew with the tree (bench figure 1).
 */
export class ShardCompressor {
  private readonly proc: ReturnType<typeof spawnZstd>;
  private readonly spool: number;
  private readonly finished: Promise<{ fd: number; length: number }>;

  constructor(level: number, threads: number, spoolDir: string) {
    const spool = createExclusive(spoolDir, `.mkma-shard-${process.pid}-`);
    this.spool = spool.fd;
    fs.unlinkSync(spool.path);
    this.proc = spawnZstd(['-c', ...zstdLevelArgs(level), `-T${threads}`, '--no-progress'], this.spool);
    this.finished = this.proc.done.then(() => ({ fd: this.spool, length: fs.fstatSync(this.spool).size }));
    this.finished.catch(() => {}); // reported by whoever awaits result()
  }

  /**
   * Resolves once the chunk has left for the pipe (the caller may then reuse its memory), or
   * the pipe failed: a zstd that died is reported by result(), with its exit status.
   */
  write(chunk: Buffer): Promise<void> {
    return new Promise((resolve) => {
      this.proc.stdin.write(chunk, () => resolve());
    });
  }

  end(): void {
    this.proc.stdin.end();
  }

  /** The spool file (read it with positional reads, then close it) and the frame's length. */
  result(): Promise<{ fd: number; length: number }> {
    return this.finished;
  }

  kill(): void {
    this.proc.child.kill('SIGKILL');
    try {
      fs.closeSync(this.spool);
    } catch {
      /* closed by the writer already */
    }
  }
}
