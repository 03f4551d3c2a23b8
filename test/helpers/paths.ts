// Where tests keep their work: gitignored, reused between runs (the bootstrapped test image's
// chroot is reused by mkma's own cache when its configuration is unchanged).
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const WORK = path.join(REPO, '.test-work');
/** The one image the end-to-end tests of a run share (built by test/e2e/global-setup.ts). */
export const IMAGE_OUT = path.join(WORK, 'image');
export const TEST_CONFIG = path.join(REPO, 'test/fixtures/test-image.toml');
export const MKMA = path.join(REPO, 'bin/mkma.js');
