// The init's native layer code (init/templates/layer-native.sh, the `mkma-apply` script it is
// generated into) under busybox, when mkma-unpack fails at boot: killed or crashed while a
// layer is extracted or merged, and trees deeper than names can be. Every layer gets a line —
// "LAYER SKIPPED NAME: reason" for those not (wholly) applied — no staging directory is
// left behind, and the layers after the failure are still applied, by a new run.
//
// The fault is injected by a test-only wrapper standing in for mkma-unpack on PATH: it runs
// the real binary and kills it (SIGKILL, or SIGSEGV for a crash) as soon as a given line of
// its output appears; nothing in an image, and nothing in the shipped binary, can do that.
// Runs as root.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { generateApplyScript } from '../../init/generate.js';
import { dir, file, writeRawImage, type RawEntry } from '../conformance/images.js';
import { BUSYBOX, hostUnpacker, makeBusyboxBin } from '../fixtures/layers.js';

const TMP = fs.mkdtempSync(path.join(tmpdir(), 'mkma-init-layers-'));
let UNPACKER = '';
let APPLY = '';

beforeAll(() => {
  UNPACKER = hostUnpacker();
  APPLY = path.join(TMP, 'mkma-apply');
  fs.writeFileSync(APPLY, generateApplyScript('native'));
});
afterAll(() => {
  // rm (fts, relative paths): a failed deep layer leaves nothing, but a test may
  if (!process.env.MKMA_KEEP_TMP) spawnSync('rm', ['-rf', '--', TMP]);
});

const L = (n: number) => `persistence.${n}.cpio.zst`;
const MANY = 20_000;
const many = (tag: string): RawEntry[] => [dir('many'), ...Array.from({ length: MANY }, (_, i) => file(`many/f${i}`, `${tag} ${i}\n`))];

/** base (with many/), L1 (small), L2 (rewrites every file of many/: a long extract and merge), L3 (small). */
function images(dirName: string): string {
  const images = path.join(TMP, dirName, 'images');
  fs.mkdirSync(images, { recursive: true });
  writeRawImage(path.join(images, 'base.cpio.zst'), {
    kind: 'base',
    shards: [[dir('.'), dir('etc'), file('etc/hostname', 'base\n'), ...many('base')]],
  });
  writeRawImage(path.join(images, L(1)), { kind: 'layer', shards: [[dir('.'), file('one', '1\n')]] });
  writeRawImage(path.join(images, L(2)), { kind: 'layer', shards: [[dir('.'), file('two', '2\n'), ...many('layer2')]] });
  writeRawImage(path.join(images, L(3)), { kind: 'layer', shards: [[dir('.'), file('three', '3\n')]] });
  return images;
}

/**
 * A bin directory whose mkma-unpack runs the real one and, the first time it is run with -l,
 * kills it with `signal` once its output has a line starting with `killAt`.
 */
function faultyBin(name: string, killAt: string, signal: 'KILL' | 'SEGV'): string {
  const bin = makeBusyboxBin(path.join(TMP, name));
  const once = path.join(TMP, name, 'fault-done');
  fs.writeFileSync(
    path.join(bin, 'mkma-unpack'),
    `#!${BUSYBOX} sh
# test-only fault injection (test/integration/init-layers.test.ts)
if [ "$1" != -l ] || [ -e '${once}' ]; then exec '${UNPACKER}' "$@"; fi
: >'${once}'
out='${TMP}/${name}/out'
'${UNPACKER}' "$@" >"$out" &
pid=$!
while ! grep -q '^${killAt}' "$out"; do
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.005
done
kill -${signal} "$pid" 2>/dev/null
wait "$pid"
st=$?
cat "$out"
exit "$st"
`,
    { mode: 0o755 },
  );
  return bin;
}

function apply(images: string, bin: string, tree: string) {
  fs.mkdirSync(tree, { recursive: true });
  const r = spawnSync(BUSYBOX, ['sh', APPLY, images, tree], { env: { PATH: bin, LC_ALL: 'C' }, maxBuffer: 64 << 20 });
  return { status: r.status, log: r.stdout.toString() + r.stderr.toString() };
}

const skipped = (log: string) => [...log.matchAll(/LAYER SKIPPED (\S+): (.*)/g)].map((m) => `${m[1]}: ${m[2]}`);
const applied = (log: string) => [...log.matchAll(/phase layer-applied (\S+) /g)].map((m) => m[1]);

