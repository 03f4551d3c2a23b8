// Figure 5: many layers.
// A machine persisted 20 times boots with 20 small layers; the same changes saved once would
// be one layer. The boot-time cost of applying layers must not grow much with their number:
// 20 layers ≤ 1.2× one layer of the same content. Measured with the init's own code on the
// host: generateApplyScript() (init/generate.ts) run as `busybox sh mkma-apply IMAGES TREE`
// with PATH = busybox applets + the host's zstd and setfattr (+ mkma-unpack when
// builder/unpacker.ts can build it), each run into a fresh tmpfs.
// The layers come from 20 small generated upperdirs (disjoint choices of lower paths), each
// written by persist's writer; the single layer from one upperdir made by the same 20
// generator passes in one overlay mount: the same set of files (checked on the first round).
// Measured: the layer part, `mkma-apply --layers-only` onto the already unpacked base (the
// init's sort_layers + apply_layers, a phase line per layer), timed by the harness.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildUnpacker } from '../builder/unpacker.js';
import { BASE_NAME } from '../format/names.js';
import { generateApplyScript } from '../init/generate.js';
import { PHASE_LINE_RE } from '../qemu/run.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, values, type Sample } from './stats.js';
import type { UpperSpec } from './upper-gen.js';
import { CACHE, fmtMs, HarnessError, log, rmrf, runTimed, sh, shQuote, withTmpfs } from './util.js';

const LAYERS = 20;

function layerSpec(i: number, quick: boolean): UpperSpec {
  const files = quick ? 25 : 50;
  return {
    seed: 100 + i,
    files,
    bytes: files * 2048,
    sizes: 'small',
    deleteFiles: 3,
    deleteDirs: i % 5 === 0 ? 1 : 0,
    replaceDirs: i % 5 === 2 ? 1 : 0,
    symlinks: 3,
    hardlinks: 1,
    chmods: 2,
    modify: 2,
    partition: { index: i, count: LAYERS },
  };
}

/** busybox applets, the host's zstd and setfattr, and mkma-unpack when it can be built. */
function makeBin(dir: string): { bin: string; busybox: string; unpacker: string } {
  const bin = path.join(dir, 'bin');
  rmrf(bin);
  fs.mkdirSync(bin, { recursive: true });
  const which = (t: string) => sh('sh', ['-c', `command -v ${t}`]).trim();
  const busybox = which('busybox');
  for (const a of sh(busybox, ['--list']).split('\n').filter(Boolean)) fs.symlinkSync(busybox, path.join(bin, a));
  for (const t of ['zstd', 'setfattr']) {
    rmrf(path.join(bin, t));
    fs.symlinkSync(which(t), path.join(bin, t));
  }
  const r = buildUnpacker({ cacheDir: path.join(CACHE, 'unpacker') });
  let unpacker: string;
  if (r.path) {
    fs.symlinkSync(r.path, path.join(bin, 'mkma-unpack'));
    unpacker = 'mkma-unpack';
  } else {
    unpacker = `no mkma-unpack: ${r.reason ?? 'not built'}`;
  }
  return { bin, busybox, unpacker };
}

export interface ApplySample extends Sample {
  /** layer-applied phase lines printed */
  applied: number;
  digest?: string;
}

export interface ApplyContender {
  name: string;
  images: string;
}

export interface ApplyComparison {
  a: ApplySample[];
  b: ApplySample[];
  /** "trees identical", or both digests: the first round of each contender digests its tree */
  trees: string;
}

/** Bytes of an images directory's layers (the base left out). */
export function layerBytes(dir: string): number {
  return fs
    .readdirSync(dir)
    .filter((n) => n !== BASE_NAME)
    .reduce((a, n) => a + fs.statSync(path.join(dir, n)).size, 0);
}

/**
 * The inputs of figure 5 (20 small layers, and the same content as one layer) and its timed
 * run of the init's layer code onto the unpacked base; figure 9 measures compacted layers with it.
 */
