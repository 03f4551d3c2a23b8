// Reading mkma images on the host: the manifest (from the end of the file) and extraction of
// the cpio stream into a directory, with the same rules the boot-time busybox code follows.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FOOTER_SIZE, ManifestError, parseFooter, parseManifestBody, SKIPPABLE_MAGIC, type Manifest } from './manifest.js';
import {
  NewcParser, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, type NewcHeader,
} from './newc.js';
import { MkmaError } from '../lib/errors.js';

export class ImageReadError extends MkmaError {}

export function readManifest(file: string): Manifest {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    if (size < FOOTER_SIZE + 8) throw new ManifestError(`${file}: too small to be an mkma image (${size} bytes)`);
    const tail = Buffer.alloc(FOOTER_SIZE);
    fs.readSync(fd, tail, 0, FOOTER_SIZE, size - FOOTER_SIZE);
    const bodyLen = parseFooter(tail);
    const frameStart = size - FOOTER_SIZE - bodyLen - 8;
    if (frameStart < 0) throw new ManifestError(`${file}: manifest length exceeds the file (truncated)`);
    const head = Buffer.alloc(8);
    fs.readSync(fd, head, 0, 8, frameStart);
    if (head.readUInt32LE(0) !== SKIPPABLE_MAGIC || head.readUInt32LE(4) !== bodyLen + FOOTER_SIZE) {
      throw new ManifestError(`${file}: manifest frame header is damaged`);
    }
    const body = Buffer.alloc(bodyLen);
    fs.readSync(fd, body, 0, bodyLen, frameStart + 8);
    const m = parseManifestBody(body);
    if (m.dataBytes !== frameStart) {
      throw new ManifestError(
        `${file}: data is ${frameStart} bytes but the manifest says ${m.dataBytes} (truncated or damaged)`,
      );
    }
    return m;
  } finally {
    fs.closeSync(fd);
  }
}

/** Rejects names that could escape the target directory: a layer is data, never a path. */
export function safeRelName(name: Buffer): string | null {
  let s = name.toString('latin1');
  if (s === '.' || s === './' || s === '') return null;
  if (s.startsWith('./')) s = s.slice(2);
  if (s.startsWith('/') || s.split('/').some((c) => c === '..' || c === '')) {
    throw new ImageReadError(`unsafe path in archive: ${JSON.stringify(s)}`);
  }
  return s;
}

const toBuf = (s: string) => Buffer.from(s, 'latin1');

export interface ExtractResult {
  entries: number;
  bytes: number;
}

/**
 * Extracts the whole archive of `file` into `dest` (which must exist). Owners, modes (set
 * after chown so setuid survives), mtimes, symlinks, hardlinks, devices, fifos. Directory
 * metadata is applied last, deepest first, so that creating children does not undo it.
 */
