// What `mkma layers` shows of each layer: its place in boot order, its state, and what its
// manifest says (created, message, entries, sizes); with `verify`, format/verify.ts's verdict.
//
// State: read from the file name (format/names.ts: active, disabled, on trial with its tries,
// failed, pinned); on the booted system also what the init recorded at this boot
// (RUNTIME.layersRecord: applied, or skipped and why).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { ManifestError, SHA256_RE } from './manifest.js';
import { listImages, type IgnoredImage } from './images.js';
import { createdFromName, parseLayerName, type LayerStatus } from './names.js';
import { readManifest } from './reader.js';
import { verifyImage, type ImageProblem, type VerifyProgress } from './verify.js';

/** What the init did with a layer at this boot (RUNTIME.layersRecord), by layer id. */
export type BootRecord = Map<string, { applied: boolean; name: string; reason: string }>;

/** The init's record: lines `applied NAME` / `skipped NAME REASON` (init/templates/layer-common.sh record). */
export function parseBootRecord(text: string): BootRecord {
  const out: BootRecord = new Map();
  for (const line of text.split('\n')) {
    const m = /^(applied|skipped) (\S+)(?: (.*))?$/.exec(line);
    const id = m && parseLayerName(m[2])?.id;
    if (m && id) out.set(id, { applied: m[1] === 'applied', name: m[2], reason: m[3] ?? '' });
  }
  return out;
}

export interface LayerInfo {
  /** 1 for the layer applied first */
  position: number;
  name: string;
  /** the name without prefix, state and suffix: what the commands and mkma_layers=until= take */
  id: string;
  state: LayerStatus;
  pinned: boolean;
  /** on trial: boots left; failed: 0 */
  triesLeft: number;
  /** on trial, failed: boots with it that were not marked good */
  triesDone: number;
  /** on the booted system: why the init did not apply it at this boot (null: applied, or not known) */
  skippedAtBoot: string | null;
  /** UTC, ISO 8601: the manifest's `created`, else the time in the name; null when neither */
  created: string | null;
  /** `mkma persist --message` ("" when none) */
  message: string;
  /** null when the manifest cannot be read */
  entries: number | null;
  /** bytes of the file */
  fileBytes: number;
  /** space the layer takes in RAM (the manifest's unpacked_bytes); null when unreadable */
  unpackedBytes: number | null;
  /** the data_sha256 of the base it was written on (manifest base_data_sha256); null: unknown (older mkma) */
  baseDataSha256: string | null;
  /** was the data hash checked (`verify`)? */
  verified: boolean;
  /** what is wrong with the layer: its manifest always, its shards and data when verified */
  problems: ImageProblem[];
}

export interface LayersListing {
  layers: LayerInfo[];
  /** the data_sha256 of the directory's base.cpio.zst; null when it has none readable */
  baseDataSha256: string | null;
  ignored: IgnoredImage[];
}

/**
 * The data_sha256 of an image file's manifest, or undefined when it has none readable: what
 * identifies a base (a layer's manifest names the base it was written on by it).
 */
export function imageDataSha256(file: string): string | undefined {
  try {
    const sha = readManifest(file).dataSha256;
    return SHA256_RE.test(sha) ? sha : undefined;
  } catch (e) {
    if (e instanceof ManifestError || (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

const ISO_UTC_RE = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$/;

/**
 * Every layer of `imagesDir` in boot order. `verify`: each one's data hash and shard table
 * are checked too (`onFile`/`onProgress` hear it), else only its manifest is read.
 */
export async function describeLayers(
  imagesDir: string,
  opts: {
    verify?: boolean;
    onFile?: (name: string, index: number, count: number) => void;
    onProgress?: VerifyProgress;
    /** the init's record of this boot (parseBootRecord), on the booted system */
    record?: BootRecord;
  } = {},
): Promise<LayersListing> {
  const { layers, ignored } = listImages(imagesDir);
  const out: LayerInfo[] = [];
  for (const [i, name] of layers.entries()) {
    const file = path.join(imagesDir, name);
    opts.onFile?.(name, i, layers.length);
    let manifest = null;
    let problems: ImageProblem[] = [];
    let fileBytes = 0;
    if (opts.verify) {
      const c = await verifyImage(file, 'layer', opts.onProgress);
      ({ manifest, problems, fileBytes } = c);
    } else {
      try {
        fileBytes = fs.statSync(file).size;
        manifest = readManifest(file);
        if (manifest.kind !== 'layer') problems.push({ part: 'manifest', message: `the manifest says kind ${manifest.kind}` });
      } catch (e) {
        if (!(e instanceof ManifestError)) throw e;
        problems = [{ part: 'manifest', message: e.message.startsWith(`${file}: `) ? e.message.slice(file.length + 2) : e.message }];
      }
    }
    const created = manifest && ISO_UTC_RE.test(manifest.created) ? manifest.created : createdFromName(name);
    const st = parseLayerName(name)!;
    const rec = opts.record?.get(st.id);
    out.push({
      position: i + 1,
      name,
      id: st.id,
      state: st.status,
      pinned: st.pinned,
      triesLeft: st.triesLeft,
      triesDone: st.triesDone,
      skippedAtBoot: rec && !rec.applied ? rec.reason : null,
      created,
      message: manifest?.message ?? '',
      entries: manifest?.entries ?? null,
      fileBytes,
      unpackedBytes: manifest?.unpackedBytes ?? null,
      baseDataSha256: manifest?.baseDataSha256 ?? null,
      verified: !!opts.verify,
      problems,
    });
  }
  return { layers: out, baseDataSha256: imageDataSha256(path.join(imagesDir, FILES.base)) ?? null, ignored };
}
