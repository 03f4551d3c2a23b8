// Figure 4: persisting.
// (a) `mkma persist --yes --upper U --lower L --path DIR` (the CLI, in a child process: scan,
//     rules, classification against the lower tree, xattrs, whiteouts → manifest, the layer
//     written atomically) against archiving the same upperdir the naive way:
//     `cd U && find . | cpio -o -H newc | zstd -T0 -3`. Same format, same level: everything
//     mkma does on top must fit in the time the plain archive takes (≤ 1.0×).
// (b) Scanning an upperdir of 100k entries (20k in --quick) for the terminal UI: scanUpper, in
//     process (walk, every xattr, the lower-tree lookups: mkma-scan, persist/walk-native.ts,
//     where it can be built) against the cheapest possible walk of the same tree,
//     `find U -printf '%s\n'`: ≤ 2× (issue 14; it was 3× with the find + getfattr walk).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { scanUpper } from '../persist/scan.js';
import { scanHelper } from '../persist/scan-helper.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, values, type Sample } from './stats.js';
import { bashTimed, fileSize, fmtMs, HarnessError, MKMA_BIN, mountTmpfs, rmrf, runTimed, shQuote } from './util.js';

export const figure: Figure = {
  id: 4,
  title: 'persist the upperdir; scan for the TUI',
  async run(inp: Inputs): Promise<Row[]> {
    const upper = await inp.mainUpper();
    const lower = await inp.rootfs();
    const big = await inp.bigUpper();
    const scratch = inp.scratch('persist');
    const unmount = mountTmpfs(scratch, '4G');
    try {
      const outDir = path.join(scratch, 'mkma');
      const refOut = path.join(scratch, 'ref.cpio.zst');
      const runs = inp.runs(5);
      const env = { ...process.env };
      delete env.MKMA_COMPRESSION_LEVEL;
      const [mk, ref] = await interleave<Sample & { bytes: number }>(
        [
          {
            name: 'mkma persist',
            run: async () => {
              rmrf(outDir);
              fs.mkdirSync(outDir);
              const r = await runTimed(
                'node',
                [MKMA_BIN, 'persist', '--yes', '--json', '--level', '3', '--upper', upper, '--lower', lower, '--path', outDir],
                { env },
              );
              const saved = JSON.parse(r.stdout) as { saved: boolean; file?: string };
              if (!saved.saved || !saved.file) throw new HarnessError(`mkma persist saved nothing: ${r.stdout.slice(0, 500)}`);
              const bytes = fileSize(saved.file);
              rmrf(outDir);
              return { value: r.ms, bytes };
            },
          },
          {
            name: 'find|cpio|zstd',
            run: async () => {
              rmrf(refOut);
              const r = await bashTimed(`cd ${shQuote(upper)} && find . | cpio -o -H newc --quiet | zstd -T0 -3 -q > ${shQuote(refOut)}`);
              const bytes = fileSize(refOut);
              rmrf(refOut);
              return { value: r.ms, bytes };
            },
          },
        ],
        { runs, warmup: inp.warmup, label: 'persist', fmt: fmtMs },
      );

      const [scan, find] = await interleave<Sample & { entries: number }>(
        [
          {
            name: 'scanUpper',
            run: async () => {
              const t0 = performance.now();
              const s = await scanUpper(big.dir, lower);
              return { value: performance.now() - t0, entries: s.stats.entries };
            },
          },
          {
            name: "find -printf '%s\\n'",
            run: async () => {
              const r = await bashTimed(`find ${shQuote(big.dir)} -printf '%s\\n' > /dev/null`);
              return { value: r.ms, entries: big.entries };
            },
          },
        ],
        { runs, warmup: inp.warmup, label: 'scan', fmt: fmtMs },
      );

      return [
        ratioRow({
          figure: 4,
          id: '4.persist',
          what: 'persist upperdir (mkma persist --yes)',
          unit: 'ms',
          mkma: median(values(mk)),
          reference: median(values(ref)),
          target: 1.0,
          referenceLabel: 'cd U && find . | cpio -o -H newc | zstd -T0 -3',
          note: `the CLI in a child process (Node start-up included); layer ${(median(mk.map((s) => s.bytes)) / 2 ** 20).toFixed(1)} MiB, plain archive ${(median(ref.map((s) => s.bytes)) / 2 ** 20).toFixed(1)} MiB`,
          samples: { mkma: values(mk), reference: values(ref) },
        }),
        ratioRow({
          figure: 4,
          id: '4.scan',
          what: `scan upperdir, ${scan[0]?.entries ?? big.entries} entries`,
          unit: 'ms',
          mkma: median(values(scan)),
          reference: median(values(find)),
          target: 2.0,
          referenceLabel: "find U -printf '%s\\n' > /dev/null",
          note: `scanUpper in process (${scanHelper().path ? 'mkma-scan' : `find walk: ${scanHelper().reason}`}), against the root filesystem copy as the lower tree`,
          samples: { mkma: values(scan), reference: values(find) },
        }),
      ];
    } finally {
      unmount();
    }
  },
};
