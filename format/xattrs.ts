// Reading extended attributes (file capabilities, ACLs, overlayfs' own) for many paths at once:
// the one reader of the packer (format/pack.ts) and the persist scanner (persist/scan.ts).
//
// Node has no xattr API, and one getfattr per file would be far slower: the paths go, NUL-
// separated in 64 KiB batches, into `xargs -0 getfattr -d` (a handful of getfattr processes for
// the whole tree) while the caller walks on, and its dump is parsed at the end.
import type { ChildProcess } from 'node:child_process';
import { spawnTracked } from '../lib/run.js';
import { unescapeXattrPath, type XattrRecord } from './manifest.js';

const BATCH_BYTES = 1 << 16;
const STDERR_KEPT = 4096;

/** getfattr's value spelling ("0s…" base64, "0x…" hex, or "quoted text") → bytes. */
export function decodeXattrValue(v: string): Buffer {
  if (v.startsWith('0s')) return Buffer.from(v.slice(2), 'base64');
  if (v.startsWith('0x') || v.startsWith('0X')) return Buffer.from(v.slice(2), 'hex');
  if (v.startsWith('"') && v.endsWith('"') && v.length >= 2) return Buffer.from(v.slice(1, -1), 'latin1');
  return Buffer.from(v, 'latin1');
}

/** Parses `getfattr -d -e base64` output (paths escaped as \ooo) into records with clean paths. */
export function parseGetfattrDump(text: string, keepName: (name: string) => boolean = () => true): XattrRecord[] {
  const records: XattrRecord[] = [];
  let cur: XattrRecord | null = null;
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      let p = unescapeXattrPath(line.slice(8));
      if (p.startsWith('./')) p = p.slice(2);
      if (p === '') p = '.';
      cur = { path: p, attrs: [] };
      records.push(cur);
    } else if (line && cur && !line.startsWith('#')) {
      const eq = line.indexOf('=');
      const name = eq < 0 ? line : line.slice(0, eq);
      const value = eq < 0 ? '' : line.slice(eq + 1);
      if (keepName(name)) cur.attrs.push([name, value]);
    }
  }
  return records.filter((r) => r.attrs.length > 0);
}

/**
 * Every xattr of the paths given (relative to `root`, not following symlinks), as records keyed
 * by those paths. `keepName` picks the attribute names kept (default: all).
 */
export class XattrReader {
  private readonly child: ChildProcess;
  private readonly out: string[] = [];
  private err = '';
  private readonly done: Promise<void>;
  private batch = Buffer.allocUnsafe(BATCH_BYTES);
  private len = 0;
  private ended = false;

  constructor(
    root: string,
    private readonly keepName: (name: string) => boolean = () => true,
  ) {
    // not runSync/run: paths stream in while the caller walks, the dump is read at the end
    this.child = spawnTracked('xargs', ['-0', '-r', 'getfattr', '-h', '-d', '-m', '-', '-e', 'base64', '--'], {
      cwd: root,
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    this.child.stdin!.on('error', () => {}); // EPIPE after a failure: the exit status tells
    this.child.stdout!.on('data', (d: Buffer) => this.out.push(d.toString('latin1')));
    this.child.stderr!.on('data', (d: Buffer) => {
      if (this.err.length < STDERR_KEPT) this.err += d.toString();
    });
    this.done = new Promise((resolve, reject) => {
      this.child.on('error', (e) => reject(new Error(`cannot run getfattr (apt-get install attr): ${e.message}`)));
      this.child.on('close', (code) => {
        // getfattr exits 1 (xargs: 123) when a path vanished in a live tree; what it printed is still valid
        if (code === 0 || code === 1 || code === 123) resolve();
        else reject(new Error(`getfattr failed (exit ${code}): ${this.err.trim()}`));
      });
    });
  }

  /**
   * Queues the path `buf[start, end)` (raw bytes). "./" goes before it, so getfattr never reads a
   * name starting with "-" as an option.
   */
  add(buf: Buffer, start = 0, end = buf.length): void {
    const need = end - start + 3;
    if (this.len + need > this.batch.length) {
      this.flush();
      if (need > this.batch.length) this.batch = Buffer.allocUnsafe(need);
    }
    const b = this.batch;
    b[this.len++] = 0x2e;
    b[this.len++] = 0x2f;
    this.len += buf.copy(b, this.len, start, end);
    b[this.len++] = 0;
  }

  private flush(): void {
    if (!this.len) return;
    // (no waiting for the pipe: the walk goes on, the batches queue meanwhile)
    this.child.stdin!.write(this.batch.subarray(0, this.len));
    this.batch = Buffer.allocUnsafe(this.batch.length); // the pipe may still hold the old one
    this.len = 0;
  }

  /** No more paths: getfattr gets the last batch now (finish() waits for its output). */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.flush();
    this.child.stdin!.end();
  }

  /** The records, and getfattr's complaints (paths that vanished, unsupported filesystems). */
  async finish(): Promise<{ records: XattrRecord[]; warnings: string }> {
    this.end();
    await this.done;
    return { records: parseGetfattrDump(this.out.join(''), this.keepName), warnings: this.err.trim() };
  }

  /** On failure elsewhere: stop getfattr so that no child outlives the walk. */
  kill(): void {
    this.done.catch(() => {}); // its failure is the point: nobody awaits it any more
    this.child.stdin!.destroy();
    this.child.kill('SIGKILL');
  }
}
