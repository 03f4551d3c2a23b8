// Figure 6: rebuilding.
// `mkma build` with an unchanged configuration reuses the bootstrapped chroot, and every later
// stage whose inputs are unchanged (builder/stage.ts): configure, pack base, initramfs. Against
// a fresh build of the same configuration (`--rebuild`: mmdebstrap from the mirror, then every
// stage) it must take ≤ 10% of the time. An informational row shows the cost of a real edit:
// a new hostname (the CLI's HOSTNAME argument) re-runs configure and re-packs the base, but
// must not cost a bootstrap; an unmeasured build with the configuration's hostname follows it,
// so the next unchanged rebuild is one again. All are
// the CLI (`node bin/mkma.js build --config test/fixtures/test-image.toml --out X --json`) in
// a child process, into the benchmark's own output directory (the tests' image is left
// alone). A fresh build takes minutes: one run each; --quick skips it (and seeds the output
// directory with a copy of the test image's chroot, so that the unchanged rebuild has one).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { lastBootstrap } from '../builder/stages/bootstrap.js';
import type { Figure } from './figure.js';
import type { Inputs } from './inputs.js';
import { ratioRow, type Row } from './report.js';
import { interleave, median, values, type Sample } from './stats.js';
import { CACHE, fmtMs, HarnessError, log, MKMA_BIN, runTimed, sh, TEST_CONFIG } from './util.js';

interface BuildSample extends Sample {
  bootstrap: string;
  /** stage: status, e.g. "pack base: ran" */
  stages: string[];
}

/** The hostname of the "hostname change" row (the test configuration's is mkma-test). */
const RENAMED = 'mkma-bench-renamed';

async function build(out: string, rebuild: boolean, hostname?: string): Promise<BuildSample> {
  const env: NodeJS.ProcessEnv = { ...process.env, MKMA_QEMU_TEST: '' };
  delete env.MKMA_COMPRESSION_LEVEL;
  const args = [
    MKMA_BIN,
    'build',
    ...(hostname ? [hostname] : []),
    '--config',
    TEST_CONFIG,
    '--out',
    out,
    '--json',
    ...(rebuild ? ['--rebuild'] : []),
  ];
  const r = await runTimed('node', args, { env, timeoutMs: 30 * 60 * 1000 });
  let res: { bootstrap?: string; stages?: Array<{ stage: string; status: string; reason?: string }> };
  try {
    res = JSON.parse(r.stdout) as typeof res;
  } catch {
    throw new HarnessError(`mkma build --json printed no JSON: ${r.stdout.slice(0, 300)}`);
  }
  const expected = rebuild ? 'fresh' : 'reused';
  if (res.bootstrap !== expected) throw new HarnessError(`mkma build: expected a ${expected} bootstrap, got ${res.bootstrap}`);
  const stages = (res.stages ?? []).map((st) => `${st.stage}: ${st.status}`);
  for (const st of res.stages ?? []) if (st.status === 'ran' && st.reason && !rebuild) log(`    ${st.stage} ran: ${st.reason}`);
  return { value: r.ms, bootstrap: res.bootstrap, stages };
}

/** A build with another hostname (measured), then one with the configuration's (not measured). */
async function renamed(out: string): Promise<BuildSample> {
  const s = await build(out, false, RENAMED);
  if (!s.stages.includes('configure: ran') || !s.stages.includes('pack base: ran')) {
    throw new HarnessError(`mkma build ${RENAMED}: configure and pack base should have run (${s.stages.join(', ')})`);
  }
  await build(out, false);
  return s;
}

/** The stages of the unchanged rebuilds that did not reuse their result (normally none). */
function notReused(xs: BuildSample[]): string {
  const ran = [...new Set(xs.flatMap((x) => x.stages.filter((st) => !st.endsWith(': reused'))))];
  return ran.length ? `; ran in an unchanged rebuild: ${ran.join(', ')}` : '; every stage reused';
}

export const figure: Figure = {
  id: 6,
  title: 'rebuild with an unchanged configuration',
  async run(inp: Inputs): Promise<Row[]> {
    const out = path.join(CACHE, 'build');
    const quick = inp.o.quick;
    const haveChroot = fs.existsSync(path.join(out, 'chroot', 'usr')) && lastBootstrap(out) !== null;
    if (quick && !haveChroot) {
      // --quick never bootstraps: start from the tests' chroot (same configuration file)
      const image = inp.testImage();
      log("seeding the build output with a copy of the test image's chroot …");
      fs.rmSync(out, { recursive: true, force: true });
      fs.mkdirSync(out, { recursive: true });
      sh('cp', ['-a', path.join(image, 'chroot'), path.join(out, 'chroot')]);
      // with its build record: the copy holds the same state of the tree chain
      fs.mkdirSync(path.join(out, '.cache'));
      fs.copyFileSync(path.join(image, '.cache', 'stages.json'), path.join(out, '.cache', 'stages.json'));
    }
    const runs = inp.o.runs ?? 1;
    // a row of mkma's rebuild times against the fresh build (none in --quick)
    const row = (id: string, what: string, target: number | null, re: BuildSample[], fresh: BuildSample[] | null, note: string) =>
      ratioRow({
        figure: 6,
        id,
        what,
        unit: 'ms',
        mkma: median(values(re)),
        reference: fresh ? median(values(fresh)) : null,
        target,
        ...(fresh ? {} : { status: 'skipped' as const }),
        referenceLabel: 'mkma build --rebuild (fresh mmdebstrap bootstrap, same configuration)',
        note,
        samples: { mkma: values(re), ...(fresh ? { reference: values(fresh) } : {}) },
      });
    const rebuildRow = (re: BuildSample[], fresh: BuildSample[] | null) =>
      row(
        '6.rebuild',
        'rebuild, unchanged config vs fresh',
        0.1,
        re,
        fresh,
        (fresh
          ? `${runs} run(s) each; the fresh build depends on the mirror's speed`
          : 'fresh build skipped in --quick (the unchanged rebuild was measured)') + notReused(re),
      );
    const renameRow = (rn: BuildSample[], fresh: BuildSample[] | null) =>
      row(
        '6.rename',
        'rebuild after a hostname change vs fresh',
        null,
        rn,
        fresh,
        `mkma build ${RENAMED}: configure runs again and the base is re-packed, no bootstrap (${rn[0]?.stages.filter((st) => st.endsWith(': ran')).join(', ') || '-'})` +
          (fresh ? '' : '; fresh build skipped in --quick'),
      );
    if (quick) {
      // one unmeasured round first: after seeding (or a change to mkma itself) the first
      // rebuild records what every stage was made from
      const [re, rn] = await interleave<BuildSample>(
        [
          { name: 'unchanged rebuild', run: () => build(out, false) },
          { name: 'hostname change', run: () => renamed(out) },
        ],
        { runs, warmup: 1, label: 'build', fmt: fmtMs },
      );
      return [rebuildRow(re, null), renameRow(rn, null)];
    }
    // fresh first: it also makes the chroot the unchanged rebuild reuses
    const [fresh, re, rn] = await interleave<BuildSample>(
      [
        { name: 'fresh build (--rebuild)', run: () => build(out, true) },
        { name: 'unchanged rebuild', run: () => build(out, false) },
        { name: 'hostname change', run: () => renamed(out) },
      ],
      { runs, label: 'build', fmt: fmtMs },
    );
    return [rebuildRow(re, fresh), renameRow(rn, fresh)];
  },
};
