// Paths inside an image's root directory, resolved the way the image itself would see them.
// Shared by the ELF closure (builder/elf.ts) and the preset file copy (builder/chroot.ts).
import { lstatSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { MkmaError } from '../lib/errors.js';

export interface InRootPath {
  /** Absolute path inside the root with every symlink resolved ('/' for the root itself). */
  path: string;
  /**
   * Every symlink crossed on the way, as in-root paths whose parent directories are real
   * directories (never themselves under a symlink), in the order they were met.
   */
  symlinks: string[];
  /** Whether `path` exists. A missing component is kept literally, like `realpath -m`. */
  exists: boolean;
}

export class RootPathError extends MkmaError {}

const MAX_SYMLINKS = 40; // Linux's own limit (ELOOP)

/**
 * Resolves `path` inside `root` the way the kernel would after chroot(root): component by
 * component, with absolute symlink targets re-rooted at `root` and '..' never leaving it.
 * node's realpath can't do that: an absolute target like /usr/lib/x would escape to the host.
 */
export function resolveInRoot(root: string, path: string): InRootPath {
  let todo = path.split('/').filter(Boolean);
  let cur = ''; // resolved so far, '' standing for the root
  let exists = true;
  let hops = 0;
  const symlinks: string[] = [];
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '.') continue;
    if (c === '..') {
      cur = cur.slice(0, cur.lastIndexOf('/'));
      continue;
    }
    const next = `${cur}/${c}`;
    let isLink = false;
    if (exists) {
      try {
        isLink = lstatSync(join(root, next)).isSymbolicLink();
      } catch {
        exists = false; // the rest can't exist either; keep resolving lexically
      }
    }
    if (!isLink) {
      cur = next;
      continue;
    }
    if (++hops > MAX_SYMLINKS) throw new RootPathError(`too many levels of symbolic links resolving ${path} in ${root}`);
    symlinks.push(next);
    const target = readlinkSync(join(root, next));
    if (target.startsWith('/')) cur = '';
    todo = [...target.split('/').filter(Boolean), ...todo];
  }
  return { path: cur || '/', symlinks, exists };
}

/** The host path of `path` inside `root`, resolved as the image sees it (resolveInRoot). */
export function hostPathInRoot(root: string, path: string): string {
  const inside = resolveInRoot(root, path).path;
  return inside === '/' ? root : join(root, inside);
}
