#!/usr/bin/env node
// `npm run test:poweroff -- --trials N [--seed S] [--disk volatile|file]`: the power-off fault test
// (test/e2e/poweroff.test.ts) with N trials instead of CI's 3, through jest's e2e project (which
// builds the test image first).
import { spawnSync } from 'node:child_process';

const args = process.argv.slice(2);
const env = { ...process.env, NODE_OPTIONS: '--experimental-vm-modules' };
for (let i = 0; i < args.length; i++) {
  const value = args[i + 1];
  if (args[i] === '--trials' && /^[1-9]\d*$/.test(value ?? '')) env.MKMA_POWEROFF_TRIALS = value;
  else if (args[i] === '--seed' && /^\d+$/.test(value ?? '')) env.MKMA_POWEROFF_SEED = value;
  else if (args[i] === '--disk' && /^(volatile|file)$/.test(value ?? '')) env.MKMA_POWEROFF_DISK = value;
  else {
    console.error(`usage: npm run test:poweroff -- [--trials N] [--seed S] [--disk volatile|file]  (got ${args.join(' ')})`);
    process.exit(2);
  }
  i++;
}
const r = spawnSync('npx', ['jest', '--runInBand', '--selectProjects', 'e2e', '--testPathPattern', 'test/e2e/poweroff'], {
  stdio: 'inherit',
  env,
});
process.exit(r.status ?? 1);
