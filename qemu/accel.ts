// Which QEMU accelerator to use: KVM where the user can actually use it, TCG elsewhere.
//
// "Can use" means /dev/kvm opens read-write for this user: the node existing is not enough
// (no kvm group membership → QEMU fails at start-up with a permission error). The variable
// MKMA_QEMU_ACCEL overrides the probe both ways: `tcg` for hosts whose KVM is present but
// broken (nested virtualisation that hangs), `kvm` to fail loudly instead of silently
// falling back to a 10× slower emulated boot.
import fs from 'node:fs';
import { MkmaError } from '../lib/errors.js';

export type Accel = 'kvm' | 'tcg';

export const ACCEL_ENV = 'MKMA_QEMU_ACCEL';
export const KVM_DEVICE = '/dev/kvm';

export class AccelError extends MkmaError {}

/** The one host check pickAccel makes; replaceable in tests. */
export interface AccelProbe {
  /** true if `path` can be opened read-write by this process */
  canOpenReadWrite(path: string): boolean;
}

export const hostProbe: AccelProbe = {
  canOpenReadWrite(p) {
    try {
      fs.closeSync(fs.openSync(p, 'r+'));
      return true;
    } catch {
      return false;
    }
  },
};

export function pickAccel(env: NodeJS.ProcessEnv = process.env, probe: AccelProbe = hostProbe): Accel {
  const forced = env[ACCEL_ENV]?.trim();
  // An empty value (`MKMA_QEMU_ACCEL= mkma qemu`) means "not set", as in most tools.
  if (forced) {
    if (forced === 'kvm' || forced === 'tcg') return forced;
    throw new AccelError(`${ACCEL_ENV} must be "kvm" or "tcg", got "${forced}" (unset it to choose automatically)`);
  }
  return probe.canOpenReadWrite(KVM_DEVICE) ? 'kvm' : 'tcg';
}
