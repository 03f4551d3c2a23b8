// Figure 2: unpacking on the host.
// `mkma unpack --images DIR --into T` (the CLI, in a child process: base, then every layer
// with the overlay rules: deletions, opaque directories, xattrs) against what anyone would
// type without mkma: `zstd -dc base | cpio -idm`, then the same (with -u, so a layer's newer
// copy replaces the file) for each layer in order. The reference does less (it ignores
// deletions, replaced directories and xattrs), so mkma matching it (≤ 1.0×) means the rules
// cost nothing noticeable. mkma unpack extracts with mkma-unpack when it can be built (as the
// initramfs does), else with the TypeScript reader; the note says which. Images: base + three layers written by persist's writer from
// generated upperdirs (the main one and two at a fifth of its size). Each run unpacks into a
// freshly mounted tmpfs.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BASE_NAME, sortLayerNames } from '../format/names.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, values, type Sample } from './stats.js';
import { buildUnpacker } from '../builder/unpacker.js';
import { bashTimed, CACHE, fmtMs, MKMA_BIN, runTimed, shQuote, withTmpfs } from './util.js';

export const figure: Figure = {
  id: 2,
  title: 'unpack base + layers on the host',
  async run(inp: Inputs): Promise<Row[]> {
    const main = await inp.mainUpper();
    const small1 = await inp.upper(inp.o.quick ? 'small2-quick' : 'small2', [inp.mainSpec(2, 0.2)]);
    const small2 = await inp.upper(inp.o.quick ? 'small3-quick' : 'small3', [inp.mainSpec(3, 0.2)]);
    const images = await inp.imagesDir(inp.o.quick ? 'unpack-quick' : 'unpack', [main, small1, small2], 'main+small2+small3');
    const layers = sortLayerNames(fs.readdirSync(images));
    const scratch = inp.scratch('unpack');
    const runs = inp.runs(5);

    const refScript = (into: string) =>
      [
        `cd ${shQuote(into)}`,
        `zstd -q -dc ${shQuote(path.join(images, BASE_NAME))} | cpio -idm --quiet`,
        ...layers.map((l) => `zstd -q -dc ${shQuote(path.join(images, l))} | cpio -idmu --quiet`),
      ].join(' && ');

    // mkma unpack uses mkma-unpack (the initramfs' extractor) when it can be built: build it
    // into the bench cache before timing, so that no run pays for the compiler.
    const unpackerCache = path.join(CACHE, 'unpacker');
    const built = buildUnpacker({ cacheDir: unpackerCache });
    const extractor = built.path ? 'mkma-unpack (native)' : `TypeScript (mkma-unpack not built: ${built.reason})`;
    const env = { ...process.env, MKMA_CACHE_DIR: unpackerCache };
    const [mk, ref] = await interleave<Sample>(
      [
        {
          name: 'mkma unpack',
          run: () =>
            withTmpfs(
              scratch,
              async (t) => {
                const into = path.join(t, 'tree');
                const r = await runTimed('node', [MKMA_BIN, 'unpack', '--images', images, '--into', into], { env });
                return { value: r.ms };
              },
              '4G',
            ),
        },
        {
          name: 'zstd|cpio ×4',
          run: () =>
            withTmpfs(
              scratch,
              async (t) => {
                const into = path.join(t, 'tree');
                fs.mkdirSync(into);
                const r = await bashTimed(refScript(into));
                return { value: r.ms };
              },
              '4G',
            ),
        },
      ],
      { runs, warmup: inp.warmup, label: 'unpack', fmt: fmtMs },
    );

    const sizes = [BASE_NAME, ...layers].map((n) => fs.statSync(path.join(images, n)).size);
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    return [
      ratioRow({
        figure: 2,
        id: '2.unpack',
        what: `host unpack, base + ${layers.length} layers`,
        unit: 'ms',
        mkma: median(values(mk)),
        reference: median(values(ref)),
        target: 1.0,
        referenceLabel: `zstd -dc base | cpio -idm, then zstd -dc LAYER | cpio -idmu for each of the ${layers.length} layers`,
        note: `images ${mib(sizes[0])} MiB base + layers of ${sizes.slice(1).map(mib).join(', ')} MiB (compressed); mkma unpack includes Node's start-up; extractor: ${extractor}`,
        samples: { mkma: values(mk), reference: values(ref) },
      }),
    ];
  },
};
