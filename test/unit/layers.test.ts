// The pure parts of `mkma layers` and `mkma verify`: the time in a layer's name, and the text
// they print (columns, cut to the terminal, damaged layers and ignored files named).
import { afterAll, describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createdFromName, layerNameFor } from '../../format/names.js';
import type { LayerInfo } from '../../format/layer-info.js';
import { formatLayers } from '../../cli/layers-cmd.js';
import { formatVerify } from '../../cli/verify-cmd.js';
import { textWidth } from '../../persist/text.js';
import { parseManifestBody, serializeManifestBody, type Manifest } from '../../format/manifest.js';
import { baseFromBootEnv, baseOfNewLayer } from '../../persist/base-identity.js';
import { rangeLevel } from '../../persist/compact.js';
import { readManifest } from '../../format/reader.js';
import { ArchiveWriter } from '../../format/writer.js';

describe('createdFromName', () => {
  test('the time of the names mkma persist gives, and null for any other name', () => {
    const at = new Date('2026-11-22T02:15:09.700Z');
    expect(createdFromName(layerNameFor(at))).toBe('2026-11-22T02:15:09Z');
    expect(createdFromName(layerNameFor(at, '-12'))).toBe('2026-11-22T02:15:09Z');
    expect(createdFromName('persistence.2.cpio.zst')).toBeNull();
    expect(createdFromName('persistence.20261322T021500Z.cpio.zst')).toBeNull();
    expect(createdFromName('persistence.20261122T021500Z-x.cpio.zst')).toBeNull();
    expect(createdFromName('base.cpio.zst')).toBeNull();
  });
});

const layer = (position: number, over: Partial<LayerInfo> = {}): LayerInfo => ({
  position,
  name: `persistence.${position}.cpio.zst`,
  id: String(position),
  state: 'active',
  pinned: false,
  triesLeft: 0,
  triesDone: 0,
  skippedAtBoot: null,
  created: '2026-11-22T02:15:00Z',
  message: '',
  entries: 12,
  fileBytes: 2048,
  unpackedBytes: 40960,
  baseDataSha256: null,
  verified: false,
  problems: [],
  ...over,
});

describe('formatLayers', () => {
  test('columns line up with wide characters; the message is cut to the terminal', () => {
    const text = formatLayers(
      {
        layers: [layer(1, { message: '日本語のメッセージ' }), layer(10, { message: 'x'.repeat(200), entries: 123456 })],
        baseDataSha256: null,
        ignored: [],
      },
      '/srv/images',
      120,
    );
    const lines = text.trimEnd().split('\n');
    expect(lines[0].indexOf('STATE')).toBe(lines[1].indexOf('active'));
    expect(lines[2].indexOf('active')).toBe(lines[1].indexOf('active'));
    expect(lines[1].endsWith('日本語のメッセージ')).toBe(true);
    expect(textWidth(lines[2])).toBe(120);
    expect(lines[2].endsWith('…')).toBe(true);
    expect(lines[3]).toBe('2 layer(s): 4.0 KiB on the storage, 80 KiB in RAM; in /srv/images');
  });

  test('damaged layers and ignored files are named after the table', () => {
    const text = formatLayers(
      {
        layers: [layer(1, { verified: true }), layer(2, { verified: true, problems: [{ part: 'data', message: 'data hash mismatch' }] })],
        baseDataSha256: null,
        ignored: [{ name: 'persistence.x y.cpio.zst', reason: 'not a layer name' }],
      },
      'D',
    );
    expect(text).toContain('active, verified');
    expect(text).toContain('active, DAMAGED');
    expect(text).toContain('DAMAGED persistence.2.cpio.zst: data: data hash mismatch\n');
    expect(text).toContain('ignored persistence.x y.cpio.zst (not a layer name: the boot does not apply it)\n');
  });
});

describe('the base each layer was written on', () => {
  const A = 'a'.repeat(64);
  const B = 'b'.repeat(64);
  test('its first 12 digits; "(other)" when not the directory\'s base; "unknown" without the field; one line for the others', () => {
    const text = formatLayers(
      { layers: [layer(1), layer(2, { baseDataSha256: A }), layer(3, { baseDataSha256: B })], baseDataSha256: A, ignored: [] },
      'D',
    );
    const rows = text.split('\n').map((l) => l.split(/ {2,}/));
    expect(rows[0][7]).toBe('BASE');
    expect(rows.slice(1, 4).map((r) => r[7])).toEqual(['unknown', 'aaaaaaaaaaaa', 'bbbbbbbbbbbb (other)']);
    expect(text).toContain(
      '1 layer(s) written on another base than base.cpio.zst (aaaaaaaaaaaa): they still apply, but what they change may differ on this base\n',
    );
    // no base in the directory: nothing to compare with, no warning
    const alone = formatLayers({ layers: [layer(1, { baseDataSha256: B })], baseDataSha256: null, ignored: [] }, 'D');
    expect(alone).toContain('bbbbbbbbbbbb');
    expect(alone).not.toContain('other');
  });
});

