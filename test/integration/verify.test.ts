// `mkma verify` on images made by the real writer, good and damaged (a flipped data byte, a
// truncated file, a damaged shard table, a damaged footer, a missing base), through the CLI
// (exit status, the file named with what is wrong, --json) and format/verify.ts directly;
// and on a storage device (--device DEV --path P: mounted read-only, released after).
import { beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { verifyImage, verifyImages } from '../../format/verify.js';
import { useTempDir } from '../helpers/files.js';
import { buildImages, damageImage, type Damage } from '../helpers/images.js';
import { MKMA, REPO } from '../helpers/paths.js';
import { noise } from '../fixtures/layers.js';

const tmp = useTempDir('verify');
let good = '';
const L1 = 'persistence.20261122T021500Z.cpio.zst';
const L2 = 'persistence.20261123T101010Z.cpio.zst';
const L10 = 'persistence.20261123T101010Z-10.cpio.zst';

function mkma(args: string[]) {
  return spawnSync(process.execPath, [MKMA, ...args], { encoding: 'utf8', timeout: 60_000 });
}

/** A copy of the good images directory with `name` damaged. */
function damagedCopy(how: Damage, name: string): string {
  const dir = fs.mkdtempSync(path.join(tmp(), `${how}-`));
  fs.cpSync(good, dir, { recursive: true });
  damageImage(path.join(dir, name), how);
  return dir;
}

beforeAll(async () => {
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  good = await buildImages(tmp(), [
    { name: L1, files: { 'etc/a': 'a\n' }, message: 'first' },
    { name: L2, files: { 'var/big': noise(300_000, 3) } },
    { name: L10, files: { 'etc/b': 'b\n' } },
  ]);
}, 60_000);

describe('mkma verify', () => {
  test('good images: exit 0, every file ok, in boot order', () => {
    const r = mkma(['verify', '--path', good]);
    expect(r.stderr).toContain('==> verify');
    expect(r.status).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines.map((l) => l.split(/\s+/).slice(0, 2))).toEqual([
      ['ok', 'base.cpio.zst'],
      ['ok', L1],
      ['ok', L2],
      ['ok', L10],
      ['all', '4'],
    ]);
  });

  test('--json: every file with its verdict', () => {
    const r = mkma(['verify', '--path', good, '--json']);
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.ok).toBe(true);
    expect(out.files.map((f: { name: string; kind: string; ok: boolean }) => [f.name, f.kind, f.ok])).toEqual([
      ['base.cpio.zst', 'base', true],
      [L1, 'layer', true],
      [L2, 'layer', true],
      [L10, 'layer', true],
    ]);
  });

  const cases: Array<[Damage, string, string, RegExp]> = [
    ['flip-byte', L2, 'data', /^data hash mismatch: the manifest says [0-9a-f]{64}, the data hashes to [0-9a-f]{64}$/],
    ['truncate', L1, 'manifest', /no manifest at its end \(truncated/],
    ['shard-table', L2, 'shards', /^shard 2 of \d+ \(offset \d+\) does not begin a zstd frame$/],
    ['footer', L10, 'manifest', /damaged manifest footer/],
    ['flip-byte', 'base.cpio.zst', 'data', /^data hash mismatch/],
  ];
  test.each(cases)('%s of %s: exit 1, the file named with what is wrong', (how, name, part, message) => {
    const dir = damagedCopy(how, name);
    const r = mkma(['verify', '--path', dir]);
    expect(r.status).toBe(1);
    const bad = r.stdout.split('\n').filter((l) => l.startsWith('DAMAGED'));
    expect(bad).toHaveLength(1);
    expect(bad[0]).toContain(` ${name} `);
    expect(bad[0]).toContain(` ${part}: `);
    expect(r.stdout.trimEnd().split('\n').pop()).toBe(`1 of 4 image(s) damaged: ${name}`);
    const j = mkma(['verify', '--path', dir, '--json']);
    expect(j.status).toBe(1);
    const files = JSON.parse(j.stdout).files as Array<{ name: string; ok: boolean; problems: Array<{ part: string; message: string }> }>;
    expect(files.filter((f) => !f.ok).map((f) => f.name)).toEqual([name]);
    const problems = files.find((f) => f.name === name)!.problems;
    expect(problems).toHaveLength(1);
    expect(problems[0].part).toBe(part);
    expect(problems[0].message).toMatch(message);
  });

  test('two damaged layers and no base: each named', () => {
    const dir = damagedCopy('flip-byte', L1);
    damageImage(path.join(dir, L10), 'truncate');
    fs.rmSync(path.join(dir, 'base.cpio.zst'));
    const r = mkma(['verify', '--path', dir]);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^DAMAGED {2}base\.cpio\.zst +file: missing$/m);
    expect(r.stdout.trimEnd().split('\n').pop()).toBe(`3 of 4 image(s) damaged: base.cpio.zst, ${L1}, ${L10}`);
  });

  test('a FIFO named like a layer is listed as ignored, never opened', () => {
    const dir = fs.mkdtempSync(path.join(tmp(), 'fifo-'));
    fs.cpSync(good, dir, { recursive: true });
    execFileSync('mkfifo', [path.join(dir, 'persistence.30.cpio.zst')]);
    const r = mkma(['verify', '--path', dir]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('ignored  persistence.30.cpio.zst (not a regular file: the boot does not apply it)');
  });

  test('bad arguments: exit 2; no such directory: exit 2', () => {
    expect(mkma(['verify', '--bogus']).status).toBe(2);
    expect(mkma(['verify', 'extra']).status).toBe(2);
    expect(mkma(['verify', '--path', path.join(tmp(), 'nope')]).status).toBe(2);
  });
});

