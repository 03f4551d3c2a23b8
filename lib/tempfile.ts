// Temporary files nobody else can have prepared. A predictable name in a directory others can
// write to (the system temp directory; an images directory on a USB stick anyone may have
// written to) is an invitation: a symlink planted there redirects the write to any file the
// writer can open (as root: any file), and a planted regular file is read back as ours. So a
// temporary file gets a random name and is created with O_CREAT|O_EXCL|O_NOFOLLOW: the open
// fails instead of following or reusing whatever is at that name, and another name is tried.
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MkmaError } from './errors.js';

export interface ExclusiveFile {
  fd: number;
  path: string;
}

const ATTEMPTS = 100;

/**
 * Creates and opens (read-write) a new file `<dir>/<prefix><random>`; `random` is for tests.
 * Errors other than "the name exists" (no such directory, read-only, …) are thrown as they are.
 */
export function createExclusive(
  dir: string,
  prefix: string,
  mode = 0o600,
  random: () => string = () => randomBytes(8).toString('hex'),
): ExclusiveFile {
  const { O_RDWR, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  for (let i = 0; i < ATTEMPTS; i++) {
    const p = path.join(dir, prefix + random());
    try {
      return { fd: fs.openSync(p, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, mode), path: p };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  throw new MkmaError(
    `cannot create a temporary file in ${dir}: ${ATTEMPTS} random names were all taken (is someone planting files there?)`,
  );
}
