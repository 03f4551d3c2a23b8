// `mkma layers compact` and `--into-base` (persist/compact.ts), as users run them (the CLI):
// - property: random stacks of 5 layers (test/conformance/random.ts, the real writer) unpack to
//   the identical tree before and after compacting all of them, or a range in the middle, and
//   the compacted layer is no bigger than the layers it replaces;
// - below the range only what the range reaches (mkma-unpack -t) gives the same layer as the
//   whole base below it, on random stacks, for the whole stack and for a range in the middle;
// - the commit point: superseded layers left by an interrupted compaction are ignored by
//   `mkma unpack` and by the init's sort_layers, and removed by the next compaction;
// - crash tests: compact and --into-base killed with SIGKILL at 10+ moments each leave a set of
//   images that unpacks to the same tree as before, and a compaction run after it succeeds and
//   removes the mounts and work areas the killed runs left (SIGKILL cannot be cleaned up after),
//   saying so.
// Runs as root (tmpfs and overlay mounts).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildUnpacker } from '../../builder/unpacker.js';
import { unpackImages } from '../../format/apply.js';
import { listImages } from '../../format/images.js';
import { packTree } from '../../format/pack.js';
import { readManifest } from '../../format/reader.js';
import { createReporter } from '../../lib/progress.js';
import { compactLayers } from '../../persist/compact.js';
import { randomStack } from '../conformance/random.js';
import { layerFunctions, layerName, mkfile, mkhardlink, mksymlink, setxattr, writeLayer as writeFixtureLayer } from '../fixtures/layers.js';
import { describeTree } from '../helpers/tree.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WORK = fs.mkdtempSync(path.join(tmpdir(), 'mkma-compact-test-'));
/** the compactions' own work areas go here, so that what a killed one left can be found */
const WORKBASE = path.join(WORK, 'tmp');

const isLayer = (n: string) => /^persistence\..*\.cpio\.zst$/.test(n);
const layersIn = (dir: string) => fs.readdirSync(dir).filter(isLayer).sort();

function cli(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [path.join(REPO, 'bin/mkma.js'), ...args], {
    encoding: 'utf8',
    timeout: 300_000,
    env: { ...process.env, TMPDIR: WORKBASE, ...env },
  });
}

/** The tree `mkma unpack` makes of an images directory (TypeScript apply), described. */
async function treeOf(images: string, into: string): Promise<Record<string, string>> {
  fs.rmSync(into, { recursive: true, force: true });
  const r = await unpackImages(images, into);
  expect(r.layers.filter((l) => !l.applied)).toEqual([]);
  const d = describeTree(into);
  fs.rmSync(into, { recursive: true, force: true });
  return d;
}

/** Mount points under `dir` (/proc/self/mountinfo). */
const mountsUnder = (dir: string) =>
  fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => m && m.startsWith(dir + '/'));

/** Mounts a killed compaction left under WORKBASE (its tmpfs, its overlay), after the tests. */
function unmountLeftovers(): number {
  const mounts = mountsUnder(WORKBASE);
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  for (const d of fs.readdirSync(WORKBASE)) fs.rmSync(path.join(WORKBASE, d), { recursive: true, force: true });
  return mounts.length;
}

beforeAll(() => {
  spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], {
    stdio: 'ignore',
  });
  fs.mkdirSync(WORKBASE);
}, 120_000);

afterAll(() => {
  unmountLeftovers();
  fs.rmSync(WORK, { recursive: true, force: true });
});

describe('property: compacting 5 random layers keeps the tree', () => {
  const SEEDS = Array.from({ length: Number(process.env.MKMA_PROPERTY_CASES ?? 3) }, (_, i) => 2000 + i);
  test.each(SEEDS)(
    'seed %i',
    async (seed) => {
      const dir = path.join(WORK, `random-${seed}`);
      const images = await randomStack(seed, dir, 5);
      const layers = layersIn(images);
      expect(layers).toHaveLength(5);
      const before = await treeOf(images, path.join(dir, 'tree'));

      // a range in the middle first (TypeScript apply), then everything (mkma-unpack)
      const mid = cli(['layers', 'compact', '2..4', '--path', images, '--extractor', 'ts', '-q']);
      expect(mid.stderr).toBe('');
      expect(mid.status).toBe(0);
      const afterMid = layersIn(images);
      expect(afterMid).toEqual([layers[0], `persistence.4+from+2.cpio.zst`, layers[4]]);
      expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);

      const all = cli(['layers', 'compact', '--path', images, '--json']);
      expect(all.status).toBe(0);
      const out = JSON.parse(all.stdout) as { layer: string; replaced: string[]; bytesBefore: number; bytesAfter: number };
      expect(out.replaced).toEqual([layers[0], 'persistence.4+from+2.cpio.zst', layers[4]]);
      expect(layersIn(images)).toEqual([out.layer]);
      expect(out.layer).toBe('persistence.5+from+1.cpio.zst');
      expect(readManifest(path.join(images, out.layer)).kind).toBe('layer');
      expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);
      expect(out.bytesAfter).toBeLessThanOrEqual(out.bytesBefore);
      expect(fs.readdirSync(images).filter((n) => n.startsWith('.'))).toEqual([]);
      expect(fs.readdirSync(WORKBASE)).toEqual([]); // its tmpfs is unmounted and removed
    },
    300_000,
  );
});

