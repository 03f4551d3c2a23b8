// A build directory that starts from the shared test image's bootstrap instead of a second
// mmdebstrap (~140 s on 2 shared cores): OUT/chroot and OUT/.cache/stages.json (mkma's own
// record of which state the tree holds) are copied from the image test/e2e/global-setup.ts
// built. mkma then decides as in any rebuild of that directory: with the test image's
// configuration hash (and presets on top) the bootstrap is reused and the presets run on it;
// with any other configuration the record does not match and mkma bootstraps. The outputs are
// not copied: their records name files that are not there, so they are made again.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mountsUnder } from '../../builder/chroot.js';
import { StageRecords } from '../../builder/stage.js';
import { IMAGE_OUT } from './paths.js';

export type Seeded = 'seeded' | 'kept' | 'no test image';

/** The configuration hash a build directory's tree was bootstrapped for (its record), or null. */
function bootstrappedFor(out: string): string | null {
  const r = StageRecords.read(path.join(out, '.cache', 'stages.json'));
  return (fs.existsSync(path.join(out, 'chroot', 'usr')) && r?.stages.bootstrap?.inputs.configuration) || null;
}

/**
 * Seeds `out` from `from` (default: the test image) unless `out` holds a tree bootstrapped for
 * the same configuration already ('kept': its own record and snapshots decide). 'no test
 * image': there is no finished test image to copy (a run without the e2e project's global
 * setup), and the build bootstraps as usual.
 */
export function seedFromTestImage(out: string, from = IMAGE_OUT): Seeded {
  const record = StageRecords.read(path.join(from, '.cache', 'stages.json'));
  const chroot = path.join(from, 'chroot');
  const config = bootstrappedFor(from);
  // a finished tree only: a state of the chain and a stamp (null while a build changes it)
  if (!config || !record?.tree.state || !record.tree.stamp || mountsUnder(fs.realpathSync(chroot)).length) return 'no test image';
  if (bootstrappedFor(out) === config) return 'kept';
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(path.join(out, '.cache'), { recursive: true, mode: 0o700 });
  fs.chmodSync(out, 0o700);
  // cp -a: owners, modes, links, xattrs (file capabilities) as mmdebstrap made them
  const cp = spawnSync('cp', ['-a', '--reflink=auto', '--no-target-directory', chroot, path.join(out, 'chroot')], { encoding: 'utf8' });
  if (cp.status !== 0) throw new Error(`cp -a ${chroot} failed: ${cp.stderr}`);
  // the record last: a copy cut short leaves none, and the next build bootstraps
  fs.copyFileSync(path.join(from, '.cache', 'stages.json'), path.join(out, '.cache', 'stages.json'));
  return 'seeded';
}