export async function extractImage(file: string, dest: string): Promise<ExtractResult> {
  const child = spawn('zstd', ['-q', '-dc', '--', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.on('error', (e) => reject(new ImageReadError(`cannot run zstd (apt-get install zstd): ${e.message}`)));
    child.on('close', (code) => resolve(code));
  });
  const destB = toBuf(dest);
  const dirs: Array<{ p: Buffer; h: NewcHeader }> = [];
  const pendingLinks = new Map<number, Buffer[]>();
  const linkTargets = new Map<number, Buffer>();
  let result: ExtractResult = { entries: 0, bytes: 0 };
  let streamFd = -1;

  const full = (rel: string) => Buffer.concat([destB, toBuf('/' + rel)]);
  const ensureParent = (p: Buffer) => {
    const parent = path.dirname(p.toString('latin1'));
    fs.mkdirSync(toBuf(parent), { recursive: true, mode: 0o755 });
  };
  const clear = (p: Buffer) => {
    // Extraction targets are fresh staging trees; an existing entry means a duplicate in the
    // archive. Like cpio -u, the later one wins (a directory stays if both are directories).
    let st: fs.Stats | null = null;
    try { st = fs.lstatSync(p); } catch { return; }
    if (st.isDirectory()) fs.rmSync(p, { recursive: true, force: true });
    else fs.unlinkSync(p);
  };
  const finishFile = (p: Buffer, h: NewcHeader, fd: number) => {
    fs.fchownSync(fd, h.uid, h.gid);
    fs.fchmodSync(fd, h.mode & 0o7777);
    fs.futimesSync(fd, h.mtime, h.mtime);
    fs.closeSync(fd);
    if (h.nlink > 1) {
      linkTargets.set(h.ino, p);
      for (const other of pendingLinks.get(h.ino) ?? []) {
        clear(other);
        fs.linkSync(p, other);
      }
      pendingLinks.delete(h.ino);
    }
  };

  const parser = new NewcParser({
    onStreamStart: (h) => {
      const rel = safeRelName(h.name)!;
      const p = full(rel);
      ensureParent(p);
      clear(p);
      streamFd = fs.openSync(p, 'wx', 0o600);
    },
    onChunk: (_h, chunk) => {
      let off = 0;
      while (off < chunk.length) off += fs.writeSync(streamFd, chunk, off);
    },
    onEntry: (h, data) => {
      result.entries++;
      const rel = safeRelName(h.name);
      const type = h.mode & S_IFMT;
      if (rel === null) {
        dirs.push({ p: destB, h });
        return;
      }
      const p = full(rel);
      if (type === S_IFDIR) {
        let st: fs.Stats | null = null;
        try { st = fs.lstatSync(p); } catch { /* absent */ }
        if (!st || !st.isDirectory()) {
          if (st) fs.unlinkSync(p);
          ensureParent(p);
          fs.mkdirSync(p, { mode: 0o700 });
        }
        dirs.push({ p, h });
        return;
      }
      if (data === null) {
        // streamed body already written
        finishFile(p, h, streamFd);
        result.bytes += h.size;
        return;
      }
      ensureParent(p);
      if (type === S_IFREG) {
        if (h.nlink > 1 && h.size === 0) {
          const target = linkTargets.get(h.ino);
          if (target) {
            clear(p);
            fs.linkSync(target, p);
          } else {
            // Data comes with a later link (GNU newc convention): an empty placeholder until
            // then, and further empty links join the first placeholder, so that a group of
            // empty hardlinked files stays one inode (as busybox cpio does).
            const list = pendingLinks.get(h.ino) ?? [];
            clear(p);
            if (list.length) fs.linkSync(list[0], p);
            else finishFile(p, { ...h, nlink: 1 }, fs.openSync(p, 'wx', 0o600));
            list.push(p);
            pendingLinks.set(h.ino, list);
          }
          return;
        }
        clear(p);
        const fd = fs.openSync(p, 'wx', 0o600);
        let off = 0;
        while (off < data.length) off += fs.writeSync(fd, data, off);
        result.bytes += data.length;
        finishFile(p, h, fd);
      } else if (type === S_IFLNK) {
        clear(p);
        fs.symlinkSync(data, p);
        fs.lchownSync(p, h.uid, h.gid);
        fs.lutimesSync(p, h.mtime, h.mtime);
      } else if (type === S_IFCHR || type === S_IFBLK || type === S_IFIFO) {
        clear(p);
        // Node cannot mknod; devices are rare in images (never /dev's contents).
        const kind = type === S_IFCHR ? 'c' : type === S_IFBLK ? 'b' : 'p';
        const args = ['-m', (h.mode & 0o7777).toString(8), p.toString('latin1'), kind];
        if (kind !== 'p') args.push(String(h.rdevMajor), String(h.rdevMinor));
        const r = spawnSync('mknod', args, { encoding: 'utf8' });
        if (r.status !== 0) throw new ImageReadError(`mknod ${rel}: ${r.stderr || r.error}`);
        fs.lchownSync(p, h.uid, h.gid);
        fs.chmodSync(p, h.mode & 0o7777);
        fs.lutimesSync(p, h.mtime, h.mtime);
      } else {
        throw new ImageReadError(`unsupported entry type ${(type >> 12).toString(8)} for ${rel}`);
      }
    },
  });

  try {
    for await (const chunk of child.stdout) parser.push(chunk as Buffer);
    const code = await exited;
    if (code !== 0) throw new ImageReadError(`${file}: zstd: ${stderr.trim() || `exit ${code}`}`);
    parser.end();
  } catch (e) {
    child.kill('SIGKILL');
    if (e instanceof ImageReadError) throw e;
    throw new ImageReadError(`${file}: ${(e as Error).message}`);
  }
  // Directories last, deepest first.
  for (let i = dirs.length - 1; i >= 0; i--) {
    const { p, h } = dirs[i];
    fs.chownSync(p, h.uid, h.gid);
    fs.chmodSync(p, h.mode & 0o7777);
    fs.utimesSync(p, h.mtime, h.mtime);
  }
  return result;
}
