// Temporary files are created exclusively (lib/tempfile.ts): what someone planted at the
// names the writers used to pick — a symlink to a file of theirs choosing, a hardlink to one,
// a file of their own — is neither followed, truncated nor reused, and the write succeeds.
// The layer's temporary file lives in the images directory (a USB stick anyone may have
// written to); zstd's spool files in the system temp directory (everyone's).
import { afterAll, describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { packTree } from '../../format/pack.js';
import { extractImage, readManifest } from '../../format/reader.js';
import { temporaryPrefix } from '../../format/writer.js';
import { createExclusive } from '../../lib/tempfile.js';

const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-tempfiles-'));
afterAll(() => fs.rmSync(WORK, { recursive: true, force: true }));

const VICTIM_TEXT = 'precious: must not change\n';
function victim(name: string): string {
  const p = path.join(WORK, name);
  fs.writeFileSync(p, VICTIM_TEXT);
  return p;
}

/** A small tree with enough data for several zstd shards (each shard: one spool file). */
function sourceTree(): string {
  const src = path.join(WORK, 'src');
  if (fs.existsSync(src)) return src;
  fs.mkdirSync(path.join(src, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(src, 'etc/hostname'), 'tempfiles\n');
  for (let i = 0; i < 6; i++) fs.writeFileSync(path.join(src, `blob${i}`), Buffer.alloc(300 << 10, i + 1));
  return src;
}

async function expectWhole(file: string): Promise<void> {
  expect(fs.lstatSync(file).isFile()).toBe(true);
  const m = readManifest(file);
  expect(m.entries).toBe(9); // ., etc, etc/hostname, 6 blobs
  const dest = fs.mkdtempSync(path.join(WORK, 'check-'));
  await extractImage(file, dest);
  expect(fs.readFileSync(path.join(dest, 'etc/hostname'), 'utf8')).toBe('tempfiles\n');
  expect(fs.readFileSync(path.join(dest, 'blob5')).equals(Buffer.alloc(300 << 10, 6))).toBe(true);
}

describe('createExclusive', () => {
  test('skips names already taken (a symlink, a file) instead of following or reusing them', () => {
    const dir = path.join(WORK, 'names');
    fs.mkdirSync(dir);
    const target = victim('names-victim');
    fs.symlinkSync(target, path.join(dir, 'tmp-a'));
    fs.writeFileSync(path.join(dir, 'tmp-b'), 'planted\n');
    const names = ['a', 'b', 'c'];
    const f = createExclusive(dir, 'tmp-', 0o600, () => names.shift()!);
    expect(f.path).toBe(path.join(dir, 'tmp-c'));
    fs.writeSync(f.fd, 'mine\n');
    fs.closeSync(f.fd);
    expect(fs.statSync(f.path).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(target, 'utf8')).toBe(VICTIM_TEXT);
    expect(fs.readFileSync(path.join(dir, 'tmp-b'), 'utf8')).toBe('planted\n');
  });

  test("every name taken: a loud error, not a write through someone else's file", () => {
    const dir = path.join(WORK, 'all-taken');
    fs.mkdirSync(dir);
    fs.symlinkSync('/nonexistent', path.join(dir, 'tmp-x'));
    expect(() => createExclusive(dir, 'tmp-', 0o600, () => 'x')).toThrow(/100 random names were all taken/);
  });
});

describe("the writers' temporary files", () => {
  test("the layer's temporary file: a symlink and a hardlink planted at the old predictable name are left alone", async () => {
    const dir = path.join(WORK, 'images');
    fs.mkdirSync(dir);
    const name = 'persistence.20260101T000000Z.cpio.zst';
    // what the writer used to open with 'w+': .NAME.tmp-PID (this process writes below)
    const outside = victim('outside-victim');
    fs.symlinkSync(outside, path.join(dir, temporaryPrefix(name)));
    const sameDir = path.join(dir, 'base.cpio.zst');
    fs.writeFileSync(sameDir, VICTIM_TEXT);
    fs.linkSync(sameDir, path.join(dir, `${temporaryPrefix(name)}-0`));
    await packTree(sourceTree(), path.join(dir, name), { kind: 'layer', level: 3, shardBytes: 256 << 10, mode: 0o600 });
    expect(fs.readFileSync(outside, 'utf8')).toBe(VICTIM_TEXT);
    expect(fs.readFileSync(sameDir, 'utf8')).toBe(VICTIM_TEXT);
    await expectWhole(path.join(dir, name));
    expect(fs.statSync(path.join(dir, name)).mode & 0o777).toBe(0o600);
    // the planted names are still there, untouched; no temporary file of ours is left
    expect(fs.readdirSync(dir).sort()).toEqual(
      ['.' + name + '.tmp-' + process.pid, `.${name}.tmp-${process.pid}-0`, 'base.cpio.zst', name].sort(),
    );
  });

  test('zstd spool files: symlinks planted at the old predictable names in the spool directory are not followed', async () => {
    const spool = path.join(WORK, 'spool');
    fs.mkdirSync(spool);
    const target = victim('spool-victim');
    // what ShardCompressor used to open with 'w+': .mkma-shard-PID-N, N counting from 1
    for (let n = 1; n <= 64; n++) fs.symlinkSync(target, path.join(spool, `.mkma-shard-${process.pid}-${n}`));
    const out = path.join(WORK, 'spooled.cpio.zst');
    const r = await packTree(sourceTree(), out, { kind: 'base', level: 3, shardBytes: 256 << 10, spoolDir: spool });
    expect(r.manifest.shards.length).toBeGreaterThan(3);
    expect(fs.readFileSync(target, 'utf8')).toBe(VICTIM_TEXT);
    await expectWhole(out);
    // the spool files were unlinked at once: only the planted links remain
    expect(fs.readdirSync(spool)).toHaveLength(64);
  });
});
