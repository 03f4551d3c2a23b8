// What `mkma layers` shows of each layer: its place in boot order, its state, and what its
// manifest says (created, message, entries, sizes); with `verify`, format/verify.ts's verdict.
//
// State: every layer the boot applies is `active` (the only state so far). The states to come
// (disabled, on trial, failed, skipped at this boot) extend LayerState: the first three are
// read from the file name (format/names.ts), the last from what the init records in /run.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILES } from '../lib/contract.js';
import { ManifestError, SHA256_RE } from './manifest.js';
import { listImages, type IgnoredImage } from './images.js';
import { createdFromName } from './names.js';
import { readManifest } from './reader.js';
import { verifyImage, type ImageProblem, type VerifyProgress } from './verify.js';

export type LayerState = 'active';

export interface LayerInfo {
  /** 1 for the layer applied first */
  position: number;
  name: string;
  state: LayerState;
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
  opts: { verify?: boolean; onFile?: (name: string, index: number, count: number) => void; onProgress?: VerifyProgress } = {},
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
    out.push({
      position: i + 1,
      name,
      state: 'active',
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
