// The presets stage: each preset a tree stage of its own, in order. A preset whose result is
// kept (the tree after it, or a later one, in OUT/chroot or OUT/.cache) is reused; the others
// run on the tree (builder/presets.ts), each after a snapshot of the tree before it, so that a
// later change to it restarts there. Then mkma's own settings go on top again.
//
// A tree stage's result is kept under its chain key, a digest of its inputs: a kept result is
// the record that counts. Its entry in stages.json only says what changed when none is kept.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Preset } from '../../config/preset.js';
import { configureSystem } from '../configure.js';
import { checkBinfmt, foreignEnv, isForeign } from '../foreign.js';
import { runPreset, type AptState } from '../presets.js';
import { decide } from '../stage.js';
import type { BuildContext } from './context.js';

/** What a preset does, for its progress line. */
function describePreset(p: Preset): string {
  return (
    [
      p.packages.length ? `${p.packages.length} package(s)` : '',
      p.files ? 'files' : '',
      p.users.length ? `${p.users.length} user(s)` : '',
      p.script !== null ? 'script' : '',
      p.services.enable.length + p.services.disable.length + p.services.mask.length ? 'services' : '',
      p.hooks.length ? `${p.hooks.length} hook(s)` : '',
    ]
      .filter(Boolean)
      .join(', ') || 'nothing to do'
  );
}

export async function presetsStage(b: BuildContext): Promise<void> {
  const { presets, chain, records, snapshots, reporter } = b;
  if (presets.length && chain.start < presets.length) b.tree.touch();
  const apt: AptState = { updated: null };
  let consistent = true; // false once a preset was skipped: the tree is off the chain
  const keep = b.options.snapshots !== false;
  if (presets.length) fs.mkdirSync(snapshots.logs, { recursive: true });
  for (let i = 1; i <= presets.length; i++) {
    const p = presets[i - 1];
    const name = `preset ${p.name}`;
    const kept = i <= chain.start;
    const d = decide(chain.inputs[i], kept ? { inputs: chain.inputs[i] } : records.stage(name), {
      rebuild: b.rebuild,
      invalid: consistent ? undefined : 'an earlier preset was skipped',
      verify: () => (kept ? null : 'the tree after it is kept neither in OUT/chroot nor in OUT/.cache'),
    });
    if (!d.run) {
      // (no progress stage: a reused preset takes no time worth a line of its own)
      reporter.info(`==> ${name}: reused`);
      b.reports.push({ stage: name, status: 'reused', reason: d.reason });
      continue;
    }
    const t0 = performance.now();
    if (keep && consistent && snapshots.snapshot(chain.keys[i - 1], i === 1 ? 'bootstrap' : `preset ${presets[i - 2].name}`)) {
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      reporter.info(`    (the tree before ${p.name} kept in OUT/.cache/snapshots for rebuilds, ${secs} s)`);
    }
    records.treeChanging(true);
    const stage = reporter.stage(name, `${describePreset(p)} (${d.reason})`);
    const logFile = path.join(snapshots.logs, `${String(i).padStart(2, '0')}-${p.name.replace(/\//g, '_')}.log`);
    const outcome = await runPreset({
      root: b.chroot,
      preset: p,
      stage,
      interactive: !!b.options.interactive,
      apt,
      aptLists: snapshots.aptLists,
      logFile,
      emulation: emulationFor(b.config.architecture),
    });
    stage.done(outcome);
    b.reports.push({ stage: name, status: outcome, reason: d.reason });
    if (outcome === 'skipped') consistent = false;
    else if (consistent) records.treeHolds(chain.keys[i], { name, inputs: chain.inputs[i] });
  }
  // what configure owns (hostname, root password, fstab) ends as mkma.toml says, whether the
  // presets ran now or came from the cache
  if (presets.length && b.tree.touched) configureSystem(b.config, b.chroot);
  // only the states a change to one of these presets restarts from are kept (none: --no-snapshots)
  snapshots.prune(keep ? chain.keys.slice(0, presets.length) : []);
}

/** A foreign image's presets run its programs through qemu-user: checked before each (builder/foreign.ts). */
function emulationFor(arch: string): Record<string, string> {
  if (isForeign(arch)) checkBinfmt(arch);
  return foreignEnv(arch);
}
