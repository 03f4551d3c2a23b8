// The outputs stage, atomic: what the stages made now is renamed into place from OUT/.staging
// together with mkma.json, only once every stage succeeded; what they reused is left as it is
// (the decision checked that it is the file recorded). The files are recorded only once they
// are in place: a crash before leaves the old record, which no longer matches the files, and
// they are made again.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeConfig } from '../../config/load.js';
import { BUILD_INFO_NAME } from '../../format/names.js';
import { fsyncDir } from '../../format/writer.js';
import { findStorage, grubEntries, kernelCommandLine, previousGeneration, systemdBootEntry, type StorageLocation } from '../bootentries.js';
import type { KernelInfo } from '../kernel.js';
import { statOutput, type StageReport } from '../stage.js';
import { SECRET_FILE_MODE, type BuildContext, type Output } from './context.js';
import type { BaseDetails } from './pack-base.js';
import type { InitramfsDetails } from './initramfs.js';

export interface OutputInfo {
  path: string;
  bytes: number;
  sha256: string;
}

export interface BuildResult {
  mkmaVersion: string;
  hostname: string;
  kernelVersion: string;
  configHash: string;
  bootstrap: 'fresh' | 'reused';
  /** every stage in order, with what it did and why: bootstrap, configure, each preset, pack base, initramfs, kernel */
  stages: StageReport[];
  /** snapshots kept in OUT/.cache for preset rebuilds, and their size */
  cache: { snapshots: number; bytes: number };
  outputs: {
    base: OutputInfo & { unpackedBytes: number; entries: number };
    /** base_format erofs / squashfs: the base as a filesystem image, beside the cpio */
    baseImage?: OutputInfo & { format: string };
    initramfs: OutputInfo;
    kernel: OutputInfo;
  };
  initramfsModules: string[];
  storage: StorageLocation | null;
  cmdline: string;
  grub: string | null;
  systemdBoot: string | null;
  timings: Record<string, number>;
}

function sha256File(p: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(p, 'r');
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (!n) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

export interface MadeOutputs {
  base: Output<BaseDetails>;
  initramfs: Output<InitramfsDetails>;
  kernel: Output;
  baseImage?: Output | null;
}

export function outputsStage(b: BuildContext, kernel: KernelInfo, bootstrapReused: boolean, made: MadeOutputs): BuildResult {
  const { config: c, out, staging, records } = b;
  const all = [made.base, made.initramfs, made.kernel, ...(made.baseImage ? [made.baseImage] : [])];
  // a file made now: its size and hash from staging; a reused one: from the record
  const info = (o: Output): OutputInfo => {
    if (o.decision.run) {
      const p = path.join(staging, o.file);
      return { path: path.join(out, o.file), bytes: fs.statSync(p).size, sha256: sha256File(p) };
    }
    const r = records.stage(o.stage)!.file!;
    return { path: path.join(out, o.file), bytes: r.bytes, sha256: r.sha256 };
  };
  const infos = Object.fromEntries(all.map((o) => [o.key, info(o)])) as Record<Output['key'], OutputInfo>;
  const storage = findStorage(out);
  const cmdline = kernelCommandLine(storage ?? { device: '<device holding the images>', imagesPath: out });
  const result: BuildResult = {
    mkmaVersion: b.version,
    hostname: c.hostname,
    kernelVersion: kernel.version,
    configHash: b.chain.keys[0],
    bootstrap: bootstrapReused ? 'reused' : 'fresh',
    stages: b.reports,
    cache: b.snapshots.usage(),
    outputs: {
      base: { ...infos.base, ...made.base.details },
      ...(made.baseImage ? { baseImage: { ...infos.baseImage, format: c.baseFormat } } : {}),
      initramfs: infos.initramfs,
      kernel: infos.kernel,
    },
    initramfsModules: made.initramfs.details.modules,
    storage,
    cmdline,
    grub: storage ? grubEntries(c.hostname, storage, previousGeneration(out)) : null,
    systemdBoot: storage ? systemdBootEntry(c.hostname, storage) : null,
    timings: b.reporter.timings,
  };
  fs.writeFileSync(
    path.join(staging, BUILD_INFO_NAME),
    JSON.stringify({ ...result, config: describeConfig(c), created: new Date().toISOString() }, null, 2) + '\n',
    { mode: SECRET_FILE_MODE },
  );
  for (const o of all) if (o.decision.run) fs.renameSync(path.join(staging, o.file), path.join(out, o.file));
  fs.renameSync(path.join(staging, BUILD_INFO_NAME), path.join(out, BUILD_INFO_NAME));
  fsyncDir(out);
  for (const o of all) {
    if (!o.decision.run) continue;
    const st = statOutput(path.join(out, o.file))!;
    records.setStage(o.stage, { inputs: o.inputs, file: { ...st, sha256: infos[o.key].sha256 }, details: o.details });
  }
  records.save();
  return result;
}
