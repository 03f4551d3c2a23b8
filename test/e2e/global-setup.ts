// Builds the test image once per run for every end-to-end test (QEMU under TCG is slow: one
// image, reused). A failed build fails the run here, with mkma's own message.
// Self-contained (no relative imports): jest loads global setup outside its module mapper.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WORK = path.join(REPO, '.test-work');
const IMAGE_OUT = path.join(WORK, 'image'); // = test/helpers/paths.ts IMAGE_OUT
const TEST_CONFIG = path.join(REPO, 'test/fixtures/test-image.toml');
const MKMA = path.join(REPO, 'bin/mkma.js');

/**
 * The arm64 image's build (test/e2e/arm64.test.ts) starts first, in the background
 * (test/e2e/arm64-background.mjs says why and how it ends), when this run includes that test;
 * MKMA_ARM64_BACKGROUND=0 leaves it to the test, in the foreground, as before.
 */
function startArm64Build(testPathPattern: string): void {
  const stateDir = path.join(WORK, 'arm64', 'background'); // = test/e2e/arm64.test.ts BACKGROUND
  fs.rmSync(stateDir, { recursive: true, force: true });
  if (process.env.MKMA_ARM64_BACKGROUND === '0') return;
  if (testPathPattern && !new RegExp(testPathPattern, 'i').test(path.join(REPO, 'test/e2e/arm64.test.ts'))) return;
  const timeoutSec = process.env.MKMA_ARM64_BUILD_TIMEOUT_SEC ?? '1500';
  const args = [path.join(REPO, 'test/fixtures/test-image-arm64.toml'), path.join(WORK, 'arm64', 'image'), stateDir];
  const runner = spawn('node', [path.join(REPO, 'test/e2e/arm64-background.mjs'), ...args, String(process.pid), timeoutSec], {
    detached: true,
    stdio: 'ignore',
  });
  runner.unref();
  process.stderr.write(`\n[e2e] building the arm64 test image in the background (log: ${stateDir}/build.log)\n`);
}

export default async function globalSetup(globalConfig: { testPathPattern?: string }): Promise<void> {
  fs.mkdirSync(WORK, { recursive: true });
  startArm64Build(globalConfig.testPathPattern ?? '');
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
