// Figure 7: how cost grows with the work (issue 14). Each row is a slope: the time per entry at
// the larger size over the time per entry at the smaller one, measured in one run, interleaved;
// linear growth is 1.0, the target ≤ 1.1.
//   - scan: scanUpper in process (mkma-scan where it can be built) over generated upperdirs of
//     10k and 100k small-file entries (2k and 20k in --quick), against the root filesystem copy
//     as the lower tree; find -printf over the same trees as information (does the tree itself
//     scale);
//   - persist: `mkma persist --yes` (the CLI: scan, rules, layer written) over the same two.
// Not here yet (see docs/perf-research.md, "Figure 7"): pack and host unpack at 1×/2×/4×, the
// 1M-entry upperdir, boot apply with 1/20/100 layers, the TUI's time to first screen.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { scanHelper } from '../persist/scan-helper.js';
import { scanUpper } from '../persist/scan.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, type Sample } from './stats.js';
import { bashTimed, fmtMs, HarnessError, MKMA_BIN, mountTmpfs, rmrf, runTimed, shQuote } from './util.js';

/** ms per 1000 entries */
type PerK = Sample & { entries: number };
const perK = (ms: number, entries: number): PerK => ({ value: (ms / entries) * 1000, entries });
const fmtPerK = (v: number) => `${v.toFixed(2)} ms/1k entries`;

export const figure: Figure = {
  id: 7,
  title: 'growth: time per entry at 10× the entries over time per entry at 1×',
  async run(inp: Inputs): Promise<Row[]> {
    const lower = await inp.rootfs();
    const [nSmall, nBig] = inp.o.quick ? [2000, 20000] : [10000, 100000];
    const small = await inp.sizedUpper(nSmall);
    const big = await inp.sizedUpper(nBig);
    const runs = inp.runs(5);
    const walk = scanHelper().path ? 'mkma-scan' : `find walk (${scanHelper().reason})`;

    const scanOf = (u: { dir: string }) => async () => {
      const t0 = performance.now();
      const s = await scanUpper(u.dir, lower);
      return perK(performance.now() - t0, s.stats.entries);
    };
    const findOf = (u: { dir: string; entries: number }) => async () =>
      perK((await bashTimed(`find ${shQuote(u.dir)} -printf '%s\\n' > /dev/null`)).ms, u.entries);
    const [scanS, scanB, findS, findB] = await interleave<PerK>(
      [
        { name: `scan ${nSmall}`, run: scanOf(small) },
        { name: `scan ${nBig}`, run: scanOf(big) },
        { name: `find ${nSmall}`, run: findOf(small) },
        { name: `find ${nBig}`, run: findOf(big) },
      ],
      { runs, warmup: inp.warmup, label: 'growth', fmt: fmtPerK },
    );

    const scratch = inp.scratch('growth');
    const unmount = mountTmpfs(scratch, '4G');
    let persistS: PerK[];
    let persistB: PerK[];
    try {
      const env = { ...process.env };
      delete env.MKMA_COMPRESSION_LEVEL;
      const persistOf = (u: { dir: string; entries: number }) => async () => {
        const out = path.join(scratch, 'images');
        rmrf(out);
        fs.mkdirSync(out);
        const r = await runTimed(
          'node',
          [MKMA_BIN, 'persist', '--yes', '--json', '--level', '3', '--upper', u.dir, '--lower', lower, '--path', out],
          { env },
        );
        const saved = JSON.parse(r.stdout) as { saved: boolean };
        if (!saved.saved) throw new HarnessError(`mkma persist saved nothing: ${r.stdout.slice(0, 500)}`);
        rmrf(out);
        return perK(r.ms, u.entries);
      };
      [persistS, persistB] = await interleave<PerK>(
        [
          { name: `persist ${nSmall}`, run: persistOf(small) },
          { name: `persist ${nBig}`, run: persistOf(big) },
        ],
        { runs, warmup: inp.warmup, label: 'growth', fmt: fmtMs },
      );
    } finally {
      unmount();
    }

    const slope = (id: string, what: string, a: PerK[], b: PerK[], target: number | null, note: string) =>
      ratioRow({
        figure: 7,
        id,
        what: `${what}, ${b[0]?.entries ?? nBig} vs ${a[0]?.entries ?? nSmall} entries`,
        unit: 'ms',
        mkma: median(b.map((s) => s.value)),
        reference: median(a.map((s) => s.value)),
        target,
        referenceLabel: `ms per 1000 entries at ${a[0]?.entries ?? nSmall} entries`,
        note,
        samples: { mkma: b.map((s) => s.value), reference: a.map((s) => s.value) },
      });
    return [
      slope('7.scan-slope', 'scan: time per entry', scanS, scanB, 1.1, `scanUpper in process, ${walk}; values are ms per 1000 entries`),
      slope('7.find-slope', 'find -printf: time per entry', findS, findB, null, 'how the trees themselves scale (information)'),
      slope('7.persist-slope', 'persist: time per entry', persistS, persistB, 1.1, 'mkma persist --yes, the CLI in a child process'),
    ];
  },
};
