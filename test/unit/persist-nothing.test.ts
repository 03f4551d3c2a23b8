// A persist with nothing to save writes nothing and says why (persist/write.ts nothingToSave),
// and writeLayer itself refuses a plan that saves nothing: no code path writes an empty layer.
import { describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ChangeEntry, ScanResult } from '../../persist/model.js';
import { nothingToSave, NothingToSaveError, planLayer, writeLayer } from '../../persist/write.js';
import { changeEntry } from '../helpers/change-entry.js';
import { useTempDir } from '../helpers/files.js';

const tmp = useTempDir('nothing');

const scanOf = (entries: ChangeEntry[]): ScanResult => ({
  upper: '/u',
  lower: null,
  entries,
  skipped: [],
  stats: { entries: entries.length, bytes: 0, scanMs: 0 },
});

describe('nothingToSave', () => {
  const entries = [
    changeEntry('etc', 'container', 'dir'),
    changeEntry('etc/a', 'added', 'file', 3),
    changeEntry('tmp/x', 'added', 'file', 1),
  ];

  test('no changes since boot', () => {
    const plan = planLayer(scanOf([]), () => true);
    expect(nothingToSave(plan, 0, 'the rules')).toBe('no changes since boot');
  });

  test('every change left out: by the rules (--yes) or by the owner (the UI)', () => {
    const plan = planLayer(scanOf(entries), () => false);
    expect(plan.changes).toBe(0);
    expect(nothingToSave(plan, 2, 'the rules')).toBe('2 change(s), all left out by the rules');
    expect(nothingToSave(plan, 2, 'your choices')).toBe('2 change(s), all left out by your choices');
  });

  test('a container alone (a directory that is only the parent of changes) is nothing to save', () => {
    const plan = planLayer(scanOf(entries.slice(0, 1)), () => true);
    expect(nothingToSave(plan, 0, 'the rules')).toBe('no changes since boot');
  });

  test('one change chosen: something to save', () => {
    const plan = planLayer(scanOf(entries), (e) => e.path === 'etc/a');
    expect(plan.changes).toBe(1);
    expect(nothingToSave(plan, 2, 'the rules')).toBeNull();
  });

  test('writeLayer refuses a plan that saves nothing before it touches the images directory', async () => {
    const images = path.join(tmp(), 'images');
    fs.mkdirSync(images);
    fs.writeFileSync(path.join(images, 'base.cpio.zst'), 'base');
    await expect(writeLayer({ upper: tmp(), scan: scanOf(entries), include: () => false, imagesDir: images, level: 3 })).rejects.toThrow(
      NothingToSaveError,
    );
    expect(fs.readdirSync(images)).toEqual(['base.cpio.zst']);
  });
});
