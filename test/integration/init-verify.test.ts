// Integrity at boot (mkma_verify, docs/FORMAT.md "Integrity at boot"): the init's layer code —
// the `mkma-apply` script it is generated into, both variants — under busybox, hashing each
// layer it is about to apply against its manifest's data_sha256. A layer whose data changed is
// skipped by name ("damaged", on the console and in the record) before anything of it is applied
// and before a try of it is spent, and counts as skipped. The change used is one zstd cannot
// see (a byte of a raw block in a frame written without a checksum): without the check, that
// layer is applied with the wrong contents, silently.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { encodeManifestFrame } from '../../format/manifest.js';
import { generateApplyScript, type Extractor } from '../../init/generate.js';
import { cpioEntry, dir, file, trailerEntry, writeRawImage, type RawEntry } from '../conformance/images.js';
import { BUSYBOX, hostUnpacker, makeBusyboxBin } from '../fixtures/layers.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-init-verify-'));
let BIN = '';
const APPLY: Record<Extractor, string> = { native: '', busybox: '' };

beforeAll(() => {
  const bin = makeBusyboxBin(path.join(TMP, 'busybox'));
  fs.symlinkSync(hostUnpacker(), path.join(bin, 'mkma-unpack'));
  BIN = bin;
  for (const x of ['native', 'busybox'] as const) {
    APPLY[x] = path.join(TMP, `mkma-apply-${x}`);
    fs.writeFileSync(APPLY[x], generateApplyScript(x));
  }
});
afterAll(() => {
  if (!process.env.MKMA_KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
});

const L = (id: string) => `persistence.${id}.cpio.zst`;
/** incompressible: zstd stores it as a raw block, whose bytes it cannot check without a frame checksum */
const RANDOM = randomBytes(64 << 10);

/** A layer as the writer makes it (data_sha256 of DATA), its one frame with or without zstd's checksum. */
function writeLayer(out: string, entries: RawEntry[], checksum = true): void {
  const cpio = Buffer.concat([...entries.map(cpioEntry), trailerEntry()]);
  const data = execFileSync('zstd', ['-q', '-c', '-1', ...(checksum ? [] : ['--no-check'])], { input: cpio });
  const manifest = encodeManifestFrame({
    kind: 'layer',
    created: '2026-11-22T02:15:00Z',
    message: 'verify',
    entries: entries.length,
    unpackedBytes: 1 << 20,
    dataBytes: data.length,
    dataSha256: createHash('sha256').update(data).digest('hex'),
    shards: [{ offset: 0, length: data.length }],
    opaque: [],
    deleted: [],
    xattrs: [],
  });
  fs.writeFileSync(out, Buffer.concat([data, manifest]));
}

/** Flips one byte in the middle of the file's data (inside RANDOM's raw block). */
function flipByte(f: string): void {
  const b = fs.readFileSync(f);
  b[RANDOM.length >> 1] ^= 0x20;
  fs.writeFileSync(f, b);
}

/**
 * base + layer 1 (intact), layer 2 (RANDOM, no frame checksum, one byte flipped), layer 3
 * (intact), layer 4 (no data_sha256: an image that cannot be checked; applied as before).
 * `names` gives each layer's file name (its state).
 */
function images(name: string, names = [L('1'), L('2'), L('3'), L('4')]): string {
  const d = path.join(TMP, name, 'images');
  fs.mkdirSync(d, { recursive: true });
  writeRawImage(path.join(d, 'base.cpio.zst'), { kind: 'base', shards: [[dir('.'), dir('etc'), file('etc/hostname', 'base\n')]] });
  writeLayer(path.join(d, names[0]), [dir('.'), file('one', '1\n')]);
  writeLayer(path.join(d, names[1]), [dir('.'), file('two', RANDOM)], false);
  flipByte(path.join(d, names[1]));
  writeLayer(path.join(d, names[2]), [dir('.'), file('three', '3\n')]);
  writeRawImage(path.join(d, names[3]), { kind: 'layer', shards: [[dir('.'), file('four', '4\n')]] });
  return d;
}

function apply(x: Extractor, imagesDir: string, env: Record<string, string> = {}) {
  const tree = path.join(path.dirname(imagesDir), `tree-${x}-${Object.values(env).join('-')}`);
  fs.mkdirSync(tree);
  const record = `${tree}.record`;
  const r = spawnSync(BUSYBOX, ['sh', APPLY[x], imagesDir, tree], {
    env: { PATH: BIN, LC_ALL: 'C', MKMA_RECORD: record, ...env },
    encoding: 'utf8',
  });
  return {
    status: r.status,
    out: r.stdout + r.stderr,
    tree,
    record: fs.existsSync(record) ? fs.readFileSync(record, 'utf8').split('\n').filter(Boolean) : [],
  };
}

describe.each(['native', 'busybox'] as const)('mkma_verify in the %s layer code', (x) => {
  test('a layer whose data does not match data_sha256 is skipped by name, before any of it is applied', () => {
    const d = images(`skip-${x}`);
    const r = apply(x, d, { MKMA_VERIFY: '1' });
    expect(r.out).toMatch(/LAYER SKIPPED persistence\.2\.cpio\.zst: damaged: its data does not match the data_sha256 of its manifest/);
    expect(r.out).toMatch(/phase layers-verified 3 layer\(s\), 0 MiB, checked in \d+\.\d\d s/);
    // counted as skipped: mkma-apply's status 3 (the init's "layers-done N applied, M skipped")
    expect(r.status).toBe(3);
    expect(fs.readdirSync(r.tree).sort()).toEqual(['etc', 'four', 'one', 'three']);
    expect(r.record).toEqual([
      `skipped ${L('2')} damaged: its data does not match the data_sha256 of its manifest (mkma verify names what is wrong; mkma layers remove drops it)`,
      `applied ${L('1')}`,
      `applied ${L('3')}`,
      `applied ${L('4')}`,
    ]);
  });

  test('without the check, zstd alone applies that layer with the wrong contents', () => {
    const d = images(`unchecked-${x}`);
    const r = apply(x, d);
    expect(r.out).not.toMatch(/SKIPPED|layers-verified/);
    expect(r.status).toBe(0);
    const two = fs.readFileSync(path.join(r.tree, 'two'));
    expect(two.length).toBe(RANDOM.length);
    expect(two.equals(RANDOM)).toBe(false);
  });
});

describe('mkma_verify and the other boot decisions', () => {
  test('a damaged layer on trial spends no try; an intact one does', () => {
    const names = [L('1@trial-3-0'), L('2@trial-3-0'), L('3'), L('4')];
    const d = images('trial', names);
    const r = apply('native', d, { MKMA_VERIFY: '1', MKMA_COUNT_TRIES: '1' });
    expect(r.status).toBe(3);
    expect(
      fs
        .readdirSync(d)
        .filter((n) => n.startsWith('persistence.'))
        .sort(),
    ).toEqual([L('1@trial-2-1'), L('2@trial-3-0'), L('3'), L('4')]);
    expect(r.record[0]).toMatch(/^skipped persistence\.2@trial-3-0\.cpio\.zst damaged: /);
  });

  test('mkma_layers=N counts a damaged layer (it was asked for); layers not applied are not hashed', () => {
    const d = images('first-two');
    const r = apply('native', d, { MKMA_VERIFY: '1', MKMA_LAYERS: '2' });
    expect(fs.readdirSync(r.tree).sort()).toEqual(['etc', 'one']);
    expect(r.out).toMatch(/phase layers-verified 2 layer\(s\)/);
    expect(r.record).toContain(`skipped ${L('3')} beyond mkma_layers=2`);
  });
});
