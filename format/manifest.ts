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
//   zstd_level N                    (the level the data was compressed with; informational)
//   message TEXT                    (escaped; layers: `mkma persist --message`)
//   entries N                       (cpio entries, trailer excluded; must match the archive)
//   unpacked_bytes N                (space the tree needs in a tmpfs, 4 KiB pages)
//   data_bytes N                    (bytes of DATA; with the file size it detects truncation)
//   data_sha256 HEX                 (of DATA; boot relies on the zstd checksums)
//   base_data_sha256 HEX            (layers: the data_sha256 of the base they were written on)
//   shard OFFSET LENGTH             (one per zstd frame, offsets into DATA)
//   opaque PATH                     (layers: directory replaced; drop what lower layers had)
//   delete PATH                     (layers: path deleted; drop it from lower layers)
//   %xattrs                         (last: `getfattr -d -e hex|base64` format, relative paths)
//
// The whole definition — every field, limit and edge case, and the rules for extracting an
// image and applying a layer — is docs/FORMAT.md. Three implementations follow it:
// mkma-unpack (init/unpack/mkma-unpack.c: the boot and `mkma unpack`), this TypeScript side
// (format/reader.ts, format/apply.ts: `mkma unpack --extractor ts`) and the init's busybox
// fallback (init/templates/layer-busybox.sh); the conformance corpus (test/conformance/)
// holds them to the same outcomes.
import { FOOTER_SIZE, FORMAT, ZSTD_LEVEL } from '../lib/contract.js';
import { MkmaError } from '../lib/errors.js';

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
  /** the zstd level of DATA (absent in images of older mkma): `mkma persist` writes its layers so */
  zstdLevel?: number;
  message: string;
  entries: number;
  unpackedBytes: number;
  dataBytes: number;
  dataSha256: string;
  /**
   * Layers: the data_sha256 of the base the system ran on when the layer was written (absent
   * in layers of older mkma, or when it was not known). Informational: `mkma update` warns
   * when a stick's layers were written on another base than the new one.
   */
  baseDataSha256?: string;
  shards: Array<{ offset: number; length: number }>;
  opaque: string[];
  deleted: string[];
  xattrs: XattrRecord[];
  /** opaque and delete paths in the manifest's order (set by the parser; rule 2 applies them so) */
  removals?: Array<{ kind: 'opaque' | 'delete'; path: string }>;
}

export class ManifestError extends MkmaError {}

export const SHA256_RE = /^[0-9a-f]{64}$/;

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

export function serializeManifestBody(m: Manifest): Buffer {
  const lines = [
    `mkma-manifest ${MANIFEST_VERSION}`,
    `kind ${m.kind}`,
    `created ${m.created}`,
    ...(m.zstdLevel !== undefined ? [`zstd_level ${m.zstdLevel}`] : []),
    `message ${escapePath(Buffer.from(m.message, 'utf8').toString('latin1'))}`,
    `entries ${m.entries}`,
    `unpacked_bytes ${m.unpackedBytes}`,
    `data_bytes ${m.dataBytes}`,
    `data_sha256 ${m.dataSha256}`,
    ...(m.baseDataSha256 !== undefined ? [`base_data_sha256 ${m.baseDataSha256}`] : []),
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

/** A manifest number (docs/FORMAT.md): 1 to FORMAT.numberDigits decimal digits, no sign, no
 * leading zero, so that it is exact in a JS number and in the init's shell arithmetic. */
export function parseNumber(v: string): number | null {
  return v.length <= FORMAT.numberDigits && /^(0|[1-9][0-9]*)$/.test(v) ? Number(v) : null;
}

export function parseFooter(tail: Buffer): number {
  const text = tail.toString('latin1');
  if (tail.length !== FOOTER_SIZE || !text.startsWith(FOOTER_TAG) || !text.endsWith('\n')) {
    throw new ManifestError('no manifest at its end (truncated, or not an mkma image)');
  }
  const len = parseNumber(text.slice(FOOTER_TAG.length, -1).replace(/^ +/, ''));
  if (len === null || len <= 0) throw new ManifestError('damaged manifest footer');
  return len;
}

/** getfattr's spelling, strictly (paths and names in %xattrs): `\ooo` is a byte, and a
 * backslash is never anything else. Null when malformed or when a byte is NUL. */
function decodeGetfattr(text: string): string | null {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== '\\') {
      out += text[i];
      continue;
    }
    const o = text.slice(i + 1, i + 4);
    if (!/^[0-3][0-7]{2}$/.test(o)) return null;
    out += String.fromCharCode(Number.parseInt(o, 8));
    i += 3;
  }
  return out.includes('\0') ? null : out;
}