describe('base_data_sha256 in the manifest, and where persist takes it from', () => {
  const A = 'a'.repeat(64);
  const manifest: Manifest = {
    kind: 'layer',
    created: '2026-11-22T02:15:00Z',
    message: '',
    entries: 1,
    unpackedBytes: 4096,
    dataBytes: 10,
    dataSha256: 'c'.repeat(64),
    shards: [],
    opaque: [],
    deleted: [],
    xattrs: [],
  };
  test('written after data_sha256 when known, read back; absent stays absent; a bad value is ignored', () => {
    const body = serializeManifestBody({ ...manifest, baseDataSha256: A });
    expect(body.toString()).toContain(`data_sha256 ${'c'.repeat(64)}\nbase_data_sha256 ${A}\n`);
    expect(parseManifestBody(body).baseDataSha256).toBe(A);
    expect(serializeManifestBody(manifest).toString()).not.toContain('base_data_sha256');
    expect(parseManifestBody(serializeManifestBody(manifest))).toEqual(manifest);
    const bad = Buffer.from(serializeManifestBody(manifest).toString().replace('%xattrs', 'base_data_sha256 XYZ\n%xattrs'));
    expect(parseManifestBody(bad).baseDataSha256).toBeUndefined();
  });
  test("booted: the init's boot.env; with --path or --device: the directory's base (none here)", () => {
    const env = `device=UUID=1\nimages_path=/images/a\nbase_data_sha256=${A}\n`;
    expect(baseFromBootEnv(env)).toBe(A);
    expect(baseFromBootEnv('device=UUID=1\nbase_data_sha256=\n')).toBeUndefined();
    expect(baseFromBootEnv(undefined)).toBeUndefined();
    expect(baseOfNewLayer({ bootEnv: env, imagesDir: '/nonexistent' })).toBe(A);
    expect(baseOfNewLayer({ path: '/nonexistent', bootEnv: env, imagesDir: '/nonexistent' })).toBeUndefined();
  });
});

describe('formatVerify', () => {
  test('each file ok or each of its problems; the last line sums up', () => {
    const check = (file: string, problems: Array<{ part: 'data' | 'manifest'; message: string }> = []) => ({
      file,
      manifest: null,
      fileBytes: 1024,
      problems,
    });
    const text = formatVerify({
      base: check('/d/base.cpio.zst'),
      layers: [
        check('/d/persistence.1.cpio.zst', [
          { part: 'manifest', message: 'the manifest says kind base, but it is used as a layer' },
          { part: 'data', message: 'data hash mismatch' },
        ]),
      ],
      ignored: [],
    });
    expect(text).toBe(
      [
        'ok       base.cpio.zst           1.0 KiB',
        'DAMAGED  persistence.1.cpio.zst  manifest: the manifest says kind base, but it is used as a layer',
        '         persistence.1.cpio.zst  data: data hash mismatch',
        '1 of 2 image(s) damaged: persistence.1.cpio.zst',
        '',
      ].join('\n'),
    );
  });
});

describe('zstd levels: each image records its own, a compaction writes at its layers', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-levels-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = async (name: string, kind: 'base' | 'layer', level: number) => {
    const w = new ArchiveWriter(path.join(dir, name), { kind, level });
    await w.finish();
  };

  test('the manifest says the level the writer used', async () => {
    await write('base.cpio.zst', 'base', 3);
    await write('persistence.1.cpio.zst', 'layer', 5);
    await write('persistence.2.cpio.zst', 'layer', 9);
    expect(readManifest(path.join(dir, 'base.cpio.zst')).zstdLevel).toBe(3);
    expect(readManifest(path.join(dir, 'persistence.2.cpio.zst')).zstdLevel).toBe(9);
  });

  test("the highest level of the range's layers, else the base's", () => {
    expect(rangeLevel(dir, ['persistence.1.cpio.zst', 'persistence.2.cpio.zst'])).toBe(9);
    expect(rangeLevel(dir, ['persistence.1.cpio.zst'])).toBe(5);
    // layers that record none (an older mkma's), or cannot be read: the base's
    fs.writeFileSync(path.join(dir, 'persistence.3.cpio.zst'), 'not an image');
    expect(rangeLevel(dir, ['persistence.3.cpio.zst'])).toBe(3);
  });
});