describe('format/verify.ts', () => {
  test('a layer used as a base is named', async () => {
    const c = await verifyImage(path.join(good, L1), 'base');
    expect(c.problems).toEqual([{ part: 'manifest', message: 'the manifest says kind layer, but it is used as a base' }]);
  });

  test('progress: the data hashed, up to its whole size', async () => {
    const seen: Array<[number, number]> = [];
    const c = await verifyImage(path.join(good, L2), 'layer', (d, t) => seen.push([d, t]));
    expect(c.problems).toEqual([]);
    expect(seen.at(-1)).toEqual([c.manifest!.dataBytes, c.manifest!.dataBytes]);
  });

  test('verifyImages: base then layers in boot order', async () => {
    const files: string[] = [];
    const r = await verifyImages(good, { onFile: (n, i, count) => files.push(`${i + 1}/${count} ${n}`) });
    expect(files).toEqual([`1/4 base.cpio.zst`, `2/4 ${L1}`, `3/4 ${L2}`, `4/4 ${L10}`]);
    expect([r.base, ...r.layers].every((c) => !c.problems.length)).toBe(true);
  });
});

describe('on a storage device', () => {
  test('--device DEV --path P: mounted read-only while reading, unmounted after', () => {
    const img = path.join(tmp(), 'disk.img');
    const root = path.join(tmp(), 'disk-root');
    fs.cpSync(good, path.join(root, 'images'), { recursive: true });
    execFileSync('truncate', ['-s', '32M', img]);
    execFileSync('mkfs.ext4', ['-q', '-d', root, img]);
    const loop = execFileSync('losetup', ['--find', '--show', img], { encoding: 'utf8' }).trim();
    try {
      const before = fs.readFileSync('/proc/self/mountinfo', 'utf8');
      const r = mkma(['verify', '--device', loop, '--path', '/images']);
      expect(r.status).toBe(0);
      expect(r.stderr).toContain(`${loop}:/images (mounted at `);
      expect(r.stderr).toContain('read-only, while reading');
      expect(r.stdout.trimEnd().split('\n').pop()).toBe('all 4 image(s) good');
      expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).toBe(before);
    } finally {
      execFileSync('losetup', ['-d', loop]);
    }
  });
});
