// Figure 9: layers have a life (issue 12): what `mkma layers compact` buys and costs.
// (a) Boot apply of figure 5's 20 small layers after `mkma layers compact` (one compacted layer)
//     against the same content saved as one layer: target ≤ 1.02× (a compacted layer must boot
//     as fast as a layer written once). Measured with figure 5's harness: the init's own layer
//     code, `mkma-apply --layers-only` onto the unpacked base, each run in a fresh tmpfs.
// (b) The time to compact the 20 layers (persist/compact.ts, in process: the base unpacked into
//     a private tmpfs as far as the 20 layers reach (mkma-unpack -t), the 20 layers applied onto
//     an overlay of it, the upperdir scanned and written at the level the layers record) against
//     `mkma unpack` of the same images (format/apply.ts with mkma-unpack, in process: the whole
//     base, then the 20 layers): target ≤ 1.5×. Each compaction works on a fresh copy. Both
//     sides read the same files; the reference writes nothing compressed, so the compacted
//     layer's level (3, as the base and the layers were written) is the only level in it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildUnpacker } from '../builder/unpacker.js';
import { unpackImages } from '../format/apply.js';
import { createReporter } from '../lib/progress.js';
import { compactLayers } from '../persist/compact.js';
import { layerApplyHarness, layerBytes } from './fig5-layers.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, time, values, type Sample } from './stats.js';
import { CACHE, fmtMs, HarnessError, rmrf, withTmpfs } from './util.js';

const quiet = createReporter({ quiet: true });

/** A copy of an images directory (regular files) in `into`. */
function copyImages(from: string, into: string): void {
  fs.mkdirSync(into, { recursive: true });
  for (const n of fs.readdirSync(from)) {
    const p = path.join(from, n);
    if (fs.lstatSync(p).isFile()) fs.copyFileSync(p, path.join(into, n));
  }
}

export const figure: Figure = {
  id: 9,
  title: 'layer lifecycle: 20 layers compacted',
  async run(inp: Inputs): Promise<Row[]> {
    const { images20, images1, compare, unpacker: extractor } = await layerApplyHarness(inp);
    const unpacker = buildUnpacker({ cacheDir: path.join(CACHE, 'unpacker') }).path;
    const scratch = inp.scratch('lifecycle');

    // (a) the 20 layers compacted once (kept for the apply runs), against figure 5's one layer
    const compacted = path.join(CACHE, `compacted20${inp.o.quick ? '-quick' : ''}`);
    rmrf(compacted);
    copyImages(images20, compacted);
    const c = await withTmpfs(scratch, (t) => compactLayers({ imagesDir: compacted, unpacker, reporter: quiet, workBase: t }), '4G');
    if (!c.layer) throw new HarnessError('compaction of the 20 layers wrote no layer');
    const runs = inp.runs(5);
    const { a: lc, b: l1, trees } = await compare(runs, { name: 'compacted', images: compacted }, { name: '1 layer', images: images1 });
    const layerKiB = (dir: string) => layerBytes(dir) / 1024;

    // (b) compaction against mkma unpack of the same 20 layers, interleaved
    const compactRun = () =>
      withTmpfs(
        scratch,
        async (t): Promise<Sample> => {
          const dir = path.join(t, 'images');
          copyImages(images20, dir);
          const work = path.join(t, 'work');
          fs.mkdirSync(work);
          const { ms } = await time(() => compactLayers({ imagesDir: dir, unpacker, reporter: quiet, workBase: work }));
          return { value: ms };
        },
        '4G',
      );
    const unpackRun = () =>
      withTmpfs(
        scratch,
        async (t): Promise<Sample> => {
          const { ms, result } = await time(() => unpackImages(images20, path.join(t, 'tree'), undefined, unpacker));
          if (result.layers.some((l) => !l.applied)) throw new HarnessError('mkma unpack skipped a layer of the 20');
          return { value: ms };
        },
        '4G',
      );
    const [cp, up] = await interleave<Sample>(
      [
        { name: 'compact 20', run: compactRun },
        { name: 'unpack 20', run: unpackRun },
      ],
      { runs, warmup: inp.warmup, label: 'compact', fmt: fmtMs },
    );
    const tool = unpacker ? 'mkma-unpack' : 'TypeScript apply (mkma-unpack not built)';
    return [
      ratioRow({
        figure: 9,
        id: '9.compacted-apply',
        what: 'boot apply: 20 layers after mkma layers compact vs 1 layer',
        unit: 'ms',
        mkma: median(values(lc)),
        reference: median(values(l1)),
        target: 1.02,
        referenceLabel: "the same content saved as one layer (figure 5's: mkma-apply --layers-only, the init's apply_layers)",
        note:
          `${trees}; ` +
          `${c.entries} entries, ${layerKiB(compacted).toFixed(0)} KiB compacted (zstd level ${c.level}) vs ${layerKiB(images1).toFixed(0)} KiB ` +
          `(the 20 layers: ${layerKiB(images20).toFixed(0)} KiB); ` +
          `extractor: ${extractor()}`,
        samples: { mkma: values(lc), reference: values(l1) },
      }),
      ratioRow({
        figure: 9,
        id: '9.compact-time',
        what: 'mkma layers compact of 20 layers vs mkma unpack of them',
        unit: 'ms',
        mkma: median(values(cp)),
        reference: median(values(up)),
        target: 1.5,
        referenceLabel: 'mkma unpack of the same base + 20 layers (format/apply.ts, in process)',
        note: `both in process, into a tmpfs; compaction: the base as far as the layers reach (mkma-unpack -t), written at zstd level ${c.level} (the layers'); ${tool}`,
        samples: { mkma: values(cp), reference: values(up) },
      }),
    ];
  },
};
