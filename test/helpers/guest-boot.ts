// A smoke boot that a test talks to while it runs (ssh through a port forward, QMP): the
// guest's run.sh on the MKMA-TEST disk, QEMU under TCG, and a wait for a line on its console.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { smokeBoot, type SmokeResult } from '../../qemu/smoke.js';

export interface GuestBoot {
  /** the boot's result, once QEMU ended */
  result: Promise<SmokeResult>;
  /** whether QEMU ended */
  ended(): boolean;
  /** when QEMU was started (Date.now()) */
  started: number;
  /** waits until the console shows `text` (true) or QEMU ended (false) */
  waitFor(text: string): Promise<boolean>;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Boots `out` fresh with `runSh` (lines of sh) as the guest's test script; console log in dir/console.log. */
export function startGuestBoot(o: {
  dir: string;
  out: string;
  runSh: string[];
  extraArgs: string[];
  timeoutSec: number;
  memoryMiB?: number;
  append?: string;
}): GuestBoot {
  const data = path.join(o.dir, 'data');
  fs.rmSync(data, { recursive: true, force: true });
  fs.mkdirSync(data, { recursive: true });
  fs.writeFileSync(path.join(data, 'run.sh'), o.runSh.join('\n') + '\n');
  const logPath = path.join(o.dir, 'console.log');
  fs.rmSync(logPath, { force: true });
  const started = Date.now();
  const result = smokeBoot({
    out: o.out,
    reporter: createReporter({ quiet: true }),
    env: { MKMA_QEMU_ACCEL: 'tcg' },
    fresh: true,
    testDataDir: data,
    timeoutSec: o.timeoutSec,
    memoryMiB: o.memoryMiB,
    append: o.append,
    logPath,
    extraArgs: o.extraArgs,
  });
  let ended = false;
  const end = () => {
    ended = true;
  };
  result.then(end, end);
  return {
    result,
    ended: () => ended,
    started,
    waitFor: async (text) => {
      while (!ended && !(fs.existsSync(logPath) && fs.readFileSync(logPath, 'utf8').includes(text))) await sleep(1000);
      return !ended;
    },
  };
}