describe('below the range: only what it reaches gives the layer the whole base gives', () => {
  /** the layer's data (decompressed) and its manifest without its creation time, as one string */
  const content = (file: string) => {
    const data = spawnSync('zstd', ['-dcq', file]).stdout;
    const m = readManifest(file);
    return JSON.stringify({ ...m, created: '', data: crypto.createHash('sha256').update(data).digest('hex') });
  };
  /** Both ways, for the whole stack and for 2..4: the same layer. */
  async function bothWays(dir: string, pristine: string): Promise<void> {
    const unpacker = buildUnpacker({ cacheDir: path.join(WORK, 'unpacker') }).path;
    expect(unpacker).not.toBeNull();
    for (const range of [undefined, '2..4']) {
      const layers: string[] = [];
      for (const wholeBase of [false, true]) {
        const images = path.join(dir, `images-${range ?? 'all'}-${wholeBase}`);
        fs.mkdirSync(images);
        for (const n of fs.readdirSync(pristine)) fs.copyFileSync(path.join(pristine, n), path.join(images, n));
        const r = await compactLayers({
          imagesDir: images,
          range,
          unpacker,
          wholeBase,
          reporter: createReporter({ quiet: true }),
          workBase: WORKBASE,
        });
        layers.push(content(path.join(images, r.layer!)));
      }
      expect(layers[0]).toBe(layers[1]);
    }
  }

  test('a stack that deletes, replaces, re-creates and relinks what the base has', async () => {
    const dir = path.join(WORK, 'touched');
    const src = path.join(dir, 'base');
    const pristine = path.join(dir, 'pristine');
    for (let i = 0; i < 10; i++) mkfile(src, `srv/base/f${i}`, `base ${i}\n`.repeat(100));
    for (const d of ['dir1', 'dir2']) for (const f of ['a', 'b']) mkfile(src, `srv/${d}/${f}`, `${d}/${f}\n`);
    mkfile(src, 'etc/x', 'x\n');
    setxattr(src, 'etc/x', 'user.mkma', 'base');
    mkfile(src, 'usr/h1', 'linked\n');
    mkhardlink(src, 'usr/h1', 'usr/h2');
    mksymlink(src, 'lnk', 'srv');
    fs.mkdirSync(pristine, { recursive: true });
    await packTree(src, path.join(pristine, 'base.cpio.zst'), { kind: 'base', level: 3, shardBytes: 1024 });
    const layers: Array<{ upper: (u: string) => void; deleted?: string[]; opaque?: string[] }> = [
      { upper: (u) => mkfile(u, 'srv/new1', 'new\n'), deleted: ['srv/base/f1', 'srv/dir1'] },
      {
        upper: (u) => (mkfile(u, 'srv/dir2/c', 'c\n'), mkfile(u, 'srv/base/f2', 'base 2\n'.repeat(100), { mode: 0o600 })),
        opaque: ['srv/dir2'],
      },
      {
        upper: (u) => (mkfile(u, 'etc/y', 'y\n'), mkfile(u, 'etc/x', 'x\n'), setxattr(u, 'etc/x', 'user.mkma', 'layer')),
        deleted: ['lnk'],
      },
      { upper: (u) => mkfile(u, 'srv/base/f1', 'again\n'), deleted: ['srv/new1'] },
      { upper: (u) => mkfile(u, 'usr/h1', 'unlinked\n'), deleted: ['srv/base/f3'] },
    ];
    for (let l = 1; l <= layers.length; l++) {
      const name = layerName(String(l));
      await writeFixtureLayer(path.join(pristine, name), { name, ...layers[l - 1] }, dir);
    }
    await bothWays(dir, pristine);
  }, 300_000);

  test.each([3000, 3001, 3002, 3003])(
    'random stack, seed %i',
    async (seed) => {
      const dir = path.join(WORK, `touched-${seed}`);
      await bothWays(dir, await randomStack(seed, dir, 5));
    },
    300_000,
  );
});

