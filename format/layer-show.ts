// What a layer changes, against the state below it (`mkma layers show`): the base and the
// layers a boot applies before it are unpacked into a temporary directory with the apply code
// (format/apply.ts), the layer alone into another; each of its entries is then added,
// modified (contents or type), metadata (mode, owner, time) or a replaced directory
// (opaque), each `delete` a deletion. Directories it carries only as parents of its changes
// are not listed.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { applyLayer } from './apply.js';
import { bootLayers, listImages } from './images.js';
import { BASE_NAME, layerId } from './names.js';
import { extractImage, readManifest } from './reader.js';

export type LayerEntryKind = 'added' | 'modified' | 'metadata' | 'deleted' | 'replaced';

export interface LayerEntry {
  path: string;
  kind: LayerEntryKind;
}

export interface LayerView {
  entries: LayerEntry[];
  /** the tree below the layer and the layer alone (removed by `dispose`) */
  below: string;
  layer: string;
  dispose(): void;
}

function walk(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    out.push(r);
    if (fs.lstatSync(path.join(root, r)).isDirectory()) out.push(...walk(root, r));
  }
  return out;
}

function kindOf(below: string, layer: string, rel: string): LayerEntryKind | null {
  const a = fs.lstatSync(path.join(below, rel), { throwIfNoEntry: false });
  if (!a) return 'added';
  const b = fs.lstatSync(path.join(layer, rel));
  const type = (s: fs.Stats) => s.mode & 0o170000;
  if (type(a) !== type(b)) return 'modified';
  if (b.isFile() && (a.size !== b.size || !fs.readFileSync(path.join(below, rel)).equals(fs.readFileSync(path.join(layer, rel)))))
    return 'modified';
  if (b.isSymbolicLink() && fs.readlinkSync(path.join(below, rel)) !== fs.readlinkSync(path.join(layer, rel))) return 'modified';
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid) return 'metadata';
  // a directory's time changes with what is saved in it: not a change of its own
  if (!b.isDirectory() && Math.trunc(a.mtimeMs / 1000) !== Math.trunc(b.mtimeMs / 1000)) return 'metadata';
  return null;
}

/** Unpacks what lies below layer `name` of `imagesDir` and the layer itself, and compares. */
export async function viewLayer(imagesDir: string, name: string): Promise<LayerView> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'mkma-show-'));
  const dispose = () => fs.rmSync(work, { recursive: true, force: true });
  try {
    const below = path.join(work, 'below');
    const layer = path.join(work, 'layer');
    fs.mkdirSync(below);
    fs.mkdirSync(layer);
    await extractImage(path.join(imagesDir, BASE_NAME), below);
    const id = layerId(name);
    for (const l of bootLayers(listImages(imagesDir))) {
      if (layerId(l) === id) break;
      await applyLayer(below, path.join(imagesDir, l), path.join(work, 'stage'));
    }
    const file = path.join(imagesDir, name);
    const m = readManifest(file);
    await extractImage(file, layer);
    const opaque = new Set(m.opaque);
    const entries: LayerEntry[] = m.deleted.map((p) => ({ path: p, kind: 'deleted' }));
    for (const rel of walk(layer)) {
      const kind = opaque.has(rel) ? 'replaced' : kindOf(below, layer, rel);
      if (kind) entries.push({ path: rel, kind });
    }
    entries.sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0));
    return { entries, below, layer, dispose };
  } catch (e) {
    dispose();
    throw e;
  }
}
