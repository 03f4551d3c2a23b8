// Builds the test image once per run for every end-to-end test (QEMU under TCG is slow: one
// image, reused). A failed build fails the run here, with mkma's own message.
// Self-contained (no relative imports): jest loads global setup outside its module mapper.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WORK = path.join(REPO, '.test-work');
const IMAGE_OUT = path.join(WORK, 'image'); // = test/helpers/paths.ts IMAGE_OUT
const TEST_CONFIG = path.join(REPO, 'test/fixtures/test-image.toml');
const MKMA = path.join(REPO, 'bin/mkma.js');

export default async function globalSetup(): Promise<void> {
  fs.mkdirSync(WORK, { recursive: true });
  const t0 = Date.now();
  process.stderr.write(`\n[e2e] building the test image into ${IMAGE_OUT} …\n`);
  const r = spawnSync('node', [MKMA, 'build', '--config', TEST_CONFIG, '--out', IMAGE_OUT, '--json'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, MKMA_QEMU_TEST: '' },
  });
  if (r.status !== 0) throw new Error(`mkma build of the test image failed (exit ${r.status})`);
  fs.writeFileSync(`${IMAGE_OUT}/build-result.json`, r.stdout);
  process.stderr.write(`[e2e] test image built in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
}
