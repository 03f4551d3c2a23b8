// Small trees for tests: a temporary directory per test file, and files put into it.
import { afterAll, beforeAll } from '@jest/globals';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/** A temporary directory made before the file's tests and removed after them: call the result for its path. */
export function useTempDir(prefix: string): () => string {
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), `mkma-${prefix}-`));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return () => dir;
}

/** Creates root/rel with its parents; `content` a string/Buffer, or { link } for a symlink. */
export function put(root: string, rel: string, content: string | Buffer | { link: string }): void {
  const p = join(root, rel);
  mkdirSync(dirname(p), { recursive: true });
  if (typeof content === 'object' && 'link' in content) symlinkSync(content.link, p);
  else writeFileSync(p, content);
}
