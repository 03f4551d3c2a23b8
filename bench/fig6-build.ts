// Figure 6: rebuilding.
// `mkma build` with an unchanged configuration reuses the bootstrapped chroot; it only
// configures, packs the base and the initramfs again. Against a fresh build of the same
// configuration (`--rebuild`: mmdebstrap from the mirror, then the same steps) it must take
// ≤ 10% of the time: editing a hostname or a package list must not cost a bootstrap. Both are
// the CLI (`node bin/mkma.js build --config test/fixtures/test-image.toml --out X --json`) in
// a child process, into the benchmark's own output directory (the tests' image is left
// alone). A fresh build takes minutes: one run each; --quick skips it (and seeds the output
// directory with a copy of the test image's chroot, so that the unchanged rebuild has one).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, values, type Sample } from './stats.js';
import { CACHE, fmtMs, HarnessError, log, MKMA_BIN, runTimed, sh, TEST_CONFIG } from './util.js';

interface BuildSample extends Sample {
  bootstrap: string;
}

async function build(out: string, rebuild: boolean): Promise<BuildSample> {
  const env: NodeJS.ProcessEnv = { ...process.env, MKMA_QEMU_TEST: '' };
  delete env.MKMA_COMPRESSION_LEVEL;
  const args = [MKMA_BIN, 'build', '--config', TEST_CONFIG, '--out', out, '--json', ...(rebuild ? ['--rebuild'] : [])];
  const r = await runTimed('node', args, { env, timeoutMs: 30 * 60 * 1000 });
  let res: { bootstrap?: string };
  try {
    res = JSON.parse(r.stdout) as { bootstrap?: string };
  } catch {
    throw new HarnessError(`mkma build --json printed no JSON: ${r.stdout.slice(0, 300)}`);
  }
  const expected = rebuild ? 'fresh' : 'reused';
  if (res.bootstrap !== expected) throw new HarnessError(`mkma build: expected a ${expected} bootstrap, got ${res.bootstrap}`);
  return { value: r.ms, bootstrap: res.bootstrap };
}

export const figure: Figure = {
  id: 6,
  title: 'rebuild with an unchanged configuration',
  async run(inp: Inputs): Promise<Row[]> {
    const out = path.join(CACHE, 'build');
    const quick = inp.o.quick;
    const haveChroot = fs.existsSync(path.join(out, 'chroot', 'usr')) && fs.existsSync(path.join(out, '.mkma-bootstrap.json'));
    if (quick && !haveChroot) {
      // --quick never bootstraps: start from the tests' chroot (same configuration file)
      const image = inp.testImage();
      log('seeding the build output with a copy of the test image\'s chroot …');
      fs.rmSync(out, { recursive: true, force: true });
      fs.mkdirSync(out, { recursive: true });
      sh('cp', ['-a', path.join(image, 'chroot'), path.join(out, 'chroot')]);
      fs.copyFileSync(path.join(image, '.mkma-bootstrap.json'), path.join(out, '.mkma-bootstrap.json'));
    }
    const runs = inp.o.runs ?? 1;
    if (quick) {
      const [re] = await interleave<BuildSample>([{ name: 'unchanged rebuild', run: () => build(out, false) }], { runs, label: 'build', fmt: fmtMs });
      return [ratioRow({
        figure: 6, id: '6.rebuild', what: 'rebuild, unchanged config vs fresh', unit: 'ms',
        mkma: median(values(re)), reference: null, target: 0.1, status: 'skipped',
        referenceLabel: 'mkma build --rebuild (fresh mmdebstrap bootstrap)',
        note: 'fresh build skipped in --quick (the unchanged rebuild was measured)',
        samples: { mkma: values(re) },
      })];
    }
    // fresh first: it also makes the chroot the unchanged rebuild reuses
    const [fresh, re] = await interleave<BuildSample>([
      { name: 'fresh build (--rebuild)', run: () => build(out, true) },
      { name: 'unchanged rebuild', run: () => build(out, false) },
    ], { runs, label: 'build', fmt: fmtMs });
    return [ratioRow({
      figure: 6, id: '6.rebuild', what: 'rebuild, unchanged config vs fresh', unit: 'ms',
      mkma: median(values(re)), reference: median(values(fresh)), target: 0.1,
      referenceLabel: 'mkma build --rebuild (fresh mmdebstrap bootstrap, same configuration)',
      note: `${runs} run(s) each; the fresh build depends on the mirror's speed`,
      samples: { mkma: values(re), reference: values(fresh) },
    })];
  },
};
