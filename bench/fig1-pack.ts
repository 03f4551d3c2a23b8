// Figure 1: packing the base image.
// mkma's packTree (baseExclude, zstd level 3: exactly how `mkma build` packs base.cpio.zst)
// against the classic one-liner `find . -xdev -print0 | cpio -o --null -H newc | zstd -T0 -3`
// on the same root filesystem: same format (newc + zstd), same level, all cores for both.
// mkma's extras (independent zstd shards so the boot can extract in parallel, the manifest,
// xattrs, sorted deterministic order) must cost neither time (≤ 1.0×) nor size (≤ 1.02×).
// Both write into a tmpfs, so the disk (and mkma's fsync) is not what is measured.
// Memory: the packing Node process's peak RSS (VmHWM, in a child of its own) on the tree and
// on twice and four times the tree: streaming must keep it ≤ 256 MB and flat (issue 14: 2× and
// 4× the tree ≤ 1.05× the memory of 1×). The child runs with the V8 flags of bin/mkma.js, as
// `mkma build` and `mkma persist` do.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { baseExclude } from '../builder/base.js';
import { packTree } from '../format/pack.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, values, type Sample } from './stats.js';
import { bashTimed, fileSize, fmtMs, HarnessError, MKMA_BIN, mountTmpfs, REPO, rmrf, runTimed, shQuote } from './util.js';

interface ChildResult {
  ms: number;
  hwmKiB: number;
  entries: number;
  fileBytes: number;
}

/** The V8 flags of the `mkma` command (bin/mkma.js's `#!/usr/bin/env -S node FLAGS` line). */
export function cliNodeFlags(): string[] {
  const shebang = fs.readFileSync(MKMA_BIN, 'utf8').split('\n')[0];
  const m = /^#!\/usr\/bin\/env -S node(.*)$/.exec(shebang);
  return m ? m[1].trim().split(/\s+/).filter(Boolean) : [];
}

async function packInChild(root: string, out: string): Promise<ChildResult> {
  // run as the CLI runs (same V8 flags), alone in its process
  const r = await runTimed('node', [...cliNodeFlags(), path.join(REPO, 'dist', 'bench', 'pack-child.js'), root, out]);
  rmrf(out);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as ChildResult;
  } catch {
    throw new HarnessError(`pack-child printed no result: ${r.stdout.slice(-500)} ${r.stderr.slice(-500)}`);
  }
}

export const figure: Figure = {
  id: 1,
  title: 'pack the base image',
  async run(inp: Inputs): Promise<Row[]> {
    const root = await inp.rootfs();
    const twice = await inp.rootfs2x();
    const four = await inp.rootfs4x();
    const scratch = inp.scratch('pack');
    const unmount = mountTmpfs(scratch, '4G');
    try {
      const mkOut = path.join(scratch, 'mkma.cpio.zst');
      const refOut = path.join(scratch, 'ref.cpio.zst');
      const runs = inp.runs(5);
      const [mk, ref] = await interleave<Sample & { bytes: number }>(
        [
          {
            name: 'mkma packTree',
            run: async () => {
              rmrf(mkOut);
              const t0 = performance.now();
              await packTree(root, mkOut, { kind: 'base', level: 3, exclude: baseExclude });
              const value = performance.now() - t0;
              const bytes = fileSize(mkOut);
              rmrf(mkOut);
              return { value, bytes };
            },
          },
          {
            name: 'find|cpio|zstd',
            run: async () => {
              rmrf(refOut);
              const r = await bashTimed(
                `cd ${shQuote(root)} && find . -xdev -print0 | cpio -o --null -H newc --quiet | zstd -T0 -3 -q > ${shQuote(refOut)}`,
              );
              const bytes = fileSize(refOut);
              rmrf(refOut);
              return { value: r.ms, bytes };
            },
          },
        ],
        { runs, warmup: inp.warmup, label: 'pack', fmt: fmtMs },
      );

      // Memory, each in its own process; the three trees alternate too.
      const memRuns = inp.runs(3);
      const packed = (name: string, tree: string) => ({
        name,
        run: async () => {
          const c = await packInChild(tree, mkOut);
          return { value: c.hwmKiB, hwm: c.hwmKiB, entries: c.entries };
        },
      });
      const [one, two, fourfold] = await interleave<Sample & { hwm: number; entries: number }>(
        [packed('pack rootfs (child)', root), packed('pack 2× rootfs (child)', twice), packed('pack 4× rootfs (child)', four)],
        { runs: memRuns, label: 'peak RSS KiB' },
      );

      const rssOne = median(values(one));
      return [
        ratioRow({
          figure: 1,
          id: '1.pack-time',
          what: 'pack base, level 3 (time)',
          unit: 'ms',
          mkma: median(values(mk)),
          reference: median(values(ref)),
          target: 1.0,
          referenceLabel: 'find . -xdev -print0 | cpio -o --null -H newc | zstd -T0 -3',
          samples: { mkma: values(mk), reference: values(ref) },
        }),
        ratioRow({
          figure: 1,
          id: '1.pack-size',
          what: 'pack base, level 3 (size)',
          unit: 'bytes',
          mkma: median(mk.map((s) => s.bytes)),
          reference: median(ref.map((s) => s.bytes)),
          target: 1.02,
          referenceLabel: "the same one-liner's output",
        }),
        ratioRow({
          figure: 1,
          id: '1.pack-rss',
          what: 'pack peak RSS (≤ 256 MB)',
          unit: 'KiB',
          mkma: rssOne,
          reference: 256 * 1024,
          target: 1.0,
          referenceLabel: 'the 256 MB budget (an absolute limit of the design, not a measurement)',
          note: `Node process VmHWM, median of ${memRuns}; zstd children not counted; ${one[0]?.entries ?? '?'} entries`,
          samples: { mkma: values(one) },
        }),
        ...(
          [
            [2, two],
            [4, fourfold],
          ] as const
        ).map(([n, runs]) =>
          ratioRow({
            figure: 1,
            id: `1.pack-rss-${n}x`,
            what: `pack peak RSS, ${n}× tree vs 1×`,
            unit: 'KiB',
            mkma: median(values(runs)),
            reference: rssOne,
            target: 1.05,
            referenceLabel: 'the same on the 1× tree (row 1.pack-rss)',
            note: `${n}× tree: ${runs[0]?.entries ?? '?'} entries (the rootfs + ${n - 1} real cop${n > 2 ? 'ies' : 'y'} under copy-N/)`,
            samples: { mkma: values(runs), reference: values(one) },
          }),
        ),
      ];
    } finally {
      unmount();
    }
  },
};
