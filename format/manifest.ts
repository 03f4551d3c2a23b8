// The one definition of an mkma image/layer file (`base.cpio.zst`, `persistence.*.cpio.zst`).
//
//   FILE     := DATA MANIFEST
//   DATA     := one or more independent zstd frames ("shards"); their concatenation
//               decompresses to ONE cpio newc archive with a single TRAILER!!! at its end,
//               so `zstd -dc FILE | cpio -idm` works with classic tools. Shards end on entry
//               boundaries, so each can also be extracted alone (parallel boot unpack).
//   MANIFEST := a zstd *skippable* frame (ignored by every zstd decoder) holding
//               BODY FOOTER, where FOOTER is the fixed-size line
//               "MKMA-MANIFEST-LEN" + BODY length right-aligned in 12 columns + "\n".
//               It sits at the end so a writer can stream and a reader (even busybox with
//               `tail -c`) can find it without decompressing anything.
//
// BODY is line-oriented text, bytes taken as-is (latin1 here), paths escaped by escapePath:
//   mkma-manifest 1
//   kind base|layer
//   created 2026-11-22T02:15:00Z
//   message TEXT                    (escaped; layers: `mkma persist --message`)
//   entries N                       (cpio entries, trailer excluded)
//   unpacked_bytes N                (space the tree needs in a tmpfs, 4 KiB pages)
//   data_bytes N                    (bytes of DATA; with the file size it detects truncation)
//   data_sha256 HEX                 (of DATA, for `mkma verify`; boot relies on zstd checksums)
//   shard OFFSET LENGTH             (one per zstd frame, offsets into DATA)
//   opaque PATH                     (layers: directory replaced; drop what lower layers had)
//   delete PATH                     (layers: path deleted; drop it from lower layers)
//   %xattrs                         (last: `setfattr --restore` format, relative paths)
//
// Applying a layer (TS: format/apply.ts, boot: init/templates/layer.sh):
//   1. the archive is unpacked completely into a staging directory; if that fails the
//      layer is skipped whole and nothing below it changes;
import { FOOTER_SIZE, FORMAT } from '../lib/contract.js';
import { MkmaError } from '../lib/errors.js';
//   2. every `opaque` and every `delete` path is removed from the tree (never through a
//      symlinked parent: such a path does not exist in the layer's view);
//   3. staged entries are merged top-down: a directory that exists as a directory gets the
//      staged owner/mode/mtime and is descended into; anything else at the path is removed
//      and the staged entry is renamed into place (hardlinks stay hardlinks);
//   4. the %xattrs section is restored.

// (the constants are the boot contract's, lib/contract.ts: the init and mkma-unpack share them)
export const MANIFEST_VERSION = FORMAT.manifestVersion;
export const SKIPPABLE_MAGIC = FORMAT.skippableMagic;
export const FOOTER_TAG = FORMAT.footerTag;
export { FOOTER_SIZE };
export const XATTR_SECTION = FORMAT.xattrSection;

export type ImageKind = 'base' | 'layer';

export interface XattrRecord {
  /** relative path, raw bytes as latin1 */
  path: string;
  /** name → value encoded as getfattr prints it with -e base64 ("0s…") or hex ("0x…") */
  attrs: Array<[string, string]>;
}

export interface Manifest {
  kind: ImageKind;
  created: string;
  message: string;
  entries: number;
  unpackedBytes: number;
  dataBytes: number;
  dataSha256: string;
  shards: Array<{ offset: number; length: number }>;
  opaque: string[];
  deleted: string[];
  xattrs: XattrRecord[];
}

export class ManifestError extends MkmaError {}

/**
 * Paths are stored as raw bytes (latin1 strings here); two spellings, one per reader:
 *  - `opaque`, `delete` and `message` lines are decoded by the init with `printf %b`: a control
 *    byte is written `\0ooo` (four octal digits after the backslash: %b reads up to three
 *    after the 0, so a following digit is never swallowed) and a backslash `\\`.
 *  - the %xattrs section is read by `setfattr --restore`, whose escape is exactly `\ooo`: a
 *    control byte, a backslash and DEL are written that way (what getfattr itself prints).
 * Other bytes (UTF-8 or not) are written as they are; a newline never is.
 */
export function escapePath(raw: string): string {
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === 0x5c) out += '\\\\';
    else if (c < 0x20 || c === 0x7f) out += '\\0' + c.toString(8).padStart(3, '0');
    else out += raw[i];
  }
  return out;
}

export function unescapePath(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch !== '\\') {
      out += ch;
      continue;
    }
    if (text[i + 1] === '\\') {
      out += '\\';
      i++;
    } else if (/^0[0-7]{3}$/.test(text.slice(i + 1, i + 5))) {
      out += String.fromCharCode(Number.parseInt(text.slice(i + 2, i + 5), 8));
      i += 4;
    } else {
      throw new ManifestError(`bad escape in manifest path ${JSON.stringify(text)}`);
    }
  }
  return out;
}

/** setfattr/getfattr's spelling (`\ooo`), for the %xattrs section. */
export function escapeXattrPath(raw: string): string {
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || c === 0x5c) out += '\\' + c.toString(8).padStart(3, '0');
    else out += raw[i];
  }
  return out;
}

/** Reads getfattr's `\ooo` escapes (and `\\`). */
export function unescapeXattrPath(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch !== '\\') {
      out += ch;
    } else if (text[i + 1] === '\\') {
      out += '\\';
      i++;
    } else if (/^[0-7]{3}$/.test(text.slice(i + 1, i + 4))) {
      out += String.fromCharCode(Number.parseInt(text.slice(i + 1, i + 4), 8));
      i += 3;
    } else {
      throw new ManifestError(`bad escape in xattr path ${JSON.stringify(text)}`);
    }
  }
  return out;
}