describe('5 layers, unpacked with mkma unpack before and after', () => {
  test('identical trees, and the compacted layer is no bigger than the 5 together', async () => {
    const dir = path.join(WORK, 'five');
    const images = await randomStack(77, dir, 5);
    const layers = layersIn(images);
    const sum = layers.reduce((n, l) => n + fs.statSync(path.join(images, l)).size, 0);
    const unpack = (into: string) => {
      const r = cli(['unpack', '--images', images, '--into', into, '-q']);
      expect(r.status).toBe(0);
      return describeTree(into);
    };
    const before = unpack(path.join(dir, 'before'));
    expect(cli(['layers', 'compact', '--path', images, '-q']).status).toBe(0);
    const [one] = layersIn(images);
    expect(fs.statSync(path.join(images, one)).size).toBeLessThanOrEqual(sum);
    expect(unpack(path.join(dir, 'after'))).toEqual(before);
  }, 300_000);
});

describe('the commit point', () => {
  test('superseded layers are ignored by every lister, and removed by the next compaction', async () => {
    const dir = path.join(WORK, 'commit');
    const images = await randomStack(31, dir, 4);
    const layers = layersIn(images);
    const before = await treeOf(images, path.join(dir, 'tree'));
    const keep = path.join(dir, 'keep');
    fs.mkdirSync(keep);
    for (const l of layers) fs.copyFileSync(path.join(images, l), path.join(keep, l));
    expect(cli(['layers', 'compact', '1..3', '--path', images, '-q']).status).toBe(0);
    // as if killed right after the commit: the old layers are still there
    for (const l of layers.slice(0, 3)) fs.copyFileSync(path.join(keep, l), path.join(images, l));
    const listing = listImages(images);
    expect(listing.layers).toEqual(['persistence.3+from+1.cpio.zst', layers[3]]);
    expect(listing.ignored.map((i) => i.reason)).toEqual(Array(3).fill('superseded by persistence.3+from+1.cpio.zst'));
    expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);
    // the init's listing agrees (its sort_layers, under busybox)
    // the init's constants and layer code as generated (sort_layers reads each name's state too)
    const script = [layerFunctions(), 'warn() { echo "W: $*"; }', 'sort_layers "$1"'].join('\n');
    const sh = spawnSync('busybox', ['sh', '-c', script, 'sh', images], { encoding: 'utf8' });
    expect(sh.stdout.split('\n').filter(Boolean)).toEqual(['persistence.3+from+1.cpio.zst', layers[3]]);
    expect(sh.stderr.match(/^W: ignoring \S+: superseded by persistence\.3\+from\+1\.cpio\.zst/gm)).toHaveLength(3);
    // the next compaction removes them first
    const r = cli(['layers', 'compact', '--path', images]);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/removed persistence\.1\.cpio\.zst \(left by an interrupted compaction\)/);
    expect(layersIn(images)).toEqual(['persistence.4+from+1.cpio.zst']);
    expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);
  }, 300_000);

  test('--into-base folds every layer into the base', async () => {
    const dir = path.join(WORK, 'into-base');
    const images = await randomStack(41, dir, 3);
    const before = await treeOf(images, path.join(dir, 'tree'));
    const r = cli(['layers', 'compact', '--into-base', '--path', images, '--json']);
    expect(r.status).toBe(0);
    expect((JSON.parse(r.stdout) as { folded: string[] }).folded).toHaveLength(3);
    expect(layersIn(images)).toEqual([]);
    expect(readManifest(path.join(images, 'base.cpio.zst')).kind).toBe('base');
    expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);
  }, 300_000);

  test('a range of one layer is refused (exit 2)', async () => {
    const dir = path.join(WORK, 'one');
    const images = await randomStack(5, dir, 2);
    const r = cli(['layers', 'compact', '2..2', '--path', images]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/1 layer\(s\) in the range: nothing to compact/);
  }, 60_000);
});

