// The pure parts of `mkma layers` and `mkma verify`: the time in a layer's name, and the text
// they print (columns, cut to the terminal, damaged layers and ignored files named).
import { describe, expect, test } from '@jest/globals';
import { createdFromName, layerNameFor } from '../../format/names.js';
import type { LayerInfo } from '../../format/layer-info.js';
import { formatLayers } from '../../cli/layers-cmd.js';
import { formatVerify } from '../../cli/verify-cmd.js';
import { textWidth } from '../../persist/text.js';

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
  verified: false,
  problems: [],
  ...over,
});

describe('formatLayers', () => {
  test('columns line up with wide characters; the message is cut to the terminal', () => {
    const text = formatLayers(
      {
        layers: [layer(1, { message: '日本語のメッセージ' }), layer(10, { message: 'x'.repeat(200), entries: 123456 })],
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
