// The EFI system partition, read and written with mtools: no vfat mount (the host kernel may
// not have vfat: this project's CI machine does not), nothing to unmount after a failure, and
// the same code for a USB stick and a loop device. Paths are absolute on the volume
// (`/boot/grub/grub.cfg`); FAT is case-insensitive, and so are GRUB and Linux reading it.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MkmaError } from '../lib/errors.js';
import { runSync, type RunResult } from '../lib/run.js';
import { ESP_LABEL } from './layout.js';

export class EspError extends MkmaError {}

// MTOOLS_SKIP_CHECK: a partition device has no floppy geometry to check against. mtools
// still prints "Could not get geometry of device" for a loop partition, harmlessly.
const ENV = { MTOOLS_SKIP_CHECK: '1' };

export interface EspEntry {
  /** the name, as mtools lists it (a long name when there is one) */
  name: string;
  dir: boolean;
}

export class Esp {
  constructor(readonly node: string) {}

  private mtools(cmd: string, args: string[], allowFailure = false): RunResult {
    return runSync(cmd, ['-i', this.node, ...args], { env: ENV, allowFailure });
  }

  /** mkfs.vfat -F 32 with the ESP label; returns the volume id GRUB finds it by ("ABCD-1234"). */
  static format(node: string): Esp {
    runSync('mkfs.vfat', ['-F', '32', '-n', ESP_LABEL, node]);
    return new Esp(node);
  }

  /** The volume id as GRUB's `search --fs-uuid` and blkid spell it. */
  volumeId(): string {
    const r = runSync('blkid', ['--probe', '--match-tag', 'UUID', '--output', 'value', this.node], { allowFailure: true });
    const id = r.stdout.trim();
    if (!/^[0-9A-F]{4}-[0-9A-F]{4}$/i.test(id)) throw new EspError(`${this.node} has no FAT volume id (blkid said "${id}")`);
    return id.toUpperCase();
  }

  /** The entries of a directory, or null when it does not exist. */
  list(dir: string): EspEntry[] | null {
    const r = this.mtools('mdir', ['-b', '-a', `::${dir}`], true);
    if (!r.ok) {
      if (/not found/i.test(r.stderr)) return null;
      throw new EspError(`cannot list ${dir} on the ESP ${this.node}: ${r.stderr.trim()}`);
    }
    // `mdir -b`: one full path per line, directories with a trailing slash
    const prefix = `::${dir.replace(/\/+$/, '')}/`;
    return r.stdout
      .split('\n')
      .filter((l) => l.startsWith(prefix))
      .map((l) => {
        const rest = l.slice(prefix.length);
        return { name: rest.replace(/\/$/, ''), dir: rest.endsWith('/') };
      })
      .filter((e) => e.name && e.name !== '.' && e.name !== '..');
  }

  exists(p: string): boolean {
    const parent = path.posix.dirname(p);
    const base = path.posix.basename(p).toLowerCase();
    return !!this.list(parent)?.some((e) => e.name.toLowerCase() === base);
  }

  /** mkdir -p */
  mkdirs(dir: string): void {
    let cur = '';
    for (const part of dir.split('/').filter(Boolean)) {
      const parent = cur || '/';
      cur = `${cur}/${part}`;
      if (!this.list(parent)?.some((e) => e.dir && e.name.toLowerCase() === part.toLowerCase())) this.mtools('mmd', [`::${cur}`]);
    }
  }

  /** Copies host files into a directory of the ESP (replacing files of the same name). */
  put(files: string[], destDir: string): void {
    if (!files.length) return;
    this.mkdirs(destDir);
    this.mtools('mcopy', ['-o', ...files, `::${destDir}/`]);
  }

  /** Writes `text` as the file `dest` (its directory must exist). */
  writeText(dest: string, text: string): void {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-esp-'));
    try {
      const f = path.join(tmp, path.posix.basename(dest));
      fs.writeFileSync(f, text);
      this.mtools('mcopy', ['-o', f, `::${dest}`]);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }

  /** A text file's contents, or null when it does not exist. */
  readText(p: string): string | null {
    if (!this.exists(p)) return null;
    return this.mtools('mtype', [`::${p}`]).stdout;
  }

  /** Removes a file or a whole directory; nothing when it does not exist. */
  remove(p: string): void {
    const parent = this.list(path.posix.dirname(p));
    const entry = parent?.find((e) => e.name.toLowerCase() === path.posix.basename(p).toLowerCase());
    if (!entry) return;
    this.mtools(entry.dir ? 'mdeltree' : 'mdel', [`::${p}`]);
  }

  /** Renames a file within its directory; `to` must not exist. */
  rename(from: string, to: string): void {
    this.mtools('mren', [`::${from}`, `::${to}`]);
  }

  /** Free bytes on the volume (mdir's last line: "… bytes free"). */
  freeBytes(): number {
    const r = this.mtools('mdir', ['::/']);
    const m = /([0-9][0-9 ]*) bytes free/.exec(r.stdout);
    if (!m) throw new EspError(`cannot tell the free space of the ESP ${this.node}`);
    return Number(m[1].replace(/ /g, ''));
  }
}
