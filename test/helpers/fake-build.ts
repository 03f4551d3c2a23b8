// A stand-in for what `mkma build` writes (base, kernel, initramfs, mkma.json with their sizes
// and sha256s), for the install/update tests that boot nothing: random bytes of small sizes.
import { afterAll, beforeAll } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** A build's output directory with stand-in files of the given sizes. */
/** `base`: a real base image's bytes instead of random ones (tests that read its manifest). */
export function fakeBuild(dir: string, hostname: string, seed: string, base?: Buffer): string {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const files = {
    base: ['base.cpio.zst', base ?? Buffer.concat([Buffer.from(seed), randomBytes(300_000)])],
    kernel: ['vmlinuz', randomBytes(200_000)],
    initramfs: ['initramfs.cpio.zst', randomBytes(100_000)],
  } as const;
  const outputs: Record<string, { bytes: number; sha256: string }> = {};
  for (const [key, [name, bytes]] of Object.entries(files)) {
    fs.writeFileSync(path.join(dir, name), bytes);
    outputs[key] = { bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
  }
  fs.writeFileSync(path.join(dir, 'mkma.json'), JSON.stringify({ hostname, kernelVersion: '6.1.0-test', mkmaVersion: 'test', outputs }));
  return dir;
}

/** A fresh directory for the test file's work (kept with MKMA_KEEP_TMP=1). */
export function useScratchDir(dir: string): void {
  beforeAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
  });
  afterAll(() => {
    if (!process.env.MKMA_KEEP_TMP) fs.rmSync(dir, { recursive: true, force: true });
  });
}
