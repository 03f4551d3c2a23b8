// The conformance corpus (test/conformance/corpus.ts) through every implementation of
// docs/FORMAT.md, which must agree:
//   ts      format/apply.ts unpackImages (mkma unpack --extractor ts)
//   native  unpackImages driving mkma-unpack -X and -l (mkma unpack --extractor native)
//   init    the init's native layer code (`mkma-apply`, native variant) under busybox, with
//           mkma-unpack on PATH, as the initramfs has it
//   busybox the init's busybox variant (sandboxed busybox cpio, the shell's merge)
// Per case: the base refused or not, each layer applied or refused (for the case's reason),
// the same warnings, identical trees, and the directory the attacks aim at unchanged.
// Plus a property test: random layer stacks, written by the real writer, give identical trees
// through all four. Runs as root (chown, mknod, bind mounts).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { unpackImages } from '../../format/apply.js';
import { generateApplyScript } from '../../init/generate.js';
import { corpus, type Case, type TreeView } from '../conformance/corpus.js';
import { writeRawImage } from '../conformance/images.js';
import { randomStack } from '../conformance/random.js';
import { BUSYBOX, hostUnpacker, makeBusyboxBin } from '../fixtures/layers.js';
import { describeTree, readXattrs, treePath } from '../helpers/tree.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-conformance-'));
let UNPACKER = '';
let BIN = '';
let BIN_FALLBACK = '';
let APPLY_NATIVE = '';
let APPLY_BUSYBOX = '';

beforeAll(() => {
  UNPACKER = hostUnpacker();
  BIN = makeBusyboxBin(path.join(TMP, 'native'));
  fs.symlinkSync(UNPACKER, path.join(BIN, 'mkma-unpack'));
  BIN_FALLBACK = makeBusyboxBin(path.join(TMP, 'fallback'));
  APPLY_NATIVE = path.join(TMP, 'mkma-apply-native');
  APPLY_BUSYBOX = path.join(TMP, 'mkma-apply-busybox');
  fs.writeFileSync(APPLY_NATIVE, generateApplyScript('native'));
  fs.writeFileSync(APPLY_BUSYBOX, generateApplyScript('busybox'));
});
afterAll(() => {
  if (!process.env.MKMA_KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
});

type Side = 'ts' | 'native' | 'init' | 'busybox';
const SIDES: Side[] = ['ts', 'native', 'init', 'busybox'];

interface Outcome {
  /** null: the base unpacked; else why not */
  base: string | null;
  /** layer name → "applied" or the reason it was not */
  layers: Record<string, string>;
  /** layer name → its first warning */
  warnings: Record<string, string>;
  tree: string;
  log: string;
}

async function runSide(side: Side, images: string, parent: string): Promise<Outcome> {
  fs.mkdirSync(parent, { recursive: true });
  const tree = path.join(parent, 'tree');
  fs.mkdirSync(tree);
  const out: Outcome = { base: null, layers: {}, warnings: {}, tree, log: '' };
  if (side === 'ts' || side === 'native') {
    try {
      const r = await unpackImages(images, tree, undefined, side === 'native' ? UNPACKER : null);
      for (const l of r.layers) {
        const n = path.basename(l.file);
        out.layers[n] = l.applied ? 'applied' : (l.reason ?? '?');
        if (l.warnings.length) out.warnings[n] = l.warnings[0];
      }
      out.log = JSON.stringify(r);
    } catch (e) {
      out.base = (e as Error).message;
    }
    return out;
  }
  const r = spawnSync(BUSYBOX, ['sh', side === 'init' ? APPLY_NATIVE : APPLY_BUSYBOX, images, tree], {
    env: { PATH: side === 'init' ? BIN : BIN_FALLBACK, LC_ALL: 'C' },
    cwd: parent,
    maxBuffer: 64 << 20,
    timeout: 300_000,
  });
  out.log = r.stdout.toString('latin1') + r.stderr.toString('latin1');
  const fatal = /FATAL base: (.*)/.exec(out.log);
  if (fatal) out.base = fatal[1];
  for (const m of out.log.matchAll(/phase layer-applied (\S+) /g)) out.layers[m[1]] = 'applied';
  for (const m of out.log.matchAll(/LAYER SKIPPED (\S+): (.*)/g)) out.layers[m[1]] = m[2];
  for (const m of out.log.matchAll(/WARNING (persistence\.\S+): (.*)/g)) out.warnings[m[1]] ??= m[2];
  if (r.status !== 0 && r.status !== 3 && !fatal) out.base = `mkma-apply ended with ${r.status ?? r.signal}: ${out.log}`;
  return out;
}

function plantVictim(V: string): void {
  fs.mkdirSync(path.join(V, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(V, 'passwd'), 'victim\n');
  fs.writeFileSync(path.join(V, 'f'), 'victim f\n');
  fs.writeFileSync(path.join(V, 'sub', 'g'), 'victim g\n');
  fs.writeFileSync(path.join(V, 'file'), 'victim file\n', { mode: 0o644 });
}

function view(root: string): TreeView {
  const p = (rel: string) => treePath(root, rel);
  const lst = (rel: string) => {
    try {
      return fs.lstatSync(p(rel));
    } catch {
      return null;
    }
  };
  return {
    kind: (rel) => {
      const st = lst(rel);
      return !st ? null : st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
    },
    read: (rel) => fs.readFileSync(p(rel)).toString('latin1'),
    mode: (rel) => lst(rel)!.mode & 0o7777,
    mtime: (rel) => Math.floor(lst(rel)!.mtimeMs / 1000),
    list: (rel) => (fs.readdirSync(p(rel)) as string[]).sort(),
    xattr: (rel, name) => {
      const r = spawnSync('getfattr', ['-h', '--only-values', '-n', name, p(rel).toString('latin1')]);
      return r.status === 0 ? r.stdout.toString('latin1') : null;
    },
  };
}

/** describeTree without symlink owners (busybox cpio does not lchown). */
const noSymlinkOwners = (t: Record<string, string>) =>
  Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.replace(/^(symlink \d+) \d+:\d+/, '$1 ?:?')]));

