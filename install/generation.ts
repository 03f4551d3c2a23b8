// Putting one generation (kernel, initramfs, base of one build) on a stick, in the order that
// makes it count only when it is whole: the base on the data partition (synced, renamed into
// place), then kernel and initramfs on the ESP, then generation.json — the record
// install/stick.ts takes as "complete" — and a flush of the ESP's device. Until the record is
// there, a generation is a leftover, in no menu.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Reporter } from '../lib/progress.js';
import { FILES } from '../lib/contract.js';
import { flushDevice } from './blockdev.js';
import type { BuiltImages } from './images.js';
import { baseFileName, DATA_IMAGES_DIR, espGenerationDir, GENERATION_FILE } from './layout.js';
import type { GenerationRecord } from './menu.js';
import { copyDurably } from './stick.js';
import type { StickSession } from './session.js';

export function writeGeneration(
  s: StickSession,
  images: BuiltImages,
  generation: number,
  append: string[],
  reporter: Reporter,
): GenerationRecord {
  const hostDir = path.join(s.data.dir, DATA_IMAGES_DIR, images.hostname);
  fs.mkdirSync(hostDir, { recursive: true, mode: 0o755 });
  const file = baseFileName(generation);

  const copy = reporter.stage('copy base', `${images.base} → ${DATA_IMAGES_DIR}/${images.hostname}/${file}`);
  const sha256 = copyDurably(images.base, path.join(hostDir, file), copy);
  copy.done();
  if (images.baseSha256 && sha256 !== images.baseSha256) {
    fs.rmSync(path.join(hostDir, file), { force: true });
    throw new Error(
      `${images.base} changed while it was copied (sha256 ${sha256}, mkma.json says ${images.baseSha256}): run mkma build again`,
    );
  }

  const boot = reporter.stage('copy kernel', `vmlinuz and initramfs → ESP ${espGenerationDir(images.hostname, generation)}`);
  const record: GenerationRecord = {
    hostname: images.hostname,
    generation,
    installedAt: new Date().toISOString(),
    mkmaVersion: images.mkmaVersion,
    kernelVersion: images.kernelVersion,
    base: { file, bytes: images.sizes.base, sha256 },
    kernelBytes: images.sizes.kernel,
    initramfsBytes: images.sizes.initramfs,
    kernelSha256: images.kernelSha256,
    initramfsSha256: images.initramfsSha256,
    append,
  };
  const dir = espGenerationDir(images.hostname, generation);
  // mcopy names the copies after their sources: vmlinuz and initramfs.cpio.zst, as FILES says
  if (path.basename(images.kernel) !== FILES.kernel || path.basename(images.initramfs) !== FILES.initramfs) {
    throw new Error(`the kernel and initramfs must be named ${FILES.kernel} and ${FILES.initramfs}`);
  }
  s.esp.put([images.kernel, images.initramfs], dir);
  flushDevice(s.esp.node);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-gen-'));
  try {
    const recordFile = path.join(tmp, GENERATION_FILE);
    fs.writeFileSync(recordFile, JSON.stringify(record, null, 2) + '\n');
    s.esp.put([recordFile], dir);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  flushDevice(s.esp.node);
  boot.done();
  return record;
}