/** A layer's paths are data, never a way out of the tree: no /…, empty, . or .. components. */
export function safeRel(p: string): string {
  if (p.startsWith('/') || p.split('/').some((c) => c === '' || c === '.' || c === '..')) {
    throw new ManifestError(`unsafe path in manifest: ${JSON.stringify(p)}`);
  }
  return p;
}

export function serializeManifestBody(m: Manifest): Buffer {
  const lines = [
    `mkma-manifest ${MANIFEST_VERSION}`,
    `kind ${m.kind}`,
    `created ${m.created}`,
    `message ${escapePath(Buffer.from(m.message, 'utf8').toString('latin1'))}`,
    `entries ${m.entries}`,
    `unpacked_bytes ${m.unpackedBytes}`,
    `data_bytes ${m.dataBytes}`,
    `data_sha256 ${m.dataSha256}`,
    ...m.shards.map((s) => `shard ${s.offset} ${s.length}`),
    ...m.opaque.map((p) => `opaque ${escapePath(p)}`),
    ...m.deleted.map((p) => `delete ${escapePath(p)}`),
    XATTR_SECTION,
  ];
  for (const rec of m.xattrs) {
    lines.push(`# file: ${escapeXattrPath(rec.path)}`);
    for (const [name, value] of rec.attrs) lines.push(`${name}=${value}`);
    lines.push('');
  }
  return Buffer.from(lines.join('\n') + '\n', 'latin1');
}

/** The skippable frame that ends every mkma file. */
export function encodeManifestFrame(m: Manifest): Buffer {
  const body = serializeManifestBody(m);
  const footer = Buffer.from(`${FOOTER_TAG}${String(body.length).padStart(12)}\n`, 'latin1');
  const head = Buffer.alloc(8);
  head.writeUInt32LE(SKIPPABLE_MAGIC, 0);
  head.writeUInt32LE(body.length + footer.length, 4);
  return Buffer.concat([head, body, footer]);
}

export function parseFooter(tail: Buffer): number {
  const text = tail.toString('latin1');
  if (tail.length !== FOOTER_SIZE || !text.startsWith(FOOTER_TAG) || !text.endsWith('\n')) {
    throw new ManifestError('no mkma manifest at the end of the file (truncated, or not an mkma image)');
  }
  const len = Number(text.slice(FOOTER_TAG.length, -1).trim());
  if (!Number.isSafeInteger(len) || len <= 0) throw new ManifestError('corrupt manifest footer');
  return len;
}

export function parseManifestBody(body: Buffer): Manifest {
  const text = body.toString('latin1');
  const [head, ...rest] = text.split(`\n${XATTR_SECTION}\n`);
  if (rest.length !== 1) throw new ManifestError('manifest has no %xattrs section (corrupt)');
  const m: Manifest = {
    kind: 'base', created: '', message: '', entries: -1, unpackedBytes: -1, dataBytes: -1,
    dataSha256: '', shards: [], opaque: [], deleted: [], xattrs: [],
  };
  const lines = head.split('\n');
  if (lines[0] !== `mkma-manifest ${MANIFEST_VERSION}`) {
    throw new ManifestError(`unsupported manifest header ${JSON.stringify(lines[0])}`);
  }
  const num = (v: string, key: string) => {
    if (!/^[0-9]+$/.test(v)) throw new ManifestError(`manifest ${key} is not a number: ${JSON.stringify(v)}`);
    return Number(v);
  };
  for (const line of lines.slice(1)) {
    const sp = line.indexOf(' ');
    const key = sp < 0 ? line : line.slice(0, sp);
    const value = sp < 0 ? '' : line.slice(sp + 1);
    switch (key) {
      case 'kind':
        if (value !== 'base' && value !== 'layer') throw new ManifestError(`unknown kind ${value}`);
        m.kind = value;
        break;
      case 'created': m.created = value; break;
      case 'message': m.message = Buffer.from(unescapePath(value), 'latin1').toString('utf8'); break;
      case 'entries': m.entries = num(value, key); break;
      case 'unpacked_bytes': m.unpackedBytes = num(value, key); break;
      case 'data_bytes': m.dataBytes = num(value, key); break;
      case 'data_sha256': m.dataSha256 = value; break;
      case 'shard': {
        const [o, l] = value.split(' ');
        m.shards.push({ offset: num(o, 'shard'), length: num(l, 'shard') });
        break;
      }
      case 'opaque': m.opaque.push(safeRel(unescapePath(value))); break;
      case 'delete': m.deleted.push(safeRel(unescapePath(value))); break;
      case '': break;
      default:
        // Unknown keys are ignored so that an older mkma can still boot a newer layer's data.
        break;
    }
  }
  if (m.entries < 0 || m.dataBytes < 0 || m.unpackedBytes < 0) {
    throw new ManifestError('manifest lacks entries/unpacked_bytes/data_bytes (corrupt)');
  }
  let cur: XattrRecord | null = null;
  for (const line of rest[0].split('\n')) {
    if (line.startsWith('# file: ')) {
      cur = { path: unescapeXattrPath(line.slice(8)), attrs: [] };
      m.xattrs.push(cur);
    } else if (line && cur) {
      const eq = line.indexOf('=');
      if (eq < 0) throw new ManifestError(`bad xattr line ${JSON.stringify(line)}`);
      cur.attrs.push([line.slice(0, eq), line.slice(eq + 1)]);
    }
  }
  return m;
}