function buildImages(c: Case, dir: string): string {
  const images = path.join(dir, 'images');
  fs.mkdirSync(images, { recursive: true });
  writeRawImage(path.join(images, 'base.cpio.zst'), c.base);
  for (const l of c.layers) {
    const f = path.join(images, l.name);
    if (l.image === 'fifo') execFileSync('mkfifo', [f]);
    else if (l.image === 'directory') fs.mkdirSync(f);
    else writeRawImage(f, l.image);
  }
  return images;
}

const CASES = corpus('/VICTIM');

describe.each(CASES.map((c) => [c.name, c] as const))('conformance %s', (name) => {
  const results = {} as Record<Side, Outcome>;
  let c: Case;
  let V = '';
  let victimBefore: Record<string, string> = {};
  beforeAll(async () => {
    const dir = path.join(TMP, name);
    V = path.join(dir, 'victim');
    c = corpus(V).find((x) => x.name === name)!;
    plantVictim(V);
    victimBefore = describeTree(V, { mtimes: 'files+dirs' });
    const images = buildImages(c, dir);
    for (const side of SIDES) results[side] = await runSide(side, images, path.join(dir, side));
  }, 600_000);

  test.each(SIDES)('%s: nothing outside the tree changed', (side) => {
    expect(describeTree(V, { mtimes: 'files+dirs' })).toEqual(victimBefore);
    const parent = path.dirname(results[side].tree);
    const beside = fs.readdirSync(parent).filter((n) => n !== 'tree');
    expect({ side, beside }).toEqual({ side, beside: [] });
  });

  test.each(SIDES)('%s: the outcome docs/FORMAT.md decides', (side) => {
    const o = results[side];
    if (side === 'busybox' && c.fallbackDiffers) return; // safety only, above
    if (c.baseRefused) {
      expect(o.base ?? 'unpacked').toMatch(c.baseRefused);
      return;
    }
    expect({ side, base: o.base }).toEqual({ side, base: null });
    for (const l of c.layers) {
      const got = o.layers[l.name];
      if (l.image === 'fifo' || l.image === 'directory')
        expect({ side, layer: l.name, got }).toEqual({ side, layer: l.name, got: undefined });
      else if (l.refused)
        expect(`${side} ${l.name}: ${got}`).toMatch(new RegExp(`^${side} ${l.name.replace(/\./g, '\\.')}: .*(${l.refused.source})`));
      else expect(`${side} ${l.name}: ${got}`).toBe(`${side} ${l.name}: applied`);
      if (l.warning) expect(`${side}: ${o.warnings[l.name]}`).toMatch(l.warning);
      else expect({ side, warning: o.warnings[l.name] }).toEqual({ side, warning: undefined });
    }
    c.check?.(view(o.tree));
  });

  test('identical trees (TypeScript, mkma-unpack, the init with mkma-unpack, the busybox fallback)', () => {
    if (c.baseRefused) return;
    const ref = describeTree(results.ts.tree);
    expect(describeTree(results.native.tree)).toEqual(ref);
    expect(describeTree(results.init.tree)).toEqual(ref);
    // directory mtimes: the same from both C drivers and TypeScript (busybox cpio does not
    // restore them: docs/FORMAT.md)
    // (the root's mtime is the time of the last change in it: a layer's "." does not set it)
    const withDirMtimes = (t: string) => {
      const d = describeTree(t, { mtimes: 'files+dirs' });
      d['"."'] = d['"."'].replace(/ mtime=\d+/, '');
      return d;
    };
    expect(withDirMtimes(results.native.tree)).toEqual(withDirMtimes(results.ts.tree));
    if (!c.fallbackDiffers) expect(noSymlinkOwners(describeTree(results.busybox.tree))).toEqual(noSymlinkOwners(ref));
  });
});

describe('property: random layer stacks give identical trees through all four', () => {
  const SEEDS = Array.from({ length: Number(process.env.MKMA_PROPERTY_CASES ?? 12) }, (_, i) => 1000 + i);
  test.each(SEEDS)(
    'seed %i',
    async (seed) => {
      const dir = path.join(TMP, `random-${seed}`);
      const images = await randomStack(seed, dir);
      const trees: Record<string, Record<string, string>> = {};
      const logs: string[] = [];
      for (const side of SIDES) {
        const o = await runSide(side, images, path.join(dir, side));
        expect({ side, base: o.base, skipped: Object.values(o.layers).filter((v) => v !== 'applied') }).toEqual({
          side,
          base: null,
          skipped: [],
        });
        trees[side] = noSymlinkOwners(describeTree(o.tree));
        logs.push(o.log);
      }
      expect(trees.native).toEqual(trees.ts);
      expect(trees.init).toEqual(trees.ts);
      expect(trees.busybox).toEqual(trees.ts);
      expect(readXattrs(path.join(dir, 'ts', 'tree'), ['.'])).toBeDefined();
    },
    300_000,
  );
});