describe('mkma-unpack -l killed or crashing at boot', () => {
  test('killed while extracting a layer (before its merge): that layer is not applied, the next ones are', () => {
    const tree = path.join(TMP, 'a', 'tree');
    const r = apply(images('a'), faultyBin('a-bin', `ok ${L(1)}`, 'KILL'), tree);
    expect(applied(r.log)).toEqual([L(1), L(3)]);
    expect(skipped(r.log)).toEqual([`${L(2)}: not applied: mkma-unpack was killed by signal 9 before applying it`]);
    expect(r.status).toBe(3);
    expect(fs.existsSync(path.join(tree, 'two'))).toBe(false);
    expect(fs.readFileSync(path.join(tree, 'many/f7'), 'utf8')).toBe('base 7\n');
    expect(fs.readFileSync(path.join(tree, 'three'), 'utf8')).toBe('3\n');
    // no staging directory left (tree.stage.N beside the tree)
    expect(fs.readdirSync(path.dirname(tree))).toEqual(['images', 'tree']);
  }, 300_000);

  test('crashing (SIGSEGV) while merging a layer: that layer is reported partly applied, the next ones are applied', () => {
    const tree = path.join(TMP, 'b', 'tree');
    const r = apply(images('b'), faultyBin('b-bin', `merge ${L(2)}`, 'SEGV'), tree);
    expect(applied(r.log)).toEqual([L(1), L(3)]);
    expect(skipped(r.log)).toEqual([
      `${L(2)}: PARTLY APPLIED, the system may be inconsistent: mkma-unpack was killed by signal 11 while merging it`,
    ]);
    expect(r.status).toBe(3);
    expect(fs.readFileSync(path.join(tree, 'three'), 'utf8')).toBe('3\n');
    expect(fs.readdirSync(path.dirname(tree))).toEqual(['images', 'tree']);
  }, 300_000);
});

describe('deep trees', () => {
  const levels = (n: number) => Array.from({ length: n }, () => 'd').join('/');
  const chain = (n: number): RawEntry[] => Array.from({ length: n }, (_, i) => dir(levels(i + 1)));

  test('1000 levels in the base and in a layer: applied', () => {
    const images = path.join(TMP, 'deep', 'images');
    fs.mkdirSync(images, { recursive: true });
    writeRawImage(path.join(images, 'base.cpio.zst'), {
      kind: 'base',
      shards: [[dir('.'), ...chain(1000), file(`${levels(1000)}/leaf`, 'base\n')]],
    });
    writeRawImage(path.join(images, L(1)), {
      kind: 'layer',
      shards: [[dir('.'), ...chain(1000), file(`${levels(1000)}/leaf`, 'layer\n')]],
    });
    const bin = makeBusyboxBin(path.join(TMP, 'deep-bin'));
    fs.symlinkSync(UNPACKER, path.join(bin, 'mkma-unpack'));
    const tree = path.join(TMP, 'deep', 'tree');
    const r = apply(images, bin, tree);
    expect({ status: r.status, applied: applied(r.log), skipped: skipped(r.log) }).toEqual({ status: 0, applied: [L(1)], skipped: [] });
    expect(fs.readFileSync(path.join(tree, levels(1000), 'leaf'), 'utf8')).toBe('layer\n');
  }, 300_000);

  test('a layer deeper than a name can be: LAYER SKIPPED with the reason', () => {
    const images = path.join(TMP, 'deeper', 'images');
    fs.mkdirSync(images, { recursive: true });
    writeRawImage(path.join(images, 'base.cpio.zst'), { kind: 'base', shards: [[dir('.'), file('etc', 'x')]] });
    writeRawImage(path.join(images, L(1)), { kind: 'layer', shards: [[dir('.'), ...chain(2100)]] });
    const bin = makeBusyboxBin(path.join(TMP, 'deeper-bin'));
    fs.symlinkSync(UNPACKER, path.join(bin, 'mkma-unpack'));
    const r = apply(images, bin, path.join(TMP, 'deeper', 'tree'));
    expect(skipped(r.log)).toEqual([expect.stringMatching(new RegExp(`^${L(1).replace(/\./g, '\\.')}: .*bad name size 4\\d\\d\\d`))]);
    expect(r.status).toBe(3);
    // the partly extracted staging directory (4 KiB of path below it) is gone
    expect(fs.readdirSync(path.join(TMP, 'deeper'))).toEqual(['images', 'tree']);
  }, 300_000);
});