/** Bytes of a value as getfattr writes it with -e hex ("0x…") or -e base64 ("0s…"), or null. */
export function xattrValueBytes(v: string): number | null {
  if (/^0[xX]([0-9a-fA-F]{2})*$/.test(v)) return (v.length - 2) / 2;
  if (/^0[sS]([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(v)) {
    const body = v.length - 2;
    const pad = v.endsWith('==') ? 2 : v.endsWith('=') ? 1 : 0;
    return (body / 4) * 3 - pad;
  }
  return null;
}

/** The %xattrs section, every line checked (docs/FORMAT.md, "%xattrs"). */
function parseXattrSection(text: string): XattrRecord[] {
  const records: XattrRecord[] = [];
  let cur: XattrRecord | null = null;
  const bad = (line: string, why: string) =>
    new ManifestError(`damaged manifest (${XATTR_SECTION} line ${JSON.stringify(line.slice(0, 200))}: ${why})`);
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# file: ')) {
      const p = decodeGetfattr(line.slice(8));
      if (p === null) throw bad(line, 'bad escape');
      if (p !== '.' && !isSafeRel(p)) throw bad(line, 'unsafe path');
      cur = { path: p, attrs: [] };
      records.push(cur);
      continue;
    }
    const eq = line.indexOf('=');
    if (!cur) throw bad(line, 'an attribute before any "# file:" line');
    if (eq <= 0) throw bad(line, 'not NAME=VALUE');
    const name = decodeGetfattr(line.slice(0, eq));
    if (name === null || name.length > FORMAT.xattrNameLimit) throw bad(line, 'bad name');
    const bytes = xattrValueBytes(line.slice(eq + 1));
    if (bytes === null || bytes > FORMAT.xattrValueLimit) throw bad(line, 'bad value (0x… or 0s…)');
    cur.attrs.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return records;
}

/** A relative path inside the tree, as docs/FORMAT.md defines it (removals, xattr paths, names). */
export function isSafeRel(p: string): boolean {
  return p.length > 0 && p.length < FORMAT.nameLimit && !p.split('/').some((c) => c === '' || c === '.' || c === '..');
}

/**
 * The manifest body, checked: every rule of docs/FORMAT.md's "The manifest" (the same checks
 * as mkma-unpack's read_manifest and the init's read_manifest). Throws ManifestError.
 */
export function parseManifestBody(body: Buffer): Manifest {
  const text = body.toString('latin1');
  const at = text.indexOf(`\n${XATTR_SECTION}\n`);
  const atEnd = text.endsWith(`\n${XATTR_SECTION}`) ? text.length - XATTR_SECTION.length - 1 : -1;
  const split = at >= 0 ? at : atEnd;
  const head = split >= 0 ? text.slice(0, split) : text;
  const lines = head.split('\n');
  if (lines[0] !== `mkma-manifest ${MANIFEST_VERSION}`) {
    throw new ManifestError('unsupported or damaged manifest header');
  }
  const m: Manifest = {
    kind: 'base',
    created: '',
    message: '',
    entries: -1,
    unpackedBytes: -1,
    dataBytes: -1,
    dataSha256: '',
    shards: [],
    opaque: [],
    deleted: [],
    xattrs: [],
  };
  // the order of opaque/delete lines, for rule 2; not enumerable: a parsed manifest equals
  // the one the writer wrote (which keeps opaque and deleted apart)
  Object.defineProperty(m, 'removals', { value: [], enumerable: false });
  let kind: string | null = null;
  const once = new Set<string>();
  const num = (v: string, key: string) => {
    const n = parseNumber(v);
    if (n === null || once.has(key)) throw new ManifestError(`damaged manifest (${key})`);
    once.add(key);
    return n;
  };
  for (const line of lines.slice(1)) {
    const sp = line.indexOf(' ');
    const key = sp < 0 ? line : line.slice(0, sp);
    const value = sp < 0 ? '' : line.slice(sp + 1);
    switch (key) {
      case 'kind':
        if (kind !== null) throw new ManifestError('damaged manifest (kind twice)');
        if (value !== 'base' && value !== 'layer') throw new ManifestError('damaged manifest (unknown kind)');
        kind = value;
        break;
      case 'created':
        m.created = value;
        break;
      case 'zstd_level': {
        // informational: a value out of range is ignored, never a reason to refuse the image
        const n = parseNumber(value);
        if (n !== null && n >= ZSTD_LEVEL.min && n <= ZSTD_LEVEL.max) m.zstdLevel = n;
        break;
      }
      case 'message':
        // informational: a bad escape is kept as it is, never a reason to refuse the image
        try {
          m.message = Buffer.from(unescapePath(value), 'latin1').toString('utf8');
        } catch {
          m.message = value;
        }
        break;
      case 'entries':
        m.entries = num(value, key);
        break;
      case 'unpacked_bytes':
        m.unpackedBytes = num(value, key);
        break;
      case 'data_bytes':
        m.dataBytes = num(value, key);
        break;
      case 'data_sha256':
        m.dataSha256 = value;
        break;
      case 'base_data_sha256':
        // informational: anything but a sha256 is ignored, never a reason to refuse the layer
        if (SHA256_RE.test(value)) m.baseDataSha256 = value;
        break;
      case 'shard': {
        const [o, l, ...more] = value.split(' ');
        const offset = parseNumber(o ?? '');
        const length = parseNumber(l ?? '');
        if (offset === null || length === null || more.length) throw new ManifestError('damaged manifest (shard line)');
        m.shards.push({ offset, length });
        break;
      }
      case 'opaque':
      case 'delete': {
        let p: string;
        try {
          p = unescapePath(value);
        } catch {
          throw new ManifestError(`damaged manifest (bad or too long path in ${JSON.stringify(line.slice(0, 200))})`);
        }
        if (p.includes('\0') || p.length >= FORMAT.nameLimit) {
          throw new ManifestError(`damaged manifest (bad or too long path in ${JSON.stringify(line.slice(0, 200))})`);
        }
        if (!isSafeRel(p)) throw new ManifestError(`unsafe path in manifest: ${p}`);
        (key === 'opaque' ? m.opaque : m.deleted).push(p);
        m.removals!.push({ kind: key, path: p });
        break;
      }
      default:
        // Unknown keys are ignored so that an older mkma can still boot a newer layer's data.
        break;
    }
  }
  if (kind === null || m.entries < 0 || m.dataBytes < 0 || m.unpackedBytes < 0) {
    throw new ManifestError('manifest lacks kind/entries/unpacked_bytes/data_bytes (damaged)');
  }
  m.kind = kind as ImageKind;
  if (split < 0) throw new ManifestError(`manifest has no ${XATTR_SECTION} section (damaged)`);
  m.xattrs = parseXattrSection(at >= 0 ? text.slice(at + XATTR_SECTION.length + 2) : '');
  return m;
}

/**
 * The shard table against DATA's size (docs/FORMAT.md): the shards tile DATA exactly; no
 * table means one stream of all frames.
 */
export function checkShards(m: Manifest): Array<{ offset: number; length: number }> {
  if (m.dataBytes === 0) throw new ManifestError('the image holds no data (damaged)');
  if (!m.shards.length) return [{ offset: 0, length: m.dataBytes }];
  let pos = 0;
  m.shards.forEach((s, i) => {
    if (s.offset !== pos || s.length === 0 || s.length > m.dataBytes - pos) {
      throw new ManifestError(`damaged manifest (shard ${i + 1} does not follow the previous one)`);
    }
    pos += s.length;
  });
  if (pos !== m.dataBytes) throw new ManifestError('damaged manifest (shards do not cover the data)');
  return m.shards;
}
