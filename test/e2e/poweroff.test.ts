// Power loss while `mkma persist` writes: QEMU killed (SIGKILL) at random moments of a guest's
// `mkma persist --yes` of a large change; after each kill the disk holds no partial layer under
// a final name, every earlier layer is unchanged, e2fsck finds nothing to fix, and the next
// boot applies every layer and reaches multi-user (test/helpers/poweroff.ts).
// MKMA_POWEROFF_TRIALS trials (default 2, as in CI: each costs a TCG boot, ~45 s, and CI must
// stay under 45 min; a seed is drawn per run, so runs cover other moments; `npm run
// test:poweroff -- --trials 20` for more), N + 1 boots; MKMA_POWEROFF_SEED repeats a run's kill moments; MKMA_POWEROFF_DISK=file
// runs QEMU on the image file instead of the volatile-cache disk.
import { describe, expect, test } from '@jest/globals';
import { runPowerOffTrials } from '../helpers/poweroff.js';
import { IMAGE_OUT } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';

const TRIALS = Number(process.env.MKMA_POWEROFF_TRIALS ?? 2);
const SEED = process.env.MKMA_POWEROFF_SEED ? Number(process.env.MKMA_POWEROFF_SEED) : undefined;
const DISK = process.env.MKMA_POWEROFF_DISK === 'file' ? 'file' : 'volatile';

describe('power loss while mkma persist writes', () => {
  const POWEROFF_WORK = ownWorkDir('e2e-poweroff');
  test(
    `${TRIALS} power cuts at random moments: no partial layer, earlier layers intact, the system boots`,
    async () => {
      const t0 = Date.now();
      const r = await runPowerOffTrials({
        out: IMAGE_OUT,
        work: POWEROFF_WORK,
        trials: TRIALS,
        seed: SEED,
        disk: DISK,
        log: (line) => process.stderr.write(`[power-off] ${line}\n`),
      });
      const counts = new Map<string, number>();
      for (const t of r.trials.slice(0, TRIALS)) counts.set(t.outcome, (counts.get(t.outcome) ?? 0) + 1);
      process.stderr.write(
        `[power-off] ${TRIALS} trials (seed ${r.seed}) in ${((Date.now() - t0) / 1000).toFixed(0)} s: ` +
          `${[...counts].map(([k, n]) => `${n} ${k}`).join(', ')}\n`,
      );
      expect(r.problems).toEqual([]);
      expect(r.trials).toHaveLength(TRIALS + 1);
      // every boot came up, also the last, which saved its change whole
      for (const t of r.trials) expect(t.boot.multiUserSec).not.toBeNull();
      expect(r.trials[TRIALS].disk.layers.length).toBeGreaterThan(0);
    },
    (TRIALS + 1) * 600_000,
  );
});
