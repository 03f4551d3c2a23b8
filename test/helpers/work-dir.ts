// A test file's own directory under .test-work, removed once the file is done. CI once ran out
// of disk with every file's image copies, boot disks and build trees kept until the end of the
// run (several GB); what later files read (the shared test image, the shipped presets' build)
// is not made with this. MKMA_KEEP_TEST_WORK=1 keeps them, to look at after a run.
import { afterAll } from '@jest/globals';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mountsUnder } from '../../builder/chroot.js';
import { WORK } from './paths.js';

/** WORK/name, deleted after the calling file's tests (never through a mount left inside it). */
export function ownWorkDir(name: string): string {
  const dir = path.join(WORK, name);
  afterAll(() => {
    if (process.env.MKMA_KEEP_TEST_WORK === '1' || !fs.existsSync(dir)) return;
    const mounted = mountsUnder(fs.realpathSync(dir));
    // a mount left behind is a failure of its own test; deleting through it would empty what it shows
    if (mounted.length) throw new Error(`${dir} not removed: still mounted there: ${mounted.join(', ')}`);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}
