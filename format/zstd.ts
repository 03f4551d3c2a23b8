// zstd through Debian's `zstd` CLI, streamed through pipes.
//
// Not @mongodb-js/zstd (design card): measured here (shared/notes/libraries.md), 7.x and 2.x
// fail to install without network access to their prebuild host, 1.2.2 ignores the level
// argument, and every version is buffer-only: compressing a 221 MB tree in-process held
// ~600 MB RSS, against a flat ~60 MB for the CLI stream. Node 20 has no zlib zstd. The CLI is
// also what the initramfs decompresses with, so build and boot share one implementation.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

export const ZSTD_MIN_LEVEL = 1;
export const ZSTD_MAX_LEVEL = 22;

export function zstdLevelArgs(level: number): string[] {
  if (!Number.isInteger(level) || level < ZSTD_MIN_LEVEL || level > ZSTD_MAX_LEVEL) {
    throw new RangeError(`zstd level must be an integer from ${ZSTD_MIN_LEVEL} to ${ZSTD_MAX_LEVEL}, got ${level}`);
  }
  return level > 19 ? ['--ultra', `-${level}`] : [`-${level}`];
}

export class ZstdError extends Error {}

/** A zstd child process; `done` resolves when it exited 0, rejects with its stderr otherwise. */
export function spawnZstd(args: string[]): { child: ChildProcessWithoutNullStreams; done: Promise<void> } {
  const child = spawn('zstd', ['-q', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  // EPIPE on stdin when zstd dies early is reported through the exit status instead.
  child.stdin.on('error', () => {});
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e) => reject(new ZstdError(`cannot run zstd (apt-get install zstd): ${e.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new ZstdError(`zstd ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
    });
  });
  return { child, done };
}

/** Write to a child's stdin honouring backpressure. */
export function writeWithBackpressure(stream: NodeJS.WritableStream, chunk: Buffer): Promise<void> | void {
  if (stream.write(chunk)) return;
  return new Promise((resolve, reject) => {
    const onDrain = () => { cleanup(); resolve(); };
    const onError = (e: Error) => { cleanup(); reject(e); };
    const onClose = () => { cleanup(); resolve(); };
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
 * Output is small (a compressed shard) and held in memory until it is its turn to be written.
 */
export class ShardCompressor {
  private readonly proc: { child: ChildProcessWithoutNullStreams; done: Promise<void> };
  private readonly out: Buffer[] = [];
  private readonly finished: Promise<Buffer>;

  constructor(level: number, threads = 1) {
    this.proc = spawnZstd(['-c', ...zstdLevelArgs(level), `-T${threads}`, '--no-progress']);
    this.proc.child.stdout.on('data', (d: Buffer) => this.out.push(d));
    this.finished = this.proc.done.then(() => Buffer.concat(this.out));
    this.finished.catch(() => {}); // reported by whoever awaits result()
  }

  write(chunk: Buffer): Promise<void> | void {
    return writeWithBackpressure(this.proc.child.stdin, chunk);
  }

  end(): void {
    this.proc.child.stdin.end();
  }

  result(): Promise<Buffer> {
    return this.finished;
  }

  kill(): void {
    this.proc.child.kill('SIGKILL');
  }
}
