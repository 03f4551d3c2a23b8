// Random layer stacks for the property test (test/integration/conformance.test.ts): a base
// and a few layers, each an "upperdir" of random changes over what the layers before made
// (new, replaced and retyped files, directories and symlinks, hardlinks, xattrs, deletions
// and opaque directories), written by the real writer. Reproducible per seed.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { packTree } from '../../format/pack.js';
import { escapeXattrPath } from '../../format/manifest.js';
import { layerName, mkdir, mkfile, mkhardlink, mksymlink, writeLayer, type LayerDef } from '../fixtures/layers.js';

/** user.mkma on root/rel: through setfattr --restore, so that any byte of the name survives. */
function setxattr(root: string, rel: string, value: string): void {
  const dump = Buffer.from(`# file: ${escapeXattrPath(rel)}\nuser.mkma=0x${Buffer.from(value).toString('hex')}\n`, 'latin1');
  const r = spawnSync('setfattr', ['-h', '--restore=-'], { cwd: root, input: dump });
  if (r.status !== 0) throw new Error(`setfattr: ${r.stderr}`);
}

/** A small deterministic generator (mulberry32). */
export function rng(seed: number): { int: (n: number) => number; pick: <T>(a: T[]) => T } {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { int: (n) => Math.floor(next() * n), pick: (a) => a[Math.floor(next() * a.length)] };
}

const NAMES = ['a', 'b', 'etc', 'usr', 'x y', 'new\nline', 'back\\slash', '\xff\xfe', '.hidden', '-n', 'long-name-' + 'z'.repeat(40)];

type Kind = 'file' | 'dir' | 'symlink';

/** The merged view so far: path → kind ("" is the root). */
type Model = Map<string, Kind>;

const join = (a: string, b: string) => (a ? `${a}/${b}` : b);

function dirs(m: Model): string[] {
  return ['', ...[...m].filter(([, k]) => k === 'dir').map(([p]) => p)];
}

function dropBelow(m: Model, p: string): void {
  for (const k of [...m.keys()]) if (k === p || k.startsWith(p + '/')) m.delete(k);
}

/** Writes one random change into `upper` (and the model); returns removals for the manifest. */
function change(r: ReturnType<typeof rng>, m: Model, upper: string, touched: Set<string>, del: string[], opq: string[], n: number): void {
  const parent = r.pick(dirs(m));
  const name = r.pick(NAMES);
  const p = join(parent, name);
  // one change per path per layer, and nothing below a path this layer deletes
  if ([...touched].some((t) => t === p || p.startsWith(t + '/') || t.startsWith(p + '/'))) return;
  touched.add(p);
  const op = r.int(8);
  const mtime = 1_600_000_000 + r.int(1_000_000);
  if (op === 0 && m.has(p)) {
    del.push(p);
    dropBelow(m, p);
    return;
  }
  if (op === 1 && m.get(p) === 'dir') {
    opq.push(p);
    dropBelow(m, p);
    mkdir(upper, p, { mode: 0o750, mtime });
    m.set(p, 'dir');
    mkfile(upper, join(p, 'inside'), `opaque ${n}\n`, { mtime });
    m.set(join(p, 'inside'), 'file');
    return;
  }
  // the upper's copy of the parent chain (as overlayfs copies parents up)
  if (parent) mkdir(upper, parent, { mode: 0o755 });
  dropBelow(m, p);
  if (op <= 3) {
    mkfile(upper, p, `layer ${n} ${p}\n`.repeat(1 + r.int(50)), {
      mode: r.pick([0o644, 0o600, 0o755, 0o4755]),
      uid: r.pick([0, 1234]),
      mtime,
    });
    if (r.int(3) === 0) setxattr(upper, p, `v${n}`);
    m.set(p, 'file');
    if (r.int(4) === 0 && !touched.has(p + '.link')) {
      mkhardlink(upper, p, p + '.link');
      touched.add(p + '.link');
      m.set(p + '.link', 'file');
    }
  } else if (op <= 5) {
    mkdir(upper, p, { mode: r.pick([0o755, 0o700, 0o2775]), mtime });
    m.set(p, 'dir');
  } else {
    mksymlink(upper, p, r.pick(['a', '../etc', '/usr/bin/x', 'new\nline']), { mtime });
    m.set(p, 'symlink');
  }
}

/** Writes images/base.cpio.zst and a few random layers under dir; returns the images directory. */
export async function randomStack(seed: number, dir: string, layerCount?: number): Promise<string> {
  const r = rng(seed);
  const images = path.join(dir, 'images');
  const scratch = path.join(dir, 'scratch');
  fs.mkdirSync(images, { recursive: true });
  fs.mkdirSync(scratch, { recursive: true });
  const model: Model = new Map();
  const baseRoot = path.join(scratch, 'base');
  fs.mkdirSync(baseRoot);
  fs.chmodSync(baseRoot, 0o755);
  const touched = new Set<string>();
  for (let i = 0; i < 25; i++) change(r, model, baseRoot, touched, [], [], 0);
  await packTree(baseRoot, path.join(images, 'base.cpio.zst'), { kind: 'base', level: 3, shardBytes: 4096 });
  const drawn = 2 + r.int(4);
  const layers = layerCount ?? drawn;
  for (let l = 1; l <= layers; l++) {
    const del: string[] = [];
    const opq: string[] = [];
    const t = new Set<string>();
    const count = 3 + r.int(8);
    // the changes are decided against the model, written into this layer's upperdir
    const upper = path.join(scratch, `upper-${l}`);
    fs.mkdirSync(upper);
    fs.chmodSync(upper, 0o755);
    for (let i = 0; i < count; i++) change(r, model, upper, t, del, opq, l);
    const def: LayerDef = {
      name: layerName(String(l)),
      // cp -a: owners, modes, times, xattrs, hardlinks and symlinks as they are
      upper: (u) => {
        fs.rmSync(u, { recursive: true, force: true });
        if (spawnSync('cp', ['-a', '--', upper, u]).status !== 0) throw new Error(`cp -a ${upper} failed`);
      },
      deleted: del,
      opaque: opq,
    };
    await writeLayer(path.join(images, def.name), def, scratch);
  }
  return images;
}
