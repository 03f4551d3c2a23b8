// Essential boot failures stop with what went wrong and what to check, never a half-system.
// mkma_on_error=halt powers the VM off right after the message.
import { describe, expect, test } from '@jest/globals';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { smokeBoot } from '../../qemu/smoke.js';
import { IMAGE_OUT, WORK } from '../helpers/paths.js';

const boot = (name: string, append: string) =>
  smokeBoot({
    out: IMAGE_OUT,
    reporter: createReporter({ quiet: true }),
    env: { MKMA_QEMU_ACCEL: 'tcg' },
    fresh: true,
    timeoutSec: 300,
    append,
    logPath: path.join(WORK, `e2e-boot-error-${name}.log`),
  });

describe('boot failures are explained', () => {
  test('a storage device that never appears', async () => {
    const r = await boot('device', 'mkma_storage_device=LABEL=NO-SUCH-DISK mkma_device_timeout=3 mkma_on_error=halt');
    expect(r.ok).toBe(false);
    expect(r.log).toMatch(/FATAL storage device LABEL=NO-SUCH-DISK did not appear within 3s/);
    expect(r.log).toMatch(/hint: check mkma_storage_device=; known block devices: .*\bvda\b/);
    expect(r.log).not.toMatch(/phase switch-root/);
  }, 400_000);

  test('a RAM filesystem too small for the base image', async () => {
    const r = await boot('ram', 'mkma_ram_size=64M mkma_on_error=halt');
    expect(r.ok).toBe(false);
    expect(r.log).toMatch(/FATAL the system needs \d+ MiB of RAM filesystem but mkma_ram_size=64M gives 64 MiB/);
    expect(r.log).toMatch(/hint: give the machine more memory, raise mkma_ram_size=/);
    expect(r.log).not.toMatch(/phase unpack-base/);
  }, 400_000);
});