describe('crash tests: SIGKILL at 10+ moments', () => {
  const dir = path.join(WORK, 'crash');
  const pristine = path.join(dir, 'pristine');
  const images = path.join(dir, 'images');
  let before: Record<string, string>;

  beforeAll(async () => {
    // a stack whose compaction takes a couple of seconds: ~5 MB base, 5 layers of ~1 MB each
    const src = path.join(dir, 'src');
    for (let i = 0; i < 24; i++) mkfile(src, `srv/base/f${i}`, crypto.randomBytes(160 << 10).toString('base64'));
    fs.mkdirSync(pristine, { recursive: true });
    await packTree(src, path.join(pristine, 'base.cpio.zst'), { kind: 'base', level: 3 });
    for (let l = 1; l <= 5; l++) {
      await writeFixtureLayer(
        path.join(pristine, layerName(String(l))),
        {
          name: layerName(String(l)),
          upper: (u) => {
            for (let i = 0; i < 5; i++) mkfile(u, `srv/base/f${l * 3 + i}`, crypto.randomBytes(160 << 10).toString('base64'));
            mkfile(u, `srv/l${l}/new`, `layer ${l}\n`);
          },
          deleted: l > 1 ? [`srv/l${l - 1}/new`, `srv/base/f${20 + l}`] : [],
          opaque: [],
        },
        dir,
      );
    }
    before = await treeOf(pristine, path.join(dir, 'tree'));
  }, 300_000);

  const reset = () => {
    fs.rmSync(images, { recursive: true, force: true });
    fs.mkdirSync(images);
    for (const n of fs.readdirSync(pristine)) fs.copyFileSync(path.join(pristine, n), path.join(images, n));
  };

  async function killAt(args: string[], delay: number): Promise<string> {
    reset();
    const child = spawn(process.execPath, [path.join(REPO, 'bin/mkma.js'), ...args], {
      stdio: 'ignore',
      env: { ...process.env, TMPDIR: WORKBASE },
    });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await new Promise((r) => setTimeout(r, delay));
    const seen = fs.readdirSync(images).filter((n) => n !== 'base.cpio.zst');
    child.kill('SIGKILL');
    const code = await exited;
    // what a SIGKILLed run leaves mounted stays: the next run must remove it (checked below)
    const leftMounts = mountsUnder(WORKBASE).length;
    expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);
    return `${delay} ms: ${code === 0 ? 'finished' : 'killed'}, saw ${JSON.stringify(seen.filter((n) => !isLayer(n) || n.includes('+')))}, ${leftMounts} mount(s) left`;
  }

  for (const [what, args] of [
    ['compact', ['layers', 'compact', '--path', images, '--level', '9']],
    ['--into-base', ['layers', 'compact', '--into-base', '--path', images, '--level', '9']],
  ] as const) {
    test(`${what}`, async () => {
      reset();
      const t = performance.now();
      const full = cli([...args]);
      const ms = performance.now() - t;
      expect(full.stderr).toMatch(/==> write: /); // progress, with its stages
      expect(full.stderr).not.toMatch(/warning/i);
      expect(full.status).toBe(0);
      expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);
      const seen: string[] = [];
      // a run killed under the test is faster than the timed one (which waits for node to start
      // and exit): kill within the first 80% of it, more times than needed
      const KILLS = 13;
      for (let i = 0; i < KILLS; i++) seen.push(await killAt([...args], Math.round(100 + (i * (ms * 0.8 - 100)) / (KILLS - 1))));
      // and the run after the last kill recovers: it removes what the kill left and completes
      // (or, when the killed run had committed, finds one layer: nothing to compact, exit 2);
      // the work areas (tmpfs, overlay) the killed runs left are removed by it, and it says so
      const left = fs.readdirSync(WORKBASE);
      expect(seen.some((s) => !s.endsWith(' 0 mount(s) left'))).toBe(true);
      const again = cli([...args, '-q']);
      expect([0, 2]).toContain(again.status);
      for (const l of left) expect(again.stderr).toContain(`removed ${path.join(WORKBASE, l)} (left by a killed mkma compact)`);
      expect(mountsUnder(WORKBASE)).toEqual([]);
      expect(fs.readdirSync(WORKBASE)).toEqual([]);
      expect(fs.readdirSync(images).filter((n) => n.startsWith('.'))).toEqual([]);
      expect(layersIn(images).length).toBeLessThanOrEqual(1);
      expect(await treeOf(images, path.join(dir, 'tree'))).toEqual(before);
      process.stderr.write(`${what}: full run ${ms.toFixed(0)} ms\n${seen.join('\n')}\n`);
      expect(seen.filter((s) => s.includes('killed')).length).toBeGreaterThanOrEqual(10);
    }, 900_000);
  }
});
