// The images `mkma build` wrote (OUT/base.cpio.zst, initramfs.cpio.zst, vmlinuz, mkma.json),
// checked before anything is written to a stick: mkma.json is read as untrusted input (its
// hostname becomes paths on the stick and a GRUB menu title), and each file must be the one
// it describes (size; the base's sha256 is recorded on the stick and in the layers).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { UsageError } from '../lib/errors.js';
import { checkHostname, type ImageSizes } from './layout.js';

export interface BuiltImages {
  dir: string;
  hostname: string;
  kernelVersion: string;
  mkmaVersion: string;
  base: string;
  initramfs: string;
  kernel: string;
  /** from mkma.json ('' when it has none): what the stick records, and how update tells a build is new */
  baseSha256: string;
  kernelSha256: string;
  initramfsSha256: string;
  sizes: ImageSizes;
  /** the Debian architecture it was built for (mkma.json's configuration; amd64 when it does not say) */
  architecture: string;
}

interface BuildInfo {
  hostname?: unknown;
  kernelVersion?: unknown;
  mkmaVersion?: unknown;
  outputs?: Record<string, { bytes?: unknown; sha256?: unknown } | undefined>;
  config?: { architecture?: unknown };
}

export function readBuiltImages(outDir: string): BuiltImages {
  const dir = path.resolve(outDir);
  const infoPath = path.join(dir, FILES.buildInfo);
  let info: BuildInfo;
  try {
    info = JSON.parse(fs.readFileSync(infoPath, 'utf8')) as BuildInfo;
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : `cannot be read: ${(e as Error).message}`;
    throw new UsageError(`${infoPath} ${why}: run mkma build --out ${outDir} first (or give --out)`);
  }
  if (typeof info.hostname !== 'string') throw new UsageError(`${infoPath} names no hostname`);
  const hostname = checkHostname(info.hostname, infoPath);
  const kernelVersion =
    typeof info.kernelVersion === 'string' && /^[0-9A-Za-z.+~_-]+$/.test(info.kernelVersion) ? info.kernelVersion : 'unknown';
  const file = (name: string, key: string) => {
    const p = path.join(dir, name);
    const st = fs.statSync(p, { throwIfNoEntry: false });
    if (!st?.isFile()) throw new UsageError(`${p} is missing: run mkma build --out ${outDir} first`);
    const rec = info.outputs?.[key];
    if (rec && typeof rec.bytes === 'number' && rec.bytes !== st.size) {
      throw new UsageError(
        `${p} is ${st.size} bytes but ${FILES.buildInfo} says ${rec.bytes}: was the build interrupted? Run mkma build again`,
      );
    }
    return { path: p, bytes: st.size, sha256: typeof rec?.sha256 === 'string' && /^[0-9a-f]{64}$/.test(rec.sha256) ? rec.sha256 : '' };
  };
  const base = file(FILES.base, 'base');
  const initramfs = file(FILES.initramfs, 'initramfs');
  const kernel = file(FILES.kernel, 'kernel');
  return {
    dir,
    hostname,
    kernelVersion,
    mkmaVersion: typeof info.mkmaVersion === 'string' ? info.mkmaVersion : 'unknown',
    base: base.path,
    initramfs: initramfs.path,
    kernel: kernel.path,
    baseSha256: base.sha256,
    kernelSha256: kernel.sha256,
    initramfsSha256: initramfs.sha256,
    sizes: { base: base.bytes, kernel: kernel.bytes, initramfs: initramfs.bytes },
    architecture:
      typeof info.config?.architecture === 'string' && /^[a-z0-9]+$/.test(info.config.architecture) ? info.config.architecture : 'amd64',
  };
}
