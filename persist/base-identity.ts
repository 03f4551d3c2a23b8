// Which base a layer is written on: its manifest records the base's data_sha256
// (`base_data_sha256`, docs/FORMAT.md), so that `mkma update` can tell which layers of a stick
// were written on another base than the one it puts there.
//
// Where it comes from:
//   - on the booted system (no --device, no --path): the init's boot.env, `base_data_sha256=`,
//     which the init read from the manifest of the base it unpacked. Not the images
//     directory's base.cpio.zst: after an `mkma update` that is the new base, while the system
//     still runs on the old one (the layer's changes were made against the old one);
//   - with --path or --device: the base that directory boots, its base.cpio.zst's manifest;
//   - neither known (an init of older mkma, no base there): nothing is recorded ("unknown base").
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { SHA256_RE } from '../format/manifest.js';
import { imageDataSha256 } from '../format/layer-info.js';

export const BOOT_ENV_BASE_KEY = 'base_data_sha256';

/** `base_data_sha256=` of the init's boot.env, when it is a sha256. */
export function baseFromBootEnv(text: string | undefined): string | undefined {
  for (const line of (text ?? '').split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0 && line.slice(0, eq).trim() === BOOT_ENV_BASE_KEY) {
      const v = line.slice(eq + 1).trim();
      return SHA256_RE.test(v) ? v : undefined;
    }
  }
  return undefined;
}

/** The base a layer written now into `imagesDir` goes on (see above). */
export function baseOfNewLayer(o: { device?: string; path?: string; bootEnv?: string; imagesDir: string }): string | undefined {
  if (o.device === undefined && o.path === undefined) return baseFromBootEnv(o.bootEnv);
  return imageDataSha256(path.join(o.imagesDir, FILES.base));
}
