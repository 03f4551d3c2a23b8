// The bootstrap stage: OUT/chroot as mmdebstrap makes it from the configuration, unless a state
// of the tree chain for this configuration is kept: in OUT/chroot itself, or as a snapshot in
// OUT/.cache (then the later presets' states count too: the latest one is restored).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { unmountUnder } from '../chroot.js';
import { mmdebstrap } from '../mmdebstrap.js';
import { decide, StageRecords } from '../stage.js';
import { announce, report, type BuildContext } from './context.js';

export const BOOTSTRAP = 'bootstrap';

/** Bootstraps or reuses OUT/chroot; returns whether it was reused. */
export async function bootstrapStage(b: BuildContext): Promise<boolean> {
  const { config: c, chain, records } = b;
  const restored = chain.start <= 0 ? 'the bootstrapped tree' : `the tree after preset ${b.presets[chain.start - 1].name}`;
  // a kept state of the chain is the record that counts (see stages/presets.ts)
  const kept = chain.start >= 0;
  const d = decide(chain.inputs[0], kept ? { inputs: chain.inputs[0] } : records.stage(BOOTSTRAP), {
    rebuild: b.rebuild,
    verify: () =>
      kept
        ? null
        : records.tree.state === null && fs.existsSync(b.chroot)
          ? 'OUT/chroot was left unfinished by an interrupted build'
          : 'neither OUT/chroot nor OUT/.cache holds it',
    reusedAs:
      chain.from === 'snapshot'
        ? `restoring ${restored} from OUT/.cache`
        : `reusing OUT/chroot${chain.start > 0 ? ` (with the presets up to ${b.presets[chain.start - 1].name})` : ''}`,
  });
  const stage = announce(b, BOOTSTRAP, d, `mmdebstrap ${c.suite} (${c.variant}, ${c.architecture}) from ${c.mirror}`);
  let logFile = '';
  if (d.run) {
    // after --rebuild every snapshot derives from the tree being replaced
    if (b.rebuild) b.snapshots.clear();
    records.treeChanging();
    // nothing of an interrupted run may stay mounted in a tree that is replaced
    unmountUnder(b.chroot);
    const fresh = path.join(b.out, 'chroot.new');
    // 00-: before the presets' logs (stages/presets.ts), in the order of the build
    logFile = path.join(b.snapshots.logs, '00-bootstrap.log');
    await mmdebstrap(c, fresh, { logFile, onStep: (s) => stage.step(s), onProgress: (p) => stage.progress(p) });
    records.treeChanging(true);
    fs.rmSync(b.chroot, { recursive: true, force: true });
    fs.renameSync(fresh, b.chroot);
    records.treeHolds(chain.keys[0], { name: BOOTSTRAP, inputs: chain.inputs[0], details: { created: new Date().toISOString() } });
    // whatever was kept before, every preset runs on the fresh tree
    b.chain = { ...chain, start: 0, from: 'in-place' };
  } else if (chain.from === 'snapshot') {
    records.treeChanging();
    b.snapshots.restore(chain.keys[chain.start], () => records.treeChanging(true));
    records.treeHolds(chain.keys[chain.start]);
  }
  report(b, BOOTSTRAP, d, stage, d.run ? `fresh bootstrap, mmdebstrap's full output in ${logFile}` : 'reused');

  // What happened to the tree decides whether the configure steps, which edit it in place,
  // hold: a new lineage makes them all run again.
  const reused = !d.run;
  const presetsPending = b.chain.start < b.presets.length;
  b.tree.settle({
    replaced: d.run
      ? 'a fresh bootstrap'
      : chain.from === 'snapshot'
        ? 'the tree was restored from OUT/.cache'
        : presetsPending
          ? 'presets run on the tree'
          : undefined,
    touched: d.run || chain.from === 'snapshot',
  });
  return reused;
}

/**
 * When OUT's tree was last bootstrapped, by its build record (null: not by this mkma): an
 * identity of the bootstrapped tree for tools that keep copies of it (the benchmarks).
 */
export function lastBootstrap(out: string): string | null {
  const rec = new StageRecords(path.join(out, '.cache')).stage(BOOTSTRAP);
  const created = rec?.details?.created;
  return rec && typeof created === 'string' ? `${rec.inputs.configuration} ${created}` : null;
}
