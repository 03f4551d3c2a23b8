// `mkma layers` on images made by the real writer: boot order (the init's natural order, one
// rule in format/names.ts), created, message (as mkma persist --message records it), entries,
// sizes and state; --verify marking a damaged layer (format/verify.ts); --json.
import { beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeLayers } from '../../format/layer-info.js';
import { sortLayerNames } from '../../format/names.js';
import { useTempDir } from '../helpers/files.js';
import { buildImages, damageImage } from '../helpers/images.js';
import { MKMA, REPO } from '../helpers/paths.js';
import { noise } from '../fixtures/layers.js';

const tmp = useTempDir('layers');
let images = '';
const OLD2 = 'persistence.2.cpio.zst';
const OLD10 = 'persistence.10.cpio.zst';
const NEW = 'persistence.20261123T101010Z.cpio.zst';
const NEW2 = 'persistence.20261123T101010Z-2.cpio.zst';

function mkma(args: string[]) {
  return spawnSync(process.execPath, [MKMA, 'layers', ...args], { encoding: 'utf8', timeout: 60_000 });
}

beforeAll(async () => {
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  // written in an order that is not the boot order
  images = await buildImages(tmp(), [
    { name: NEW2, files: { 'etc/c': 'c\n' }, message: 'après nginx ✓', created: new Date('2026-11-23T10:10:10.500Z') },
    { name: OLD10, files: { 'var/big': noise(300_000, 4) }, message: 'tab\there', created: new Date('2026-01-02T03:04:05Z') },
    { name: NEW, files: { 'etc/b': 'b\n', 'etc/d/e': 'e' }, created: new Date('2026-11-23T10:10:10Z') },
    { name: OLD2, files: { 'etc/a': 'a\n' }, message: 'first', created: new Date('2026-01-01T00:00:00Z') },
  ]);
}, 60_000);

describe('mkma layers', () => {
  test('boot order, created, message, entries, sizes, state', () => {
    const r = mkma(['--path', images]);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^# {2}NAME +CREATED \(UTC\) +ENTRIES +SIZE +UNPACKED +STATE +BASE +MESSAGE$/);
    const rows = lines.slice(1, 5).map((l) => l.split(/ {2,}/));
    expect(rows.map((c) => c.slice(0, 3))).toEqual([
      ['1', OLD2, '2026-01-01 00:00:00'],
      ['2', OLD10, '2026-01-02 03:04:05'],
      ['3', NEW, '2026-11-23 10:10:10'],
      ['4', NEW2, '2026-11-23 10:10:10'],
    ]);
    expect(rows.map((c) => c[6])).toEqual(['active', 'active', 'active', 'active']);
    // the message as given; a control character shown as '?'
    // packed without a base (format/pack.ts, as mkma build does not): no base recorded
    expect(rows.map((c) => c[7])).toEqual(['unknown', 'unknown', 'unknown', 'unknown']);
    expect(rows.map((c) => c[8] ?? '')).toEqual(['first', 'tab?here', '', 'après nginx ✓']);
    expect(lines[5]).toMatch(/^4 layer\(s\): .* on the storage, .* in RAM; in /);
    expect(lines).toHaveLength(6);
    // the same order as the init's (one rule: format/names.ts)
    expect(rows.map((c) => c[1])).toEqual(sortLayerNames(fs.readdirSync(images)));
  });

  test('--json: every field', () => {
    const r = mkma(['--path', images, '--json']);
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.layers.map((l: { name: string }) => l.name)).toEqual([OLD2, OLD10, NEW, NEW2]);
    const first = out.layers[0];
    expect(first).toEqual({
      position: 1,
      name: OLD2,
      id: '2',
      state: 'active',
      pinned: false,
      triesLeft: 0,
      triesDone: 0,
      skippedAtBoot: null,
      created: '2026-01-01T00:00:00Z',
      message: 'first',
      entries: expect.any(Number),
      fileBytes: fs.statSync(path.join(images, OLD2)).size,
      unpackedBytes: expect.any(Number),
      baseDataSha256: null,
      verified: false,
      problems: [],
    });
    // the directory's base, what each layer's BASE is compared with
    expect(out.baseDataSha256).toMatch(/^[0-9a-f]{64}$/);
    // ".", etc, etc/a
    expect(first.entries).toBe(3);
    expect(out.layers[1].unpackedBytes).toBeGreaterThan(300_000);
    expect(out.layers[3].message).toBe('après nginx ✓');
  });

  test('--verify: a layer with a flipped data byte is marked DAMAGED, exit 1; without --verify it is not seen', async () => {
    const dir = fs.mkdtempSync(path.join(tmp(), 'damaged-'));
    fs.cpSync(images, dir, { recursive: true });
    damageImage(path.join(dir, OLD10), 'flip-byte');
    expect(mkma(['--path', dir]).status).toBe(0);
    const r = mkma(['--path', dir, '--verify']);
    expect(r.status).toBe(1);
    const rows = r.stdout.split('\n').slice(1, 5);
    expect(rows.map((l) => l.split(/ {2,}/)[6])).toEqual(['active, verified', 'active, DAMAGED', 'active, verified', 'active, verified']);
    expect(r.stdout).toMatch(new RegExp(`^DAMAGED ${OLD10.replace(/\./g, '\\.')}: data: data hash mismatch`, 'm'));
    const j = JSON.parse(mkma(['--path', dir, '--verify', '--json']).stdout);
    expect(j.layers[1].problems[0].part).toBe('data');
    expect(j.layers.filter((l: { problems: unknown[] }) => l.problems.length)).toHaveLength(1);
  });

  test('an unreadable manifest is DAMAGED without --verify too; created then comes from the name', async () => {
    const dir = fs.mkdtempSync(path.join(tmp(), 'footer-'));
    fs.cpSync(images, dir, { recursive: true });
    damageImage(path.join(dir, NEW), 'truncate');
    const r = mkma(['--path', dir]);
    expect(r.status).toBe(1);
    const row = r.stdout.split('\n')[3].split(/ {2,}/);
    expect(row.slice(0, 4)).toEqual(['3', NEW, '2026-11-23 10:10:10', '-']);
    expect(row[6]).toBe('active, DAMAGED');
    const l = (await describeLayers(dir)).layers[2];
    expect(l).toMatchObject({ name: NEW, entries: null, unpackedBytes: null, created: '2026-11-23T10:10:10Z' });
  });

  test('no layers: says so, exit 0', () => {
    const dir = fs.mkdtempSync(path.join(tmp(), 'none-'));
    fs.copyFileSync(path.join(images, 'base.cpio.zst'), path.join(dir, 'base.cpio.zst'));
    const r = mkma(['--path', dir]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`no layers in ${dir} (the base alone boots)\n`);
    expect(JSON.parse(mkma(['--path', dir, '--json']).stdout).layers).toEqual([]);
  });
});