export async function layerApplyHarness(inp: Inputs): Promise<{
  images20: string;
  images1: string;
  apply: (images: string, check: boolean) => Promise<ApplySample>;
  compare: (runs: number, a: ApplyContender, b: ApplyContender) => Promise<ApplyComparison>;
  /** what applied the layers: "mkma-unpack", or why not */
  unpacker: () => string;
}> {
  const q = inp.o.quick;
  const specs = Array.from({ length: LAYERS }, (_, i) => layerSpec(i, q));
  const uppers: string[] = [];
  for (let i = 0; i < LAYERS; i++) uppers.push(await inp.upper(`layers${q ? '-quick' : ''}/u${String(i).padStart(2, '0')}`, [specs[i]]));
  const merged = await inp.upper(`layers${q ? '-quick' : ''}/merged`, specs);
  const images20 = await inp.imagesDir(`layers20${q ? '-quick' : ''}`, uppers, `20 ${JSON.stringify(specs)}`);
  const images1 = await inp.imagesDir(`layers1${q ? '-quick' : ''}`, [merged], `1 ${JSON.stringify(specs)}`);
  const imagesBase = await inp.imagesDir('base-only', [], 'base');

  const work = path.join(CACHE, 'apply');
  fs.mkdirSync(work, { recursive: true });
  const { bin, busybox, unpacker: built } = makeBin(work);
  let unpacker = built;
  // the init's layer code of the variant a build would pick: native with mkma-unpack
  const scripts = { native: path.join(work, 'mkma-apply'), busybox: path.join(work, 'mkma-apply-busybox') };
  fs.writeFileSync(scripts.native, generateApplyScript('native'), { mode: 0o755 });
  fs.writeFileSync(scripts.busybox, generateApplyScript('busybox'), { mode: 0o755 });
  const scratch = inp.scratch('apply');

  // One run: the base unpacked into a fresh tmpfs (not timed), then the layers applied by
  // the init's own code, `mkma-apply --layers-only` (sort_layers + apply_layers + a phase
  // line per layer): timed as a whole by the harness, with millisecond resolution (the
  // phase lines' uptime has 10 ms, as much as one small layer costs).
  const apply = (images: string, check: boolean) =>
    withTmpfs(
      scratch,
      async (t): Promise<ApplySample> => {
        const script = unpacker === 'mkma-unpack' ? scripts.native : scripts.busybox;
        const tree = path.join(t, 'tree');
        fs.mkdirSync(tree);
        await runTimed(busybox, ['sh', script, imagesBase, tree], { env: { PATH: bin, LC_ALL: 'C' }, cwd: t });
        const r = await runTimed(busybox, ['sh', script, '--layers-only', images, tree], {
          env: { PATH: bin, LC_ALL: 'C' },
          cwd: t,
          okCodes: [0, 3],
        });
        if (r.code === 3)
          throw new HarnessError(
            `mkma-apply skipped a layer: ${(r.stdout + r.stderr)
              .split('\n')
              .filter((l) => /SKIPPED/.test(l))
              .join('; ')}`,
          );
        const applied = r.stdout.split('\n').filter((l) => PHASE_LINE_RE.exec(l)?.[2] === 'layer-applied').length;
        const digest = check
          ? sh('bash', [
              '-c',
              `set -o pipefail; cd ${shQuote(tree)} && find . -printf '%P %y %s %m %U %G %l\\n' | LC_ALL=C sort | sha256sum`,
            ]).split(' ')[0]
          : undefined;
        return { value: r.ms, applied, digest };
      },
      '4G',
    );

  // a broken mkma-unpack is reported in the note, and the figure measured without it
  if (unpacker === 'mkma-unpack') {
    try {
      await apply(images1, false);
    } catch (e) {
      log(`  mkma-unpack failed (${(e as Error).message.split('\n')[0]}); measuring without it`);
      rmrf(path.join(bin, 'mkma-unpack'));
      unpacker = `mkma-unpack was built but failed, not used: ${(e as Error).message.split('\n')[0].slice(0, 200)}`;
    }
  }

  // two images directories applied in interleaved runs, and whether they gave the same tree
  const compare = async (runs: number, a: ApplyContender, b: ApplyContender): Promise<ApplyComparison> => {
    const [sa, sb] = await interleave<ApplySample>(
      [
        { name: a.name, run: (round) => apply(a.images, round === 0) },
        { name: b.name, run: (round) => apply(b.images, round === 0) },
      ],
      { runs, warmup: inp.warmup, label: 'apply', fmt: fmtMs },
    );
    const da = sa.find((x) => x.digest)?.digest;
    const db = sb.find((x) => x.digest)?.digest;
    const trees = da && db && da === db ? 'trees identical' : `TREES DIFFER (${da?.slice(0, 12)} vs ${db?.slice(0, 12)})`;
    return { a: sa, b: sb, trees };
  };

  return { images20, images1, apply, compare, unpacker: () => unpacker };
}

export const figure: Figure = {
  id: 5,
  title: '20 small layers vs one',
  async run(inp: Inputs): Promise<Row[]> {
    const { images20, images1, compare, unpacker: extractor } = await layerApplyHarness(inp);
    const unpacker = extractor();
    const {
      a: l20,
      b: l1,
      trees,
    } = await compare(inp.runs(5), { name: `${LAYERS} layers`, images: images20 }, { name: '1 merged layer', images: images1 });
    const applied = `${l20[0]?.applied ?? '?'} and ${l1[0]?.applied ?? '?'} layer-applied lines`;
    return [
      ratioRow({
        figure: 5,
        id: '5.layers',
        what: `boot apply: ${LAYERS} layers vs 1 (layer part)`,
        unit: 'ms',
        mkma: median(values(l20)),
        reference: median(values(l1)),
        target: 1.2,
        referenceLabel: "the same content as one layer (mkma-apply --layers-only onto the unpacked base: the init's apply_layers)",
        note:
          `${trees}; ${applied}; ` +
          `${(layerBytes(images20) / 1024).toFixed(0)} KiB in ${LAYERS} layers vs ${(layerBytes(images1) / 1024).toFixed(0)} KiB; extractor: ${unpacker}`,
        samples: { mkma: values(l20), reference: values(l1) },
      }),
    ];
  },
};
