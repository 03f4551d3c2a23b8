#!/usr/bin/env node
// npm run fuzz -- [--seconds N]: the fuzz run of test/integration/fuzz.test.ts, longer
// (default 3600 s). Findings are saved in .test-work/fuzz/ and fail the run.
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '3600' } } });
const seconds = Number(values.seconds);
if (!Number.isInteger(seconds) || seconds < 1) {
  console.error('usage: npm run fuzz -- [--seconds N]');
  process.exit(2);
}
const r = spawnSync('npx', ['jest', '--selectProjects', 'integration', 'test/integration/fuzz.test.ts'], {
  stdio: 'inherit',
  env: { ...process.env, MKMA_FUZZ_SECONDS: String(seconds), NODE_OPTIONS: '--experimental-vm-modules' },
});
process.exit(r.status ?? 1);
